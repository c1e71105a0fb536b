"""The Spark session of a lakeinfer command, and its readers of folder inputs."""

from __future__ import annotations

import os
import re
import sys
import uuid
from typing import Any

from .. import errors
from ..io.sources import InputFile, filesystem_for, list_input


def session(master: str | None, conf: dict[str, str], *, remote: str | None = None, job: str | None = None) -> Any:
    """The command's session: a Spark Connect session on ``remote`` (``sc://HOST:PORT``; ``job``:
    see :func:`remote_session`), else a classic one on ``master``."""
    errors.require("pyspark", "spark", "the Spark engine")
    if remote:
        return remote_session(remote, conf, job=job)
    # pyspark's builder would take $SPARK_REMOTE over the master: the caller chose a classic session
    os.environ.pop("SPARK_REMOTE", None)
    import warnings

    from pyspark.sql import SparkSession

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyspark\..*")

    # executors run this interpreter, where lakeinfer and the model's framework are installed
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = SparkSession.builder.appName("lakeinfer").config("spark.ui.showConsoleProgress", "false")
    builder = builder.config("spark.sql.execution.arrow.pyspark.enabled", "true")
    from pyspark import SparkContext

    if SparkContext._gateway is None:  # this command starts the JVM: with the class archive
        from .cds import driver_java_options

        options = driver_java_options(conf)
        if options:
            theirs = conf.get("spark.driver.defaultJavaOptions")
            conf = {**conf, "spark.driver.defaultJavaOptions": f"{theirs} {options}" if theirs else options}
    if master:
        builder = builder.master(master)
    for key, value in conf.items():
        builder = builder.config(key, value)
    packages = conf.get("spark.jars.packages")
    if not packages or SparkContext._gateway is not None:  # no jars to fetch, or the JVM runs already
        spark = builder.getOrCreate()
    else:
        spark = _start_with_packages(builder, packages)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def connect_remote(master: str | None, remote: str | None) -> str | None:
    """The Spark Connect server a command runs on: ``remote``, else ``$SPARK_REMOTE`` where no
    master is given; None for a classic session."""
    if master and remote:
        raise errors.ConfigError(f"give --master {master} or --remote {remote}, not both: a classic session runs "
                                 "on a master, a Spark Connect session on its server's")
    return remote or (None if master else os.environ.get("SPARK_REMOTE") or None)


def remote_session(remote: str, conf: dict[str, str], *, job: str | None = None) -> Any:
    """A Spark Connect session on ``remote``: through ``DatabricksSession`` where databricks-connect
    is installed, else pyspark's own client. ``conf`` is set on the session; a setting that the
    server takes only when it starts (jars, extensions) is one line saying so.

    A server keeps running what a client started after the client is gone (killed, its network
    lost). So the session of ``job`` (a name of the job's identity) has an id derived from it, and
    a rerun of the job joins that session and first interrupts whatever it still runs: a killed
    run's write never lands beside its rerun's. A session closed since (stopped, expired) runs
    nothing, and the rerun gets a new one.
    """
    try:
        from pyspark.sql.connect.utils import check_dependencies

        check_dependencies("lakeinfer")
    except ImportError as exc:
        missing = re.search(r"\] (\S+)", str(exc))
        raise errors.MissingExtraError(missing.group(1) if missing else "grpcio-status", "spark",
                                       "Spark Connect (--remote)") from None
    _reachable(remote)
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyspark\..*")
    spark = _connect(_with_session(remote, job), fresh=False) if job else _connect(remote, fresh=False)
    if job:
        try:
            spark.interruptAll()
        except Exception as exc:
            if "SESSION_CLOSED" not in str(exc):
                raise
            spark = _connect(_with_session(remote, f"{job}/{uuid.uuid4()}"), fresh=True)
    for key, value in conf.items():
        try:
            if spark.conf.get(key, None) != value:
                spark.conf.set(key, value)
        except Exception as exc:
            reason = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            raise errors.ConfigError(f"the Spark Connect server {remote} does not take {key} from a client "
                                     f"({reason[:200]}): set it where the server starts (its --conf, "
                                     "spark-defaults.conf or the cluster's settings)") from None
    return spark


def _connect(url: str, *, fresh: bool) -> Any:
    try:
        from databricks.connect import DatabricksSession  # type: ignore[import-not-found]

        builder = DatabricksSession.builder.remote(url)
    except ImportError:
        from pyspark.sql import SparkSession

        builder = SparkSession.builder.remote(url)
    return builder.create() if fresh else builder.getOrCreate()


def _with_session(remote: str, job: str) -> str:
    """``remote`` with the session id of ``job`` (a user's own session_id is kept)."""
    if "session_id=" in remote:
        return remote
    session_id = uuid.uuid5(uuid.NAMESPACE_URL, f"lakeinfer-job:{job}")
    return f"{remote};session_id={session_id}" if "/;" in remote else f"{remote.rstrip('/')}/;session_id={session_id}"


def _reachable(remote: str) -> None:
    """One line at once where nothing listens at the server's address (the client itself
    retries a refused connection for minutes)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(remote)
    if parts.scheme != "sc":
        raise errors.ConfigError(f"--remote {remote}: a Spark Connect address is sc://HOST:PORT")
    host = parts.hostname or "localhost"
    try:
        port = parts.port or 15002
        socket.create_connection((host, port), timeout=10).close()
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"no Spark Connect server answers at {remote} ({exc}): start one "
                                 "(sbin/start-connect-server.sh) or check the address") from None


def is_remote(spark: Any) -> bool:
    """Whether ``spark`` is a Spark Connect session (no SparkContext, no JVM on this side)."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def batch_defaults(master: str | None) -> dict[str, str]:
    """Settings of a batch command's own session, before the user's ``--spark-conf``.

    On a local master nobody watches the web UI of a one-off command, and starting it is a
    share of the start-up; on a cluster (or a master from spark-defaults) it stays, since that
    is where a long job is followed.
    """
    if master is not None and master.startswith("local"):
        return {"spark.ui.enabled": "false"}
    return {}


def _start_with_packages(builder: Any, packages: str) -> Any:
    """Start the JVM (whose launcher fetches ``packages``) with its stderr through a pipe: held
    back until it has started, then passed on; if it cannot start, the line of Ivy's that names
    the jar it could not fetch goes into one error line instead of the launcher's stack."""
    import threading

    read_end, write_end = os.pipe()
    held: list[bytes] = []
    lock = threading.Lock()
    started = threading.Event()

    def forward() -> None:
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                with lock:
                    if not started.is_set():
                        held.append(line)
                        continue
                sys.stderr.buffer.write(line)
                sys.stderr.flush()

    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(write_end, 2)  # the launcher inherits it
    os.close(write_end)
    reader = threading.Thread(target=forward, name="spark-stderr", daemon=True)
    reader.start()
    try:
        spark = builder.getOrCreate()
    except Exception as exc:
        os.dup2(saved, 2)
        os.close(saved)
        reader.join(timeout=10)  # the launcher has exited: the pipe ends
        text = b"".join(held).decode(errors="replace")
        named = re.search(r"unresolved dependency: [^\]\n]+", text)
        reason = named.group(0) if named else (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise errors.ConfigError(
            f"Spark did not start with the jars {packages} (spark.jars.packages fetches them from Maven Central "
            f"into the Ivy cache on first use: is it reachable, do these versions exist?): {reason}") from None
    os.dup2(saved, 2)
    os.close(saved)
    with lock:  # started: what the launcher said goes where it would have gone, then the rest
        for line in held:
            sys.stderr.buffer.write(line)
        sys.stderr.flush()
        started.set()
    return spark


def spark_path(uri: str, path: str | None = None) -> str:
    """What Spark reads for ``path``, a file list_input found under ``uri`` (default: ``uri``).

    list_input's paths are its file system's: absolute for local input, scheme-less for object
    stores (``bucket/key``), so the scheme comes back from ``uri``. Hadoop reads S3 only through
    its s3a connector, so ``s3://`` becomes ``s3a://``; every other scheme is kept.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return os.path.abspath(uri if path is None else path)
    if path is None:
        located = uri
    elif path.startswith("/"):  # hdfs://host:port/dir, file:///dir: the path lacks the authority
        located = f"{scheme}://{rest.split('/', 1)[0]}{path}"
    else:
        located = f"{scheme}://{path}"
    if scheme.lower() == "s3":
        located = "s3a://" + located.partition("://")[2]
    return located


_NO_S3A = ("S3AFileSystem", 'scheme "s3a"')


def read(spark: Any, uri: str, input_format: str | None,
         listed: tuple[Any, list[InputFile], str] | None = None) -> tuple[Any, str, list[InputFile]]:
    """The input as a DataFrame, its format (from the file names unless given) and its files
    (``listed``: what ``list_input`` gave, where the caller listed them before Spark started)."""
    fs, files, fmt = listed or list_input(uri, input_format)
    paths = [spark_path(uri, f.path) for f in files]
    reader = spark.read
    try:
        if fmt == "parquet":
            schema = _parquet_schema(spark, fs, files)
            return (reader if schema is None else reader.schema(schema)).parquet(*paths), fmt, files
        if fmt == "csv":
            return reader.csv(paths, header=True, inferSchema=True), fmt, files
        return reader.json(paths), fmt, files
    except Exception as exc:
        if paths[0].startswith("s3a://") and any(s in str(exc) for s in _NO_S3A):
            raise errors.ConfigError(
                f"Spark reads {uri} as {spark_path(uri)} through Hadoop's s3a connector, which is not "
                "installed: pass --spark-conf spark.jars.packages=org.apache.hadoop:hadoop-aws:"
                "<Spark's Hadoop version>") from exc
        raise


def _parquet_schema(spark: Any, fs: Any, files: list[InputFile]) -> Any:
    """Spark's schema of the Parquet input, from the first file's footer read here, where every
    column has a plain type that Spark reads one way only; else None (Spark infers it).

    Spark infers a Parquet schema with a job of its own; in a fresh JVM that job costs as much
    as a second of a short command.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import types as T

    plain = {pa.bool_(): T.BooleanType(), pa.int8(): T.ByteType(), pa.int16(): T.ShortType(),
             pa.int32(): T.IntegerType(), pa.int64(): T.LongType(), pa.float32(): T.FloatType(),
             pa.float64(): T.DoubleType(), pa.string(): T.StringType(), pa.large_string(): T.StringType(),
             pa.date32(): T.DateType()}
    if not files or str(spark.conf.get("spark.sql.parquet.mergeSchema", "false")).lower() == "true":
        return None
    try:
        with fs.open_input_file(files[0].path) as fh:
            schema = pq.ParquetFile(fh).schema_arrow
    except (OSError, pa.ArrowException):
        return None
    if len(set(n.lower() for n in schema.names)) != len(schema.names):
        return None
    fields = []
    for field in schema:
        kind = plain.get(field.type)
        if kind is None:
            return None
        fields.append(T.StructField(field.name, kind, True))
    return T.StructType(fields)


def parquet_sample(df: Any, uri: str, files: list[InputFile], rows: int) -> Any:
    """Up to ``rows`` rows of ``df`` read on the driver from its first Parquet files, typed as
    Spark gives them to a Python worker; None where that cannot be done faithfully (columns
    from the folder names, types Arrow cannot cast), and the caller asks Spark for them.

    A ``limit(n).toArrow()`` job would cost the command a second or two of a short run: the
    first job of a fresh JVM pays for its class loading and code generation.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql.pandas.types import to_arrow_schema

    try:
        schema = to_arrow_schema(df.schema)
        fs, _ = filesystem_for(uri)
        for file in files:
            with fs.open_input_file(file.path) as fh:
                reader = pq.ParquetFile(fh)
                if reader.metadata.num_rows == 0:
                    continue
                batch = next(reader.iter_batches(batch_size=rows, columns=schema.names))
            return pa.Table.from_batches([batch]).select(schema.names).cast(schema).combine_chunks().to_batches()[0]
    except (KeyError, ValueError, TypeError, OSError, pa.ArrowException, StopIteration):
        return None
    return None
