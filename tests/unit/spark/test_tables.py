"""The Spark engine's table settings derived from the pyiceberg configuration (no JVM here)."""

from __future__ import annotations

import os

import pytest

from lakeinfer.errors import ConfigError
from lakeinfer.spark import tables as _spark_tables
from lakeinfer.stream.spark import _connector

pytest.importorskip("pyiceberg")


def test_a_sqlite_sql_catalog_becomes_the_jdbc_catalog_on_the_same_file(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__URI", "sqlite:///rel/catalog.db")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__WAREHOUSE", "file:///data/wh")
    conf = _spark_tables.catalog_conf("lake")
    assert conf == {
        "spark.sql.catalog.lake": "org.apache.iceberg.spark.SparkCatalog",
        "spark.sql.catalog.lake.cache-enabled": "false",
        "spark.sql.catalog.lake.catalog-impl": "org.apache.iceberg.jdbc.JdbcCatalog",
        "spark.sql.catalog.lake.uri": f"jdbc:sqlite:{os.path.join(str(tmp_path), 'rel', 'catalog.db')}",
        "spark.sql.catalog.lake.warehouse": "file:///data/wh",
    }


def test_rest_and_unmapped_catalogs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYICEBERG_CATALOG__R__URI", "http://127.0.0.1:8181")
    conf = _spark_tables.catalog_conf("r")
    assert conf["spark.sql.catalog.r.type"] == "rest" and conf["spark.sql.catalog.r.uri"] == "http://127.0.0.1:8181"
    monkeypatch.setenv("PYICEBERG_CATALOG__H__URI", "thrift://127.0.0.1:9083")
    assert _spark_tables.catalog_conf("h")["spark.sql.catalog.h.type"] == "hive"
    monkeypatch.setenv("PYICEBERG_CATALOG__PG__URI", "postgresql+psycopg2://u@h/db")
    with pytest.raises(ConfigError, match="maps SQL catalogs on SQLite"):
        _spark_tables.catalog_conf("pg")
    monkeypatch.setenv("PYICEBERG_CATALOG__G__TYPE", "glue")
    with pytest.raises(ConfigError, match="of type 'glue'"):
        _spark_tables.catalog_conf("g")


def test_a_catalog_set_for_spark_by_the_user_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    user = {"spark.sql.catalog.lake": "org.apache.iceberg.spark.SparkCatalog", "spark.sql.catalog.lake.type": "hive"}
    conf = _spark_tables.lake_conf({"iceberg"}, "lake", user)
    assert conf["spark.sql.catalog.lake.type"] == "hive" and "spark.sql.catalog.lake.uri" not in conf


def test_the_jars_of_spark_4_1() -> None:
    import pyspark

    assert pyspark.__version__.startswith("4.1.")
    assert _spark_tables.packages({"iceberg", "delta"}) == [
        "org.apache.iceberg:iceberg-spark-runtime-4.1_2.13:1.12.0", "org.xerial:sqlite-jdbc:3.51.1.0",
        "io.delta:delta-spark_2.13:4.2.0"]
    # Maven Central has spark-token-provider-kafka-0-10 for 4.1.1 only among the 4.1 releases
    assert _connector() == "org.apache.spark:spark-sql-kafka-0-10_2.13:4.1.1"
