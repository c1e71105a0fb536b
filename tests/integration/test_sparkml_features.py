"""Spark ML feature stages read without a JVM, against Spark's own transform of the same rows:
nulls, NaN, unseen labels and out-of-range values under each ``handleInvalid``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("pyspark")

import lakeinfer  # noqa: E402
from lakeinfer.errors import BadRecordError, ModelLoadError  # noqa: E402
from tests.sparkml_helpers import assert_same, fit_save, frame_of, local_scores, spark, spark_scores  # noqa: E402,F401

NAN, INF = math.nan, math.inf

CATEGORIES = "s string, t string, n long, d double"
TRAIN_CATEGORIES = [
    {"s": s, "t": t, "n": n, "d": d}
    for s, t, n, d in [("a", "x", 1, 0.5), ("b", "y", 2, 1.5), ("a", "y", 2, 0.5), ("c", "x", 3, 1.0e7),
                       ("b", "z", 1, 0.5), ("a", "x", 2, 2.0), ("c", "y", 3, 1.5), ("d", "x", 1, NAN)]
]


def test_string_indexer_orders_and_keep(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every stringOrderType; numeric columns cast to strings as Spark casts them; under keep,
    nulls and unseen labels take the extra index, which IndexToString names from the indexer."""
    from pyspark.ml.feature import IndexToString, OneHotEncoder, StringIndexer

    orders = ["frequencyDesc", "frequencyAsc", "alphabetDesc", "alphabetAsc"]
    stages: list[Any] = [StringIndexer(inputCol="s", outputCol=f"s_{o}", stringOrderType=o) for o in orders]
    stages += [
        StringIndexer(inputCols=["t", "n", "d"], outputCols=["ti", "ni", "di"], handleInvalid="keep"),
        IndexToString(inputCol="ti", outputCol="t_back"),
        IndexToString(inputCol="s_alphabetAsc", outputCol="s_named", labels=["A", "B", "C", "D", "E"]),
        OneHotEncoder(inputCols=["ti", "ni"], outputCols=["t_hot", "n_hot"], handleInvalid="keep"),
        OneHotEncoder(inputCols=["di"], outputCols=["d_hot"], handleInvalid="keep", dropLast=False),
    ]
    model = fit_save(stages, frame_of(spark, TRAIN_CATEGORIES, CATEGORIES), tmp_path / "orders")
    rows = TRAIN_CATEGORIES + [{"s": "a", "t": "w", "n": 9, "d": 3.0}, {"s": "b", "t": None, "n": None, "d": None},
                               {"s": "c", "t": "x", "n": 3, "d": NAN}]
    df = frame_of(spark, rows, CATEGORIES)
    assert_same(spark_scores(spark, model, df), local_scores(model, df, tmp_path))
