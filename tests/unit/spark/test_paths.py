"""Where Spark reads the files list_input finds: local paths absolute, s3 through s3a, other
schemes kept."""

from __future__ import annotations

import os

import pytest

from lakeinfer.spark.session import spark_path


def test_local_paths_become_absolute(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert spark_path("data/in") == f"{tmp_path}/data/in"
    assert spark_path("data/in", f"{tmp_path}/data/in/a.parquet") == f"{tmp_path}/data/in/a.parquet"
    assert spark_path("/abs/in.csv") == "/abs/in.csv"


def test_s3_is_read_through_s3a() -> None:
    assert spark_path("s3://lake/data/") == "s3a://lake/data/"
    assert spark_path("s3://lake/data/", "lake/data/part-0.parquet") == "s3a://lake/data/part-0.parquet"
    assert spark_path("s3a://lake/data", "lake/data/x.csv") == "s3a://lake/data/x.csv"


def test_other_schemes_are_kept_with_their_authority() -> None:
    assert spark_path("gs://bucket/in", "bucket/in/a.parquet") == "gs://bucket/in/a.parquet"
    assert spark_path("hdfs://nn:8020/lake/in", "/lake/in/a.parquet") == "hdfs://nn:8020/lake/in/a.parquet"
    assert spark_path("file:///lake/in", "/lake/in/a.jsonl") == "file:///lake/in/a.jsonl"
    assert spark_path("abfss://c@acct.dfs.core.windows.net/in") == "abfss://c@acct.dfs.core.windows.net/in"
