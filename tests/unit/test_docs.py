"""The documentation: the MkDocs site builds with --strict (no broken link or anchor, no page
missing from the nav), the README stays short, and no page points users at a private module."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# lakeinfer._api, lakeinfer.engines._spark_tables, src/lakeinfer/engines/_ship.py: not for users
PRIVATE_MODULE = re.compile(r"\blakeinfer(?:\.[a-z0-9_]+)*\._[a-z]")
PRIVATE_PATH = re.compile(r"\blakeinfer/(?:[a-z0-9_]+/)*_[a-z][a-z0-9_]*(?:\.py\b|/)")


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, (
        f"mkdocs build --strict exited {result.returncode}:\n{result.stdout}\n{result.stderr}")


def test_readme_is_short_and_keeps_the_quickstart() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) < 200
    assert "make demo" in text
    assert "make test" in text


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_module_in_user_docs(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    found = PRIVATE_MODULE.findall(text) + PRIVATE_PATH.findall(text)
    assert not found, f"{page.relative_to(ROOT)} names private modules: {sorted(set(found))}"


@pytest.mark.parametrize("text", [
    "lakeinfer.engines._spark_tables.jars_conf", "lakeinfer._api.batch", "src/lakeinfer/engines/_ship.py"])
def test_the_private_module_check_catches(text: str) -> None:
    assert PRIVATE_MODULE.search(text) or PRIVATE_PATH.search(text)


@pytest.mark.parametrize("text", [
    "lakeinfer.spark.table_conf", "lakeinfer.runtime.batcher.score_group", "_lakeinfer_job.json",
    "lakeinfer.job-id", "src/lakeinfer/serve/proto/", "python -m lakeinfer.__main__"])
def test_the_private_module_check_lets_public_names_pass(text: str) -> None:
    assert not PRIVATE_MODULE.search(text) and not PRIVATE_PATH.search(text)
