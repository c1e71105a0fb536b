"""Class data sharing for the JVM of a Spark command: Spark's classes mapped, not loaded anew.

Starting a local session loads and verifies some 10,000 classes from Spark's jars: most of the
three seconds a command spends before its first job, and the first Parquet read's half second
more. The JVM's application class data sharing (a dynamic archive, JDK 13+) maps them from one
file instead. The first command on a machine (for one JVM, one set of Spark jars and packages)
has its JVM write the archive as it exits; a later command checks the file once (a truncated
archive makes a JDK 17 abort, so an archive that has not started a JVM is never used) and from
then on starts its JVM with it. The JVM itself refuses an archive whose jars have changed since,
and then starts as usual.

The archives live in ``$XDG_CACHE_HOME/lakeinfer/spark-cds`` (``~/.cache/...``), about 160 MB
each; ``LAKEINFER_SPARK_CDS=0`` turns this off.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
import time

__all__ = ["driver_java_options"]

QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"  # the archive's own notes (signed jars skipped, ...)
STALE_S = 600  # a candidate that still cannot start a JVM this long after it was written never will


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lakeinfer", "spark-cds")


def _java() -> str | None:
    """The ``java`` that spark-submit runs: ``$JAVA_HOME/bin/java``, else the one on the PATH."""
    home = os.environ.get("JAVA_HOME")
    found = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(found) if found and os.path.exists(found) else None


def _in_spark_defaults(name: str) -> bool:
    conf_dir = os.environ.get("SPARK_CONF_DIR") or os.path.join(os.environ.get("SPARK_HOME", ""), "conf")
    try:
        with open(os.path.join(conf_dir, "spark-defaults.conf")) as fh:
            return any(line.split(None, 1)[:1] == [name] for line in fh)
    except OSError:
        return False


def _key(java: str, conf: dict[str, str]) -> str:
    import pyspark

    jars = [(os.path.basename(p), os.stat(p).st_size, os.stat(p).st_mtime_ns)
            for p in sorted(glob.glob(os.path.join(os.path.dirname(pyspark.__file__), "jars", "*")))]
    stat = os.stat(java)
    parts = [java, stat.st_size, stat.st_mtime_ns, pyspark.__version__, jars,
             *(conf.get(k, "") for k in ("spark.jars.packages", "spark.jars", "spark.driver.extraClassPath"))]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _starts_a_jvm(java: str, archive: str) -> bool:
    """Whether a JVM starts with this archive, which has not changed while it did (no crash report
    or core file is left where it does not)."""
    try:
        before = os.stat(archive)
        ok = subprocess.run([java, f"-XX:SharedArchiveFile={archive}", "-XX:ErrorFile=/dev/null",
                             "-XX:-CreateCoredumpOnCrash", *QUIET.split(), "-version"],
                            capture_output=True, timeout=60).returncode == 0
        after = os.stat(archive)
    except (OSError, subprocess.SubprocessError):
        return False
    return ok and (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def _supports_dynamic_archives(java: str) -> bool:
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return False
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if match is None:
        return False
    major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
    return major >= 13


def driver_java_options(conf: dict[str, str]) -> str | None:
    """The driver JVM's options for the archive: use it if there is one, else write one at exit;
    None where this is turned off or cannot be done (no ``java`` found, a JDK before 13)."""
    if os.environ.get("LAKEINFER_SPARK_CDS", "1") == "0" or _in_spark_defaults("spark.driver.defaultJavaOptions"):
        return None  # turned off, or the administrator's own options there would be overridden
    java = _java()
    if java is None:
        return None
    folder = cache_dir()
    key = _key(java, conf)
    archive = os.path.join(folder, f"{key}.jsa")
    use = f"-XX:SharedArchiveFile={archive} {QUIET}"
    candidates = glob.glob(os.path.join(folder, f"{key}.*.part.jsa"))
    for candidate in candidates:
        try:
            if not os.path.exists(archive) and _starts_a_jvm(java, candidate):
                os.replace(candidate, archive)  # atomic: every JVM sees a whole file or none
                continue
            if time.time() - os.stat(candidate).st_mtime > STALE_S:
                os.remove(candidate)  # written by a JVM killed while writing it, or not needed
        except OSError:
            pass
    if os.path.exists(archive):
        return use
    # a candidate written in the last minutes may still be being written: no second one meanwhile
    fresh = any(os.path.exists(c) for c in candidates)
    if fresh or not _supports_dynamic_archives(java):
        return None
    os.makedirs(folder, exist_ok=True)
    return f"-XX:ArchiveClassesAtExit={os.path.join(folder, f'{key}.{os.getpid()}.part.jsa')} {QUIET}"
