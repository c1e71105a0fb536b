"""Lakehouse tables on the Spark engine: Iceberg through Iceberg's Spark runtime, Delta through
delta-spark, the job planned and named exactly as on the local engine (io/table_job.py).

The driver plans with pyiceberg / deltalake (the same snapshots, the same append-only check, the
same job id), Spark reads exactly the planned snapshot (or the appends since the last run), scores
it through ``mapInArrow`` and writes it in one commit (Iceberg snapshot, Delta version) carrying
the job id and the input position, as the local engine's commit does. A job killed before its
commit leaves only unreferenced data files; its rerun has the same id, finds no commit and redoes
the whole job, so every input row lands once.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa

from .. import errors
from ..io import tables
from ..io.table_job import TableJob

__all__ = ["catalog_conf", "check_jars", "jars_conf", "lake_conf", "packages", "read_table", "server_lacks",
           "write_table"]

# Versions built for Spark 4.1 (the project's Spark, see the README): Iceberg's runtime exists for
# 4.1 (not 4.2) and delta-spark 4.2.0 is compiled against Spark 4.1.0.
ICEBERG_VERSION = "1.12.0"
DELTA_VERSIONS = {"4.1": "4.2.0"}
SQLITE_JDBC_VERSION = "3.51.1.0"
_ICEBERG_CLASS = "org.apache.iceberg.spark.SparkCatalog"
_DELTA_CLASS = "io.delta.sql.DeltaSparkSessionExtension"


def _spark_minor() -> str:
    import pyspark

    return ".".join(pyspark.__version__.split(".")[:2])


def packages(kinds: set[str]) -> list[str]:
    """The Maven coordinates the table kinds need; Spark fetches them (spark.jars.packages) on the
    first run into its Ivy cache. LAKEINFER_ICEBERG_VERSION / LAKEINFER_DELTA_SPARK_VERSION override."""
    minor = _spark_minor()
    found = []
    if "iceberg" in kinds:
        version = os.environ.get("LAKEINFER_ICEBERG_VERSION", ICEBERG_VERSION)
        found += [f"org.apache.iceberg:iceberg-spark-runtime-{minor}_2.13:{version}",
                  f"org.xerial:sqlite-jdbc:{SQLITE_JDBC_VERSION}"]
    if "delta" in kinds:
        version = os.environ.get("LAKEINFER_DELTA_SPARK_VERSION") or DELTA_VERSIONS.get(minor, "")
        if not version:
            raise errors.ConfigError(f"no delta-spark release is known to lakeinfer for Spark {minor} (it knows "
                                     f"{', '.join(DELTA_VERSIONS)}); install pyspark {max(DELTA_VERSIONS)} or set "
                                     "LAKEINFER_DELTA_SPARK_VERSION")
        found.append(f"io.delta:delta-spark_2.13:{version}")
    return found


def catalog_conf(name: str) -> dict[str, str]:
    """Spark's Iceberg catalog ``name`` from the same pyiceberg configuration: a SQL catalog on
    SQLite becomes Iceberg's JDBC catalog on the same file (the two share their tables), a REST or
    Hive catalog the same catalog, with the same warehouse."""
    props = {k: str(v) for k, v in tables.catalog_properties(name).items()}
    prefix = f"spark.sql.catalog.{name}"
    uri = props.get("uri", "")
    inferred = "rest" if uri.startswith("http") else "hive" if uri.startswith("thrift") else "sql"
    kind = props.get("type", inferred)  # as pyiceberg infers it from the uri
    conf = {prefix: _ICEBERG_CLASS, f"{prefix}.cache-enabled": "false"}  # see the other engine's commits
    if "warehouse" in props:
        conf[f"{prefix}.warehouse"] = props["warehouse"]
    if kind == "sql":
        if not uri.startswith("sqlite:///"):
            raise errors.ConfigError(f"Iceberg catalog '{name}': the Spark engine maps SQL catalogs on SQLite "
                                     f"(sqlite:///PATH), not '{uri.split(':')[0]}'; configure Spark's catalog "
                                     f"with --spark-conf {prefix}.*=...")
        path = os.path.abspath(uri[len("sqlite:///"):])
        conf.update({f"{prefix}.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
                     f"{prefix}.uri": f"jdbc:sqlite:{path}"})
    elif kind in ("rest", "hive"):
        conf.update({f"{prefix}.type": kind, f"{prefix}.uri": uri})
    else:
        raise errors.ConfigError(f"Iceberg catalog '{name}' is of type '{kind}', which the Spark engine does not "
                                 f"map; configure Spark's catalog with --spark-conf {prefix}=...")
    return conf


def jars_conf(kinds: set[str]) -> dict[str, str]:
    """What a session needs from its start for tables of ``kinds``: the jars and the extensions."""
    extensions, conf = [], {}
    if "iceberg" in kinds:
        extensions.append("org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions")
    if "delta" in kinds:
        extensions.append(_DELTA_CLASS)
        conf["spark.sql.catalog.spark_catalog"] = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
    return {**conf, "spark.sql.extensions": ",".join(extensions), "spark.jars.packages": ",".join(packages(kinds))}


def lake_conf(kinds: set[str], catalog: str, user: dict[str, str]) -> dict[str, str]:
    """The session settings for tables of ``kinds``; the user's own settings win, and a catalog the
    user configured for Spark is taken as it is."""
    conf = jars_conf(kinds)
    if "iceberg" in kinds and f"spark.sql.catalog.{catalog}" not in user:
        conf.update(catalog_conf(catalog))
    return {**conf, **user}


def server_lacks(kind: str, coordinates: list[str], reason: str) -> errors.ConfigError:
    """The one line for a Spark Connect server without a connector: what to install there."""
    return errors.ConfigError(
        f"the Spark Connect server has no {kind} connector ({reason}): a client cannot add jars to a running "
        f"server; start it with --packages {','.join(coordinates)} (on Databricks: a runtime that ships "
        f"{kind}, or the jars as cluster libraries)")


def _probe(spark: Any, kind: str, catalog: str) -> None:
    """On Spark Connect (no JVM on this side): ask the server to use the connector, and name it
    when the server lacks it."""
    try:
        if kind == "iceberg":
            spark.sql(f"SHOW NAMESPACES IN `{catalog}`").collect()
        else:
            spark.read.format("delta").load("/lakeinfer-probe-of-the-delta-connector").schema  # noqa: B018
    except Exception as exc:
        text = str(exc)
        if any(code in text for code in ("CATALOG_PLUGIN_CLASS_NOT_FOUND", "DATA_SOURCE_NOT_FOUND",
                                         "ClassNotFoundException")):
            cls = _ICEBERG_CLASS if kind == "iceberg" else _DELTA_CLASS
            raise server_lacks(kind, packages({kind}), f"{cls} is missing") from None
        if kind == "iceberg":
            raise


def check_jars(spark: Any, kinds: set[str], conf: dict[str, str], *, catalog: str = "default") -> None:
    """One clear line when the session lacks a table kind's jars (a session started elsewhere, a
    Spark Connect server), and the catalog's settings on a session that already runs."""
    from .session import is_remote

    remote = is_remote(spark)
    if not remote:
        loader = spark.sparkContext._jvm.java.lang.Thread.currentThread().getContextClassLoader()
    for kind, cls in (("iceberg", _ICEBERG_CLASS), ("delta", _DELTA_CLASS)):
        if kind not in kinds or remote:
            continue
        try:
            spark.sparkContext._jvm.java.lang.Class.forName(cls, True, loader)
        except Exception:
            raise errors.ConfigError(
                f"the Spark session has no {kind} jars ({cls} is missing): start it with spark.jars.packages="
                f"{','.join(packages({kind}))} (lakeinfer does when it starts the session)") from None
    for key, value in conf.items():
        if key.startswith("spark.sql.catalog.") and key != "spark.sql.catalog.spark_catalog":
            current = spark.conf.get(key, None)
            if current is None:
                spark.conf.set(key, value)  # read when the catalog is first used
            elif current != value:
                raise errors.ConfigError(f"the Spark session already has {key}={current}, not {value} as the "
                                         "pyiceberg configuration says; use a new session")
    if remote:
        for kind in sorted(kinds):
            _probe(spark, kind, catalog)


def _ident(catalog: str, name: str) -> str:
    return ".".join(f"`{part}`" for part in [catalog, *name.split(".")])


def read_table(spark: Any, job: TableJob, uri: str, *, catalog: str, where: str | None) -> Any:
    """The planned input rows: the snapshot / version read, or only the appends since the last run."""
    ref = tables.parse_table(uri)
    assert ref is not None
    source = job.source
    if ref.kind == "iceberg":
        reader = spark.read.format("iceberg")
        if job.since is not None:  # the planner checked that everything since is an append
            reader = reader.option("start-snapshot-id", job.since).option("end-snapshot-id", source.position)
        else:
            reader = reader.option("versionAsOf", source.position)  # Spark's time travel, a snapshot id
        df = reader.load(_ident(catalog, ref.name))
        return df.where(where) if where else df  # pyiceberg parsed and bound it: Spark SQL reads it alike
    from pyspark.sql import functions as F

    from .session import spark_path

    df = spark.read.format("delta").option("versionAsOf", int(source.position or 0)).load(spark_path(ref.name))
    if job.since is not None:  # the data files the appends added (their names hold a UUID)
        names = sorted({os.path.basename(f[0]) for f in source.describe["files"]})
        df = df.where(F.col("_metadata.file_name").isin(names))
    return df


def output_schema(scored: Any) -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(scored.schema)  # type: ignore[no-any-return]


def write_table(scored: Any, job: TableJob, *, catalog: str, schema: pa.Schema) -> None:
    """Write the scored rows in one commit carrying the job's properties."""
    out = job.out
    assert out is not None
    properties = job.properties(engine="spark")
    if out.ref.kind == "iceberg":
        if out._table() is None:  # created as the local engine creates it, from the Arrow schema
            out.catalog.create_namespace_if_not_exists(out.ref.name.rsplit(".", 1)[0])
            out.catalog.create_table_if_not_exists(out.ref.name, schema=schema)
        writer = scored.writeTo(_ident(catalog, out.ref.name))
        for key, value in properties.items():
            writer = writer.option(f"snapshot-property.{key}", value)
        if job.replace:
            from pyspark.sql import functions as F

            writer.overwrite(F.lit(True))
        else:
            writer.append()
        return
    from .session import spark_path

    (scored.write.format("delta").mode("overwrite" if job.replace else "append")
     .option("userMetadata", json.dumps(properties, sort_keys=True)).save(spark_path(out.ref.name)))
