"""Class data sharing for the JVM of a Spark command: Spark's classes mapped, not loaded anew.

Starting a local session loads and verifies some 10,000 classes from Spark's jars: most of the
three seconds a command spends before its first job, and the first Parquet read's half second
more. The JVM's application class data sharing (a dynamic archive, JDK 13+) maps them from one
file instead. The first command on a machine (for one JVM, one set of Spark jars and packages)
has its JVM write the archive as it exits; a later command checks the file once (its header,
written last, then a JVM started with it: a truncated archive makes a JDK 17 abort) and renames
it into place, and from then on starts its JVM with it. The JVM itself refuses an archive whose
jars have changed since, and then starts as usual. Where an archive cannot be used or written
(``-Xshare`` options of the user's, a JDK without its base archive, a folder of files on the
driver's class path), the command starts as it would without this; nothing here fails a command.

The archives live in ``$XDG_CACHE_HOME/lakeinfer/spark-cds`` (``~/.cache/...``), 160-230 MB each;
one unused for a month is removed. ``LAKEINFER_SPARK_CDS=0`` turns this off.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import time

__all__ = ["driver_java_options"]

# the archive's own notes (signed jars skipped, ...) silenced; whatever else the VM prints goes to
# stderr, never into the command's output
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off -XX:+DisplayVMOutputToStderr"
MAGIC = b"\xa8\xab\x0b\xf0"  # a dynamic archive's first bytes; its header is written last
STALE_S = 600  # a candidate that still cannot start a JVM this long after it was written never will
UNUSED_S = 30 * 24 * 3600  # an archive no command has used for this long is removed


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lakeinfer", "spark-cds")


def _java() -> str | None:
    """The ``java`` that spark-submit runs: ``$JAVA_HOME/bin/java``, else the one on the PATH."""
    home = os.environ.get("JAVA_HOME")
    found = os.path.join(home, "bin", "java") if home else shutil.which("java")
    return os.path.realpath(found) if found and os.path.exists(found) else None


def _spark_conf_dir() -> str:
    if os.environ.get("SPARK_CONF_DIR"):
        return os.environ["SPARK_CONF_DIR"]
    from pyspark.find_spark_home import _find_spark_home

    return os.path.join(os.environ.get("SPARK_HOME") or _find_spark_home(), "conf")


def _in_spark_defaults(name: str) -> bool:
    try:
        with open(os.path.join(_spark_conf_dir(), "spark-defaults.conf")) as fh:
            return any(re.split(r"[\s=:]", line.strip(), maxsplit=1)[0] == name for line in fh)
    except OSError:
        return False


# where the user's options for the driver's JVM may be, and the options that choose its class sharing
_THEIR_OPTIONS = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS", "SPARK_SUBMIT_OPTS", "PYSPARK_SUBMIT_ARGS")
_SHARING_OPTIONS = ("Xshare", "SharedSpaces", "SharedArchiveFile", "ArchiveClassesAtExit", "SharedClassListFile",
                    "DumpLoadedClassList")


def _archivable(conf: dict[str, str]) -> bool:
    """Whether a JVM started here can use or write an archive: the JDK maps its own base archive
    (not with ``-Xshare:off``, nor in images built without one), no option of the user's already
    chooses an archive, and no folder on the driver's class path holds files (JDK 17 refuses to
    write an archive then, and says so on the command's output)."""
    theirs = " ".join([conf.get("spark.driver.extraJavaOptions", ""), conf.get("spark.driver.defaultJavaOptions", ""),
                       *(os.environ.get(name, "") for name in _THEIR_OPTIONS)])
    if any(option in theirs for option in _SHARING_OPTIONS):
        return False
    entries = [_spark_conf_dir(), os.environ.get("HADOOP_CONF_DIR", ""), os.environ.get("YARN_CONF_DIR", "")]
    for listing in (conf.get("spark.driver.extraClassPath", ""), os.environ.get("SPARK_CLASSPATH", ""),
                    os.environ.get("SPARK_DIST_CLASSPATH", "")):
        entries += listing.split(os.pathsep)
    return not any(e and not e.endswith("*") and os.path.isdir(e) and os.listdir(e) for e in entries)


def _key(java: str, conf: dict[str, str]) -> str:
    import pyspark
    from pyspark.find_spark_home import _find_spark_home

    home = os.environ.get("SPARK_HOME") or _find_spark_home()  # the jars spark-submit puts on the class path
    jars = [(os.path.basename(p), os.stat(p).st_size, os.stat(p).st_mtime_ns)
            for p in sorted(glob.glob(os.path.join(glob.escape(home), "jars", "*")))]
    stat = os.stat(java)
    parts = [java, stat.st_size, stat.st_mtime_ns, pyspark.__version__, jars,
             *(conf.get(k, "") for k in ("spark.jars.packages", "spark.jars", "spark.driver.extraClassPath"))]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def _whole(java: str, archive: str) -> bool:
    """Whether the archive is whole: its header (written last) is there, a JVM starts with it (a
    truncated one aborts it, leaving no crash report or core file), and it did not change meanwhile."""
    try:
        before = os.stat(archive)
        with open(archive, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                return False
        ok = subprocess.run([java, f"-XX:SharedArchiveFile={archive}", "-XX:ErrorFile=/dev/null",
                             "-XX:-CreateCoredumpOnCrash", *QUIET.split(), "-version"],
                            capture_output=True, timeout=60).returncode == 0
        after = os.stat(archive)
    except (OSError, subprocess.SubprocessError):
        return False
    return ok and (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)


def _can_write_archives(java: str, folder: str) -> bool:
    """A HotSpot JDK of 13 or later that, with the options the environment gives every JVM,
    writes an archive (a dynamic one goes on top of the JDK's base archive, which some JDK images
    lack and some options turn off: the driver's JVM would not even start then)."""
    probe = os.path.join(folder, f".probe-{os.getpid()}-{secrets.token_hex(4)}.jsa")
    try:
        run = subprocess.run([java, f"-XX:ArchiveClassesAtExit={probe}", *QUIET.split(), "-version"],
                             capture_output=True, text=True, timeout=60)
        wrote = os.path.exists(probe)
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', run.stderr)
    if run.returncode != 0 or not wrote or match is None or "OpenJ9" in run.stderr:
        return False
    major = int(match.group(1)) if match.group(1) != "1" else int(match.group(2) or 0)
    return major >= 13


def driver_java_options(conf: dict[str, str]) -> str | None:
    """The driver JVM's options for the archive: use it if there is one, else write one at exit;
    None where this is turned off or cannot be done. Never an error: the archive only saves time."""
    if os.environ.get("LAKEINFER_SPARK_CDS", "1") == "0":
        return None
    try:
        return _options(conf)
    except (OSError, ValueError, ImportError):
        return None


def _options(conf: dict[str, str]) -> str | None:
    java = _java()
    folder = cache_dir()
    if java is None or re.search(r"[\s\"'\\]", folder) or _in_spark_defaults("spark.driver.defaultJavaOptions"):
        return None  # no java; a path Spark's option string would split; the administrator's own options
    if not _archivable(conf):
        return None
    key = _key(java, conf)
    archive = os.path.join(folder, f"{key}.jsa")
    candidates = glob.glob(os.path.join(glob.escape(folder), f"{key}.*.part.jsa"))
    for candidate in candidates:
        try:
            if not os.path.exists(archive) and _whole(java, candidate):
                os.replace(candidate, archive)  # atomic: every JVM sees a whole file or none
                continue
            if time.time() - os.stat(candidate).st_mtime > STALE_S:
                os.remove(candidate)  # written by a JVM killed while writing it, or not needed
        except OSError:
            pass
    if os.path.exists(archive):
        os.utime(archive)  # in use: not pruned
        _prune(folder, keep=archive)
        return f"-XX:SharedArchiveFile={archive} {QUIET}"
    # a candidate written in the last minutes may still be being written: no second one meanwhile
    os.makedirs(folder, exist_ok=True)
    if any(os.path.exists(c) for c in candidates) or not _can_write_archives(java, folder):
        return None
    candidate = os.path.join(folder, f"{key}.{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}.part.jsa")
    # claimed now, empty: a command started before this one's JVM exits writes no second archive
    with open(candidate, "x"):
        pass
    return f"-XX:ArchiveClassesAtExit={candidate} {QUIET}"


def _prune(folder: str, keep: str) -> None:
    """Archives of other JVMs, Spark versions or packages that no command has used for a month."""
    cutoff = time.time() - UNUSED_S
    for path in glob.glob(os.path.join(glob.escape(folder), "*.jsa")):
        try:
            if path != keep and os.stat(path).st_mtime < cutoff:
                os.remove(path)
        except OSError:
            pass
