"""The Spark driver's class archive: written once, checked before use, never a half-written file,
and never a reason for a command to fail or print anything."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from lakeinfer.spark import cds


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in ("LAKEINFER_SPARK_CDS", "HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_CLASSPATH", "SPARK_DIST_CLASSPATH",
                 *cds._THEIR_OPTIONS):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "conf").mkdir()
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path / "conf"))
    return tmp_path / "cache" / "lakeinfer" / "spark-cds"


def key() -> str:
    java = cds._java()
    assert java is not None
    return cds._key(java, {})


def real_archive(path: Path) -> Path:
    """A whole archive, as a JVM writes it at exit."""
    java = cds._java()
    assert java is not None
    subprocess.run([java, f"-XX:ArchiveClassesAtExit={path}", *cds.QUIET.split(), "-version"],
                   check=True, capture_output=True, timeout=120)
    assert path.read_bytes()[:4] == cds.MAGIC
    return path


def writes(options: str | None, cache: Path) -> bool:
    return options is not None and options.startswith(f"-XX:ArchiveClassesAtExit={cache / key()}.") and \
        options.endswith(f".part.jsa {cds.QUIET}")


def test_the_first_command_writes_the_archive_at_exit(cache: Path) -> None:
    assert writes(cds.driver_java_options({}), cache)
    [claimed] = cache.glob("*.part.jsa")  # claimed before its JVM starts
    assert claimed.stat().st_size == 0
    assert cds.driver_java_options({}) is None  # a command started meanwhile writes no second one


def test_a_whole_archive_is_promoted_then_used(cache: Path) -> None:
    cache.mkdir(parents=True)
    candidate = real_archive(cache / f"{key()}.host-123-ab.part.jsa")
    options = cds.driver_java_options({})
    assert options == f"-XX:SharedArchiveFile={cache / f'{key()}.jsa'} {cds.QUIET}"
    assert (cache / f"{key()}.jsa").exists() and not candidate.exists()
    assert cds.driver_java_options({}) == options  # and stays in use


@pytest.mark.parametrize("damage", ["truncated", "no header yet"])
def test_a_half_written_archive_is_never_used(damage: str, cache: Path, tmp_path: Path) -> None:
    whole = real_archive(tmp_path / "whole.jsa").read_bytes()
    cache.mkdir(parents=True)
    candidate = cache / f"{key()}.host-123-ab.part.jsa"
    # a JVM killed while writing it, or writing it now: the header is written last
    candidate.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else bytes(4096) + whole[4096:])
    assert cds.driver_java_options({}) is None  # neither used nor a second one written meanwhile
    assert candidate.exists() and not (cache / f"{key()}.jsa").exists()
    assert not list(Path.cwd().glob("hs_err_pid*.log"))  # the check's crash left no report
    old = time.time() - cds.STALE_S - 60
    os.utime(candidate, (old, old))
    assert writes(cds.driver_java_options({}), cache)
    assert not candidate.exists()


def test_jars_given_to_the_session_are_another_archive(cache: Path) -> None:
    java = cds._java() or ""
    assert cds._key(java, {}) != cds._key(java, {"spark.jars.packages": "io.delta:delta-spark_2.13:4.0.0"})
    assert cds._key(java, {}) == cds._key(java, {"spark.driver.memory": "4g"})


def test_an_archive_unused_for_a_month_is_removed(cache: Path) -> None:
    cache.mkdir(parents=True)
    real_archive(cache / f"{key()}.host-1-ab.part.jsa")
    other = cache / "0123456789abcdef01234567.jsa"
    other.write_bytes(b"an archive of another Spark")
    month_ago = time.time() - cds.UNUSED_S - 60
    os.utime(other, (month_ago, month_ago))
    assert cds.driver_java_options({}) is not None
    assert not other.exists() and (cache / f"{key()}.jsa").exists()


def test_turned_off(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LAKEINFER_SPARK_CDS", "0")
    assert cds.driver_java_options({}) is None


@pytest.mark.parametrize("line", ["spark.driver.defaultJavaOptions -Dsite=1", "spark.driver.defaultJavaOptions=-Dsite=1",
                                  "spark.driver.defaultJavaOptions: -Dsite=1"])
def test_the_administrators_options_are_left_alone(line: str, cache: Path, tmp_path: Path) -> None:
    (tmp_path / "conf" / "spark-defaults.conf").write_text(f"# site\n{line}\n")
    assert cds.driver_java_options({}) is None
    assert not cache.exists()


def test_no_archive_where_the_jvm_could_not_use_or_write_one(cache: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    assert cds.driver_java_options({"spark.driver.extraJavaOptions": "-Xshare:off"}) is None
    assert cds.driver_java_options({"spark.driver.extraJavaOptions": "-XX:-UseSharedSpaces"}) is None
    for name, value in [("JAVA_TOOL_OPTIONS", "-XX:SharedArchiveFile=/theirs.jsa"), ("_JAVA_OPTIONS", "-Xshare:off"),
                        ("SPARK_SUBMIT_OPTS", "-XX:-UseSharedSpaces"),
                        ("PYSPARK_SUBMIT_ARGS", "--driver-java-options -Xshare:off pyspark-shell")]:
        monkeypatch.setenv(name, value)
        assert cds.driver_java_options({}) is None, name
        monkeypatch.delenv(name)
    # options the environment gives every JVM that a JVM writing an archive would not start with
    java = cds._java()
    assert java is not None and cds._can_write_archives(java, str(tmp_path))
    monkeypatch.setenv("_JAVA_OPTIONS", "-Xshare:off")
    assert not cds._can_write_archives(java, str(tmp_path))
    monkeypatch.delenv("_JAVA_OPTIONS")
    (tmp_path / "conf" / "log4j2.properties.template").write_text("")  # a folder of files on the class path
    assert cds.driver_java_options({}) is None
    (tmp_path / "conf" / "log4j2.properties.template").unlink()
    assert writes(cds.driver_java_options({}), cache)


def test_a_cache_that_cannot_be_used_is_no_error(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "with space"))  # Spark splits its option string
    assert cds.driver_java_options({}) is None
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # not a folder: makedirs fails
    assert cds.driver_java_options({}) is None


def test_a_jdk_before_13_gets_no_archive(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "jdk11"
    (home / "bin").mkdir(parents=True)
    java = home / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.20" 2023-07-18\' >&2\n')
    java.chmod(0o755)
    monkeypatch.setenv("JAVA_HOME", str(home))
    assert cds.driver_java_options({}) is None
