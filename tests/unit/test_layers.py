"""The layering rules of docs/architecture.md, checked on the sources."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "lakeinfer"


def _imports() -> list[tuple[str, str]]:
    """(importing module, imported module or name) for every lakeinfer import in the sources."""
    found = []
    for file in PACKAGE.rglob("*.py"):
        parts = list(file.relative_to(SRC).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = parts[:-1]
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.startswith("lakeinfer"):
                    found.append((module, target))
                    found.extend((module, f"{target}.{alias.name}") for alias in node.names)
            elif isinstance(node, ast.Import):
                found.extend((module, alias.name) for alias in node.names if alias.name.startswith("lakeinfer"))
    return found


def _private_owner(target: str) -> str | None:
    """The package whose private module (or name) ``target`` is, e.g. ``lakeinfer.engines`` for
    ``lakeinfer.engines._worker``; None for a public path or the top package's own."""
    parts = target.split(".")
    for i, part in enumerate(parts[2:], start=2):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_no_module_imports_another_packages_private_module() -> None:
    wrong = sorted({(module, target) for module, target in _imports()
                    if (owner := _private_owner(target)) is not None
                    and module != owner and not module.startswith(owner + ".")})
    assert not wrong, wrong


def test_engines_import_no_other_engine() -> None:
    engines = {"lakeinfer.engines.local", "lakeinfer.engines.spark", "lakeinfer.engines.ray"}
    wrong = sorted({(m, t) for m, t in _imports() if m in engines and any(
        t == other or t.startswith(other + ".") for other in engines - {m})})
    assert not wrong, wrong


def test_inner_layers_import_no_outer_one() -> None:
    inner = ("lakeinfer.runtime", "lakeinfer.models", "lakeinfer.io", "lakeinfer.pipeline", "lakeinfer.schema",
             "lakeinfer.errors", "lakeinfer.cpu")
    outer = ("lakeinfer.engines", "lakeinfer.serve", "lakeinfer.stream", "lakeinfer.cli", "lakeinfer._api",
             "lakeinfer.spark")
    wrong = sorted({(m, t) for m, t in _imports()
                    if m.startswith(inner) and t.startswith(outer)})
    assert not wrong, wrong
