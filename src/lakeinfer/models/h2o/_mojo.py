"""Reading an H2O-3 MOJO zip: ``model.ini`` (``[info]`` key-values, ``[columns]``, ``[domains]``),
the domain files and the binary blobs, as ``hex.genmodel.ModelMojoReader`` reads them.

Values stay text until asked for with a type, as the Java reader parses each key with the type
its caller expects.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field

from ...errors import ModelLoadError

__all__ = ["Mojo", "Unsupported", "read_mojo", "unescape_newlines"]


class Unsupported(ModelLoadError):
    """A MOJO (an algorithm, a link, an encoding) the numpy scorers do not cover."""


def unescape_newlines(text: str) -> str:
    """The inverse of H2O's ``StringEscapeUtils.escapeNewlines`` (``\\n``, ``\\r``, ``\\\\``)."""
    if "\\" not in text:
        return text
    out, slash = [], False
    for c in text:
        if slash:
            out.append({"n": "\n", "r": "\r", "\\": "\\"}.get(c, c))
            slash = False
        elif c == "\\":
            slash = True
        else:
            out.append(c)
    return "".join(out)


@dataclass
class Mojo:
    """The parts of a MOJO a scorer reads: ``info`` (raw text values), ``columns`` (features, then
    the response of a supervised model) and ``domains`` (per column: its levels, or None)."""

    path: str
    info: dict[str, str]
    columns: list[str]
    domains: list[tuple[str, ...] | None]
    blobs: dict[str, bytes] = field(default_factory=dict)

    # -- typed values ---------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self.info and self.info[key] != "null"

    def text(self, key: str, default: str | None = None) -> str:
        value = self.info.get(key)
        if value is None or value == "null":
            if default is None:
                raise ModelLoadError(f"H2O MOJO {self.path}: model.ini has no '{key}'")
            return default
        return value

    def number(self, key: str, default: float | None = None) -> float:
        raw = self.text(key, None if default is None else str(default))
        try:
            return float(raw)
        except ValueError:
            raise ModelLoadError(f"H2O MOJO {self.path}: '{key}' = {raw!r} is not a number") from None

    def integer(self, key: str, default: int | None = None) -> int:
        return int(self.number(key, None if default is None else float(default)))

    def flag(self, key: str, default: bool = False) -> bool:
        raw = self.info.get(key)
        return default if raw is None or raw == "null" else raw.strip().lower() == "true"

    def numbers(self, key: str) -> list[float] | None:
        """A ``[a, b, ...]`` array, or None where the key is missing or null."""
        raw = self.info.get(key)
        if raw is None or raw.strip() == "null":
            return None
        body = raw.strip()
        if not (body.startswith("[") and body.endswith("]")):
            raise ModelLoadError(f"H2O MOJO {self.path}: '{key}' = {raw!r} is not an array")
        inner = body[1:-1].strip()
        try:
            return [float(v) for v in inner.split(",")] if inner else []
        except ValueError:
            raise ModelLoadError(f"H2O MOJO {self.path}: '{key}' = {raw!r} is not an array of numbers") from None

    def blob(self, name: str) -> bytes | None:
        return self.blobs.get(name)


def read_mojo(path: str) -> Mojo:
    """The MOJO zip at ``path``: model.ini parsed, domains read, every other file kept as bytes."""
    try:
        with zipfile.ZipFile(path) as archive:
            files = {n: archive.read(n) for n in archive.namelist() if not n.endswith("/")
                     and not n.startswith("experimental/")}
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"cannot read H2O MOJO {path}: {exc}") from exc
    if "model.ini" not in files:
        raise ModelLoadError(f"{path} is a zip without model.ini: not an H2O MOJO")
    info, columns, domain_files = _parse_ini(path, files["model.ini"].decode("utf-8"))
    escaped = info.get("escape_domain_values", "false").strip().lower() == "true"
    domains: list[tuple[str, ...] | None] = [None] * len(columns)
    for index, (count, name) in domain_files.items():
        if index >= len(columns):
            continue
        raw = files.get(f"domains/{name}")
        if raw is None:
            raise ModelLoadError(f"H2O MOJO {path}: domain file domains/{name} is missing")
        lines = raw.decode("utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]  # readLine drops \r
        if len(lines) != count:
            raise ModelLoadError(f"H2O MOJO {path}: domains/{name} has {len(lines)} levels, "
                                 f"model.ini says {count}")
        domains[index] = tuple(unescape_newlines(v) if escaped else v for v in lines)
    blobs = {n: b for n, b in files.items() if n != "model.ini" and not n.startswith("domains/")}
    return Mojo(path, info, columns, domains, blobs)


def _parse_ini(path: str, text: str) -> tuple[dict[str, str], list[str], dict[int, tuple[int, str]]]:
    info: dict[str, str] = {}
    columns: list[str] = []
    domains: dict[int, tuple[int, str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line in ("[info]", "[columns]", "[domains]"):
            section = line
            continue
        if section == "[info]":
            key, _, value = line.partition("=")
            info[key.strip()] = value.strip()
        elif section == "[columns]":
            columns.append(line)
        elif section == "[domains]":
            index, _, rest = line.partition(":")
            count, _, name = rest.strip().partition(" ")
            try:
                domains[int(index)] = (int(count), name.strip())
            except ValueError:
                raise ModelLoadError(f"H2O MOJO {path}: bad [domains] line {line!r}") from None
    expected = info.get("n_columns")
    if expected is not None and expected.isdigit() and int(expected) != len(columns):
        raise ModelLoadError(f"H2O MOJO {path}: model.ini lists {len(columns)} columns, n_columns is {expected}")
    return info, columns, domains

