"""Spark ML feature stages read without a JVM, against Spark's own transform of the same rows:
nulls, NaN, unseen labels and out-of-range values under each ``handleInvalid``.

Spark jobs are the cost here, so models are built from few fits (a fitted stage copied with other
transform params, labels given directly) and Spark scores each model it already holds in memory.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from lakeinfer.errors import BadRecordError, ModelLoadError
from lakeinfer.models.sparkml import SparkMLModel
from tests import sparkml_helpers
from tests.sparkml_helpers import ID, assert_same, frame_of, local_scores

spark = sparkml_helpers.spark  # the one Spark session of the run

NAN, INF = math.nan, math.inf

CATEGORIES = "s string, t string, n long, d double, f float"
TRAIN_CATEGORIES = [
    {"s": s, "t": t, "n": n, "d": d, "f": f}
    for s, t, n, d, f in [("a", "x", 1, 0.5, 0.1), ("b", "y", 2, 1.5, 1e8), ("a", "y", 2, 0.5, 0.1),
                          ("c", "x", 3, 1.0e7, 2.5), ("b", "z", 1, 0.5, -0.0), ("a", "x", 2, 2.0, 2.5),
                          ("c", "y", 3, 1.5, 0.1), ("d", "x", 1, NAN, 0.0)]
]


def saved(stages: list[Any], path: Path) -> tuple[Any, Path]:
    """A PipelineModel of fitted stages, saved under ``path``; the reader knows each of its params."""
    from pyspark.ml import PipelineModel

    model = PipelineModel(stages)
    model.write().overwrite().save(str(path))
    notes = SparkMLModel(str(path)).signature.extra.get("notes")
    assert not notes, f"params the reader does not know: {notes}"
    return model, path


def spark_rows(model: Any, df: Any) -> pd.DataFrame:
    """Spark's transform of ``df`` by the model it holds: the id and every column it added."""
    from pyspark.ml.functions import vector_to_array
    from pyspark.ml.linalg import VectorUDT
    from pyspark.sql.functions import when

    out = model.transform(df)
    added = [f for f in out.schema.fields if f.name not in df.columns]
    # vector_to_array fails on a null vector (a one-hot of null), so null stays null around it
    cols = [out[ID]] + [when(out[f.name].isNotNull(), vector_to_array(out[f.name])).alias(f.name)
                        if isinstance(f.dataType, VectorUDT) else out[f.name] for f in added]
    return out.select(*cols).toPandas().sort_values(ID).reset_index(drop=True)


def test_string_indexer_orders_and_keep(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Every stringOrderType; numeric columns cast to strings as Spark casts them (1.0E7, NaN, a
    float's 0.1 and 1.0E8, -0.0 apart from 0.0);
    under keep, nulls and unseen labels take the extra index, which an IndexToString without
    labels names from the indexer upstream ('__unknown'); OneHotEncoder keep, with and without
    dropLast."""
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import IndexToString, OneHotEncoder, StringIndexer

    orders = ["frequencyDesc", "frequencyAsc", "alphabetDesc", "alphabetAsc"]
    stages: list[Any] = [StringIndexer(inputCol="s", outputCol=f"s_{o}", stringOrderType=o) for o in orders]
    stages += [
        StringIndexer(inputCols=["t", "n", "d", "f"], outputCols=["ti", "ni", "di", "fi"], handleInvalid="keep"),
        IndexToString(inputCol="ti", outputCol="t_back"),
        IndexToString(inputCol="s_alphabetAsc", outputCol="s_named", labels=["A", "B", "C", "D", "E"]),
        OneHotEncoder(inputCols=["ti", "ni"], outputCols=["t_hot", "n_hot"], handleInvalid="keep"),
        OneHotEncoder(inputCols=["di"], outputCols=["d_hot"], handleInvalid="keep", dropLast=False),
    ]
    fitted = Pipeline(stages=stages).fit(frame_of(spark, TRAIN_CATEGORIES, CATEGORIES))
    model, path = saved(fitted.stages, tmp_path / "orders")
    rows = TRAIN_CATEGORIES + [{"s": "a", "t": "w", "n": 9, "d": 3.0, "f": 0.2},
                               {"s": "b", "t": None, "n": None, "d": None, "f": None},
                               {"s": "c", "t": "x", "n": 3, "d": NAN, "f": NAN}]
    df = frame_of(spark, rows, CATEGORIES)
    assert_same(spark_rows(model, df), local_scores(path, df, tmp_path))


NUMBERS = "a double, b double, k double, z double, n long, f float"
TRAIN_NUMBERS = [{"a": a, "b": b, "k": 5.0, "z": 0.0, "n": n, "f": f}
                 for a, b, n, f in [(1.0, -2.0, 1, 0.1), (2.5, 0.5, 4, 0.7), (-3.0, 4.0, 4, 0.7), (0.25, 1.0, 2, 1.3),
                                    (4.0, -1.5, 7, 2.9)]]
SCORE_NUMBERS = TRAIN_NUMBERS + [
    {"a": NAN, "b": 1.0, "k": 5.0, "z": 0.0, "n": None, "f": NAN},  # NaN in a vector; a null long imputed
    {"a": None, "b": 2.0, "k": 7.0, "z": 3.0, "n": -1, "f": None},  # null assembled as NaN; -1: a missingValue
    {"a": -0.0, "b": INF, "k": 5.0, "z": -2.0, "n": 3},
    {"a": 0.0, "b": 0.0, "k": 0.0, "z": 0.0, "n": 0},  # a zero vector: the norm leaves it as it is
    {"a": 1.5, "b": -INF, "k": 5.0, "z": 0.0, "n": 2},
    {"a": 2.5, "b": 0.0, "k": 5.0, "z": 0.0, "n": 8},
]


def test_scalers_imputer_buckets(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """StandardScaler (withMean and/or withStd, a constant feature: std 0), MinMaxScaler (constant
    feature, other min/max), MaxAbsScaler (an all-zero feature), Normalizer (p = 1, 2, 3, inf),
    PCA, Imputer (mean/median/mode, missingValue, a long and a float column), QuantileDiscretizer, a
    Bucketizer over several columns and OneHotEncoder with keep (fractions, negatives, NaN, null),
    VectorAssembler over a null vector and a vector holding NaN: NaN, null, infinities and -0.0
    in the rows."""
    from pyspark.ml.feature import (
        PCA,
        Bucketizer,
        Imputer,
        MaxAbsScaler,
        MinMaxScaler,
        Normalizer,
        OneHotEncoder,
        QuantileDiscretizer,
        StandardScaler,
        VectorAssembler,
    )

    train = frame_of(spark, TRAIN_NUMBERS, NUMBERS)
    assemble = VectorAssembler(inputCols=["a", "b", "k", "z"], outputCol="v", handleInvalid="keep")
    vectors = assemble.transform(train)
    standard = StandardScaler(inputCol="v", outputCol="std", withMean=True).fit(vectors)
    minmax = MinMaxScaler(inputCol="v", outputCol="mm").fit(vectors)
    # indices in [0, 3) and [0, 8): -3, 2.5, 4, NaN and -1 are invalid, 1.5 a fraction, null gives null
    hot = OneHotEncoder(inputCols=["a", "n"], outputCols=["a_hot", "n_hot"], handleInvalid="keep").fit(
        frame_of(spark, [{"a": 0.0, "n": 0}, {"a": 2.0, "n": 7}], "a double, n long"))
    imputers = [Imputer(inputCols=["a", "n", "f"], outputCols=[f"a_{s}", f"n_{s}", f"f_{s}"], strategy=s).fit(train)
                for s in ("mean", "median", "mode")]
    stages = [
        assemble,
        *[standard.copy({standard.withMean: mean, standard.withStd: std, standard.outputCol: f"std_{mean}_{std}"})
          for mean, std in ((True, True), (True, False), (False, True))],  # neither: Spark's identity
        minmax, minmax.copy({minmax.min: -1.0, minmax.max: 3.0, minmax.outputCol: "mm_wide"}),
        MaxAbsScaler(inputCol="v", outputCol="maxabs").fit(vectors),
        *[Normalizer(inputCol="v", outputCol=f"norm_{i}", p=p) for i, p in enumerate((1.0, 2.0, 3.0, INF))],
        PCA(k=2, inputCol="v", outputCol="pca").fit(vectors),
        *imputers,
        imputers[0].copy({imputers[0].missingValue: -1.0, imputers[0].outputCols: ["a_minus", "n_minus", "f_minus"]}),
        QuantileDiscretizer(numBuckets=3, inputCol="b", outputCol="b_q", handleInvalid="keep").fit(train),
        Bucketizer(splitsArray=[[-INF, -1.0, 0.0, 1.5, INF], [-INF, 0.0, 5.0, 7.0]], inputCols=["a", "k"],
                   outputCols=["a_b", "k_b"], handleInvalid="keep"),
        hot,
        # a null vector (one-hot of a null) and NaN inside a vector, assembled again
        VectorAssembler(inputCols=["v", "a_hot"], outputCol="again", handleInvalid="keep"),
        VectorAssembler(inputCols=["v", "b"], outputCol="again_error"),
    ]
    model, path = saved(stages, tmp_path / "numbers")
    df = frame_of(spark, SCORE_NUMBERS, NUMBERS)
    assert_same(spark_rows(model, df), local_scores(path, df, tmp_path))


INVALID = "s string, d double, x double, y double, w double, q double"
CLEAN = {"s": "a", "d": 0.5, "x": 0.5, "y": -1.0, "w": 2.0, "q": 1.0}
# One bad value each: (column, value); where it fails or is dropped depends on handleInvalid.
BAD: list[tuple[str, Any]] = [("s", "zz"), ("s", None), ("d", NAN), ("d", 9.5), ("x", NAN), ("x", None), ("y", None),
       ("w", NAN), ("w", None)]
# Spark takes these under 'error': a null number is bucketed as null, NaN in a double column is the
# label "NaN" (while 'skip' drops it, as Spark's na.drop does).
KEPT_UNDER_ERROR: list[tuple[str, Any]] = [("y", None), ("d", NAN)]
# Each Spark job costs a second: under error, a null 'w' fails as the null 'x' does (VectorAssembler).
ALIKE_UNDER_ERROR: list[tuple[str, Any]] = [("w", None)]
# No skip for these: OneHotEncoder and IndexToString have none, Bucketizer fails out of its splits.
ERROR_ONLY: list[tuple[str, Any]] = [("q", -1.0), ("q", NAN), ("q", 3.0), ("q", None), ("x", 2.5), ("x", -0.0)]


def invalid_model(spark: Any, handle: str, path: Path) -> tuple[Any, Path]:
    from pyspark.ml.feature import (
        Bucketizer,
        IndexToString,
        OneHotEncoder,
        StringIndexerModel,
        VectorAssembler,
    )

    hot = OneHotEncoder(inputCols=["q"], outputCols=["q_hot"]).fit(frame_of(spark, [{"q": 0.0}, {"q": 2.0}], "q double"))
    return saved([
        StringIndexerModel.from_arrays_of_labels([["a", "b"], ["0.5", "1.5", "NaN"]], inputCols=["s", "d"],
                                                 outputCols=["si", "di"], handleInvalid=handle),
        Bucketizer(splitsArray=[[0.0, 1.0, 2.0], [-INF, 0.0, INF]], inputCols=["x", "y"], outputCols=["xb", "yb"],
                   handleInvalid=handle),
        VectorAssembler(inputCols=["si", "x", "w"], outputCol="v", handleInvalid=handle),
        hot,
        IndexToString(inputCol="q", outputCol="q_name", labels=["zero", "one", "two"]),
    ], path)


def test_skip_drops_the_rows_spark_drops(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Under skip, Spark drops nulls, NaN of float columns (even a NaN label) and unseen labels;
    the local engine drops the same rows, under on_error='skip' and under the default 'fail'."""
    model, path = invalid_model(spark, "skip", tmp_path / "skip")
    rows = [CLEAN] + [{**CLEAN, column: value} for column, value in BAD] + [{**CLEAN, "q": 2.0, "x": 1.0}]
    df = frame_of(spark, rows, INVALID)
    expected = spark_rows(model, df)
    assert expected[ID].tolist() == [0, len(rows) - 1]  # Spark dropped each row with a bad value
    assert_same(expected, local_scores(path, df, tmp_path, on_error="skip"))
    # Rows Spark drops are no bad records: on_error='fail' drops them too and fails on none.
    assert_same(expected, local_scores(path, df, tmp_path))


@pytest.fixture(scope="module")
def error_model(spark, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:  # type: ignore[no-untyped-def]
    return invalid_model(spark, "error", tmp_path_factory.mktemp("error") / "error")


@pytest.mark.parametrize(("column", "value"),
                         [bad for bad in BAD if bad not in KEPT_UNDER_ERROR + ALIKE_UNDER_ERROR] + ERROR_ONLY)
def test_error_fails_where_spark_fails(spark, error_model: tuple[Any, Path], tmp_path: Path,  # type: ignore[no-untyped-def]
                                       column: str, value: Any) -> None:
    """Spark fails the job on the row; lakeinfer fails naming the column and the row."""
    model, path = error_model
    df = frame_of(spark, [CLEAN, CLEAN, {**CLEAN, column: value}, CLEAN], INVALID)
    with pytest.raises(Exception, match="SQLSTATE"):
        spark_rows(model, df)
    with pytest.raises(BadRecordError) as failed:
        local_scores(path, df, tmp_path)
    assert failed.value.column == column and failed.value.row == 2
    assert f"'{column}'" in str(failed.value) and "row 2" in str(failed.value)


def test_error_keeps_null_where_spark_keeps_it(spark, error_model: tuple[Any, Path],  # type: ignore[no-untyped-def]
                                               tmp_path: Path) -> None:
    """Under error, Spark buckets a null as null and indexes a NaN double as the label "NaN"; the
    upper bound of the splits falls in the last bucket; IndexToString truncates a fraction."""
    model, path = error_model
    rows = [CLEAN, *({**CLEAN, column: value} for column, value in KEPT_UNDER_ERROR),
            {**CLEAN, "x": 2.0, "q": 0.0}, {**CLEAN, "x": 0.0, "y": 0.0, "q": 1.7}]
    df = frame_of(spark, rows, INVALID)
    assert_same(spark_rows(model, df), local_scores(path, df, tmp_path))


def _edit_stage(folder: Path, stage_class: str, edit: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the metadata of the stage of ``stage_class`` in the saved PipelineModel ``folder``."""
    for part in folder.glob("stages/*_*/metadata/part-*"):
        meta = json.loads(part.read_text().splitlines()[0])
        if meta["class"].endswith("." + stage_class):
            edit(meta)
            part.write_text(json.dumps(meta) + "\n")
            return
    raise AssertionError(f"no {stage_class} stage in {folder}")


@pytest.mark.parametrize(("stage_class", "edit", "named"), [
    ("IndexToString", lambda m: m["paramMap"].pop("labels"), "labels"),  # and no StringIndexer wrote 'q'
    ("Bucketizer", lambda m: m["paramMap"].update(handleInvalid="clip"), "handleInvalid"),
    ("OneHotEncoderModel", lambda m: m["paramMap"].update(handleInvalid="skip"), "handleInvalid"),
    ("VectorAssembler", lambda m: m["paramMap"].update(outputSparse=True), "outputSparse"),  # a newer Spark's
])
def test_load_refuses_what_it_cannot_compute(error_model: tuple[Any, Path], tmp_path: Path, stage_class: str,
                                             edit: Callable[[dict[str, Any]], None], named: str) -> None:
    """A param that would change the transform and that the reader does not implement fails the
    load with one line naming it, rather than being ignored."""
    folder = tmp_path / "edited"
    shutil.copytree(error_model[1], folder)
    assert not SparkMLModel(str(folder)).signature.extra.get("notes")  # as saved: every param known
    _edit_stage(folder, stage_class, edit)
    with pytest.raises(ModelLoadError) as refused:
        SparkMLModel(str(folder))
    assert named in str(refused.value) and "\n" not in str(refused.value)
