"""The Spark driver's class archive: written once, checked before use, never a half-written file."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lakeinfer.engines import _spark_cds as cds


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LAKEINFER_SPARK_CDS", raising=False)
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path / "conf"))
    return tmp_path / "cache" / "lakeinfer" / "spark-cds"


def real_archive(path: Path) -> Path:
    """A whole archive, as a JVM writes it at exit."""
    java = cds._java()
    assert java is not None
    subprocess.run([java, f"-XX:ArchiveClassesAtExit={path}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off", "-version"],
                   check=True, capture_output=True, timeout=120)
    assert path.stat().st_size > 0
    return path


def test_the_first_command_writes_the_archive_at_exit(cache: Path) -> None:
    options = cds.driver_java_options({})
    key = cds._key(cds._java() or "", {})
    assert options == (f"-XX:ArchiveClassesAtExit={cache / f'{key}.{os.getpid()}.part.jsa'} "
                       "-Xlog:cds=off -Xlog:cds+dynamic=off")
    assert cache.is_dir()


def test_a_whole_archive_is_promoted_then_used(cache: Path) -> None:
    key = cds._key(cds._java() or "", {})
    cache.mkdir(parents=True)
    candidate = real_archive(cache / f"{key}.123.part.jsa")
    options = cds.driver_java_options({})
    assert options == f"-XX:SharedArchiveFile={cache / f'{key}.jsa'} -Xlog:cds=off -Xlog:cds+dynamic=off"
    assert (cache / f"{key}.jsa").exists() and not candidate.exists()
    assert cds.driver_java_options({}) == options  # and stays in use


def test_a_truncated_archive_is_never_used(cache: Path, tmp_path: Path) -> None:
    key = cds._key(cds._java() or "", {})
    whole = real_archive(tmp_path / "whole.jsa").read_bytes()
    cache.mkdir(parents=True)
    candidate = cache / f"{key}.123.part.jsa"
    candidate.write_bytes(whole[: len(whole) // 2])  # a JVM killed while writing it, or writing it now
    assert cds.driver_java_options({}) is None  # neither used nor a second one written meanwhile
    assert candidate.exists() and not (cache / f"{key}.jsa").exists()
    assert not list(Path.cwd().glob("hs_err_pid*.log"))  # the check's crash left no report
    old = time.time() - cds.STALE_S - 60
    os.utime(candidate, (old, old))
    assert cds.driver_java_options({}) == (f"-XX:ArchiveClassesAtExit={cache / f'{key}.{os.getpid()}.part.jsa'} "
                                           "-Xlog:cds=off -Xlog:cds+dynamic=off")
    assert not candidate.exists()


def test_jars_given_to_the_session_are_another_archive(cache: Path) -> None:
    java = cds._java() or ""
    assert cds._key(java, {}) != cds._key(java, {"spark.jars.packages": "io.delta:delta-spark_2.13:4.0.0"})
    assert cds._key(java, {}) == cds._key(java, {"spark.driver.memory": "4g"})


def test_turned_off_or_left_to_the_administrator(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEINFER_SPARK_CDS", "0")
    assert cds.driver_java_options({}) is None
    monkeypatch.delenv("LAKEINFER_SPARK_CDS")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "spark-defaults.conf").write_text("spark.driver.defaultJavaOptions -Dsite=1\n")
    assert cds.driver_java_options({}) is None
    assert not cache.exists()


def test_a_jdk_before_13_gets_no_archive(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "jdk11"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.20" 2023-07-18\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert cds.driver_java_options({}) is None
