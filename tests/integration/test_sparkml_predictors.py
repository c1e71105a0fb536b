"""Spark ML predictors read without a JVM give what Spark's own transform gives: linear models,
naive Bayes, decision trees and tree ensembles, with thresholds, renamed or switched-off output
columns, categorical splits and NaN features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lakeinfer.errors import ModelLoadError
from lakeinfer.models.sparkml import SparkMLModel
from tests import sparkml_helpers
from tests.sparkml_helpers import assert_same, fit_save, frame_of, local_scores, spark_scores

spark = sparkml_helpers.spark  # the session fixture shared by the Spark ML tests

SCHEMA = ("x1 double, x2 double, x3 double, b1 double, b2 double, cat string, yes double, kind double, "
          "y double")
NUMERIC = ["x1", "x2", "x3"]


def _rows(n: int, seed: int) -> list[dict[str, Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x1, x2, x3 = rng.normal(size=3)
        cat = str(rng.choice(["a", "b", "c", "d"]))
        score = x1 - 0.5 * x2 + (0.8 if cat in ("b", "d") else -0.4) + rng.normal(scale=0.5)
        out.append({"x1": float(x1), "x2": float(x2), "x3": float(abs(x3)), "cat": cat,
                    "b1": float(x1 > 0), "b2": float(x3 > 1.0),
                    "yes": float(score > 0), "kind": float(0 if score < -0.5 else 1 if score < 0.7 else 2),
                    "y": float(score * 3 + x3)})
    return out


@pytest.fixture(scope="module")
def data(spark):  # type: ignore[no-untyped-def]
    train = _rows(240, 1)
    score = _rows(60, 2)
    # rows a tree sends somewhere particular: NaN features, an exact threshold comes later
    score += [{**r, "x1": float("nan")} for r in score[:8]]
    score += [{**r, "x2": float("nan"), "x1": float("nan")} for r in score[8:12]]
    return frame_of(spark, train, SCHEMA), frame_of(spark, score, SCHEMA)


Variants = dict[str, dict[str, Any]]  # variant name -> params set on a copy of the fitted model


def _prep(inputs: list[str], *, categorical: bool, out: str = "features") -> list[Any]:
    """A StringIndexer (for a categorical input) and a VectorAssembler keeping NaN."""
    from pyspark.ml.feature import StringIndexer, VectorAssembler

    stages: list[Any] = []
    cols = list(inputs)
    if categorical:  # the index goes straight into the vector: trees split on it as a category
        stages.append(StringIndexer(inputCol="cat", outputCol="cat_ix"))
        cols = ["cat_ix", *cols]
    return [*stages, VectorAssembler(inputCols=cols, outputCol=out, handleInvalid="keep")]


def _outputs(model: Any, name: str, params: dict[str, Any]) -> Any:
    """A copy of a fitted model with ``params`` set and its outputs named after ``name``
    (an output param given as "" stays switched off)."""
    extra = {model.getParam(k): v for k, v in params.items()}
    for param in ("predictionCol", "rawPredictionCol", "probabilityCol", "varianceCol"):
        if model.hasParam(param) and param not in params and (param != "varianceCol"):
            extra[model.getParam(param)] = f"{name}_{param}"
    return model.copy(extra)


def _fit(spark: Any, data: Any, tmp_path: Path, name: str, prep: list[Any],
         estimators: dict[str, tuple[Any, Variants]], *, nan: bool) -> None:
    """Fit ``prep`` and each estimator once, put every variant of every model in one
    PipelineModel, and check lakeinfer against Spark's transform of the scoring rows."""
    from pyspark.ml import Pipeline, PipelineModel

    train, score = data
    if not nan:
        score = score.na.drop()  # naive Bayes refuses NaN (Spark's transform fails on it)
    prepared = Pipeline(stages=prep).fit(train)
    ready = prepared.transform(train)
    models: list[Any] = []
    for est_name, (est, variants) in estimators.items():
        fitted = est.fit(ready)
        models.append(_outputs(fitted, est_name, {}))
        models += [_outputs(fitted, f"{est_name}_{v}", params) for v, params in variants.items()]
    path = tmp_path / name
    PipelineModel(stages=[*prepared.stages, *models]).write().overwrite().save(str(path))
    expected = spark_scores(spark, path, score)
    assert len(expected.columns) > len(models)
    assert_same(expected, local_scores(path, score, tmp_path))


def _linear(group: str) -> dict[str, tuple[Any, Variants]]:
    from pyspark.ml.classification import LinearSVC, LogisticRegression
    from pyspark.ml.regression import LinearRegression

    off = {"rawPredictionCol": "", "probabilityCol": ""}
    if group == "binary":
        return {
            "lr": (LogisticRegression(labelCol="yes", maxIter=5), {
                "threshold": {"threshold": 0.3},
                "thresholds": {"thresholds": [0.45, 0.55]},
                "class_1_threshold_zero": {"thresholds": [0.5, 0.0], "probabilityCol": ""},
                "thresholds_no_raw": {"thresholds": [0.7, 0.3], "rawPredictionCol": ""},
                "prediction_only": {"threshold": 0.65, **off},
                "zero_threshold": {"threshold": 0.0, "probabilityCol": ""},
            }),
            "lr_multinomial_family": (LogisticRegression(labelCol="yes", maxIter=5, family="multinomial"), {
                "thresholds": {"thresholds": [0.35, 0.65]}}),
            "svc": (LinearSVC(labelCol="yes", maxIter=5), {
                "threshold": {"threshold": 0.25},
                "prediction_only": {"threshold": -0.1, "rawPredictionCol": ""}}),
        }
    return {
        "lr3": (LogisticRegression(labelCol="kind", maxIter=5), {
            "thresholds": {"thresholds": [0.5, 0.2, 0.3], "predictionCol": "label_hat"},
            "zero_threshold_no_raw": {"thresholds": [0.4, 0.0, 0.6], "rawPredictionCol": ""},
            "prediction_only": off}),
        "linear_regression": (LinearRegression(labelCol="y", regParam=0.1, elasticNetParam=0.5), {}),
    }


@pytest.mark.parametrize("group", ["binary", "multiclass_and_regression"])
def test_linear_models_score_as_spark(spark, data, tmp_path: Path, group: str) -> None:  # type: ignore[no-untyped-def]
    _fit(spark, data, tmp_path, group, _prep(NUMERIC, categorical=True), _linear(group), nan=True)


def test_naive_bayes_scores_as_spark(spark, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.ml.classification import NaiveBayes
    from pyspark.ml.feature import VectorAssembler

    # naive Bayes needs counts (>= 0), and 0 or 1 for bernoulli
    prep = [*_prep(["x3", "b1"], categorical=True, out="counts"),
            VectorAssembler(inputCols=["b1", "b2"], outputCol="bits")]
    estimators: dict[str, tuple[Any, Variants]] = {
        f"nb_{kind}": (NaiveBayes(labelCol="kind", modelType=kind, smoothing=0.5,
                                  featuresCol="bits" if kind == "bernoulli" else "counts"),
                       {"thresholds": {"thresholds": [0.3, 0.3, 0.4]}} if kind == "multinomial" else {})
        for kind in ("multinomial", "complement", "bernoulli", "gaussian")}
    _fit(spark, data, tmp_path, "naive_bayes", prep, estimators, nan=False)


def _trees(group: str) -> dict[str, tuple[Any, Variants]]:
    from pyspark.ml.classification import (
        DecisionTreeClassifier,
        GBTClassifier,
        RandomForestClassifier,
    )
    from pyspark.ml.regression import DecisionTreeRegressor, GBTRegressor, RandomForestRegressor

    off = {"rawPredictionCol": "", "probabilityCol": ""}
    if group == "classifiers":
        return {
            "dt": (DecisionTreeClassifier(labelCol="kind", maxDepth=5), {
                "prediction_only": off, "thresholds": {"thresholds": [0.2, 0.5, 0.3]},
                "thresholds_prediction_only": {"thresholds": [0.2, 0.5, 0.3], **off}}),
            "rf": (RandomForestClassifier(labelCol="kind", numTrees=6, maxDepth=4, seed=3), {
                "thresholds_no_raw": {"thresholds": [0.3, 0.3, 0.4], "rawPredictionCol": ""},
                "thresholds_prediction_only": {"thresholds": [0.3, 0.3, 0.4], **off}}),
            "gbt": (GBTClassifier(labelCol="yes", maxIter=5, maxDepth=3, seed=6), {
                "prediction_only": off, "thresholds": {"thresholds": [0.6, 0.4]}}),
        }
    return {
        "dt": (DecisionTreeRegressor(labelCol="y", maxDepth=5), {"variance": {"varianceCol": "var"}}),
        "rf": (RandomForestRegressor(labelCol="y", numTrees=5, maxDepth=4, seed=4), {}),
        "gbt": (GBTRegressor(labelCol="y", maxIter=5, maxDepth=3, seed=7), {}),
    }


@pytest.mark.parametrize("group", ["classifiers", "regressors"])
def test_trees_score_as_spark_with_categories_and_nan(spark, data, tmp_path: Path, group: str) -> None:  # type: ignore[no-untyped-def]
    _fit(spark, data, tmp_path, group, _prep(["x1", "x2"], categorical=True), _trees(group), nan=True)


def test_a_split_at_its_threshold_goes_left_as_in_spark(spark, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.ml.regression import DecisionTreeRegressor

    train, _ = data
    stages = [*_prep(["x1", "x2"], categorical=False), DecisionTreeRegressor(labelCol="y", maxDepth=4)]
    model = fit_save(stages, train, tmp_path / "dt_edges")
    tree = SparkMLModel(str(model)).stages[-1]
    thresholds = tree.forest.threshold[np.isfinite(tree.forest.threshold)]  # type: ignore[attr-defined]
    assert len(thresholds)
    # every stored threshold, exactly and a hair either side, on both features
    values = [v for t in thresholds for v in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf))]
    rows = [{"x1": float(v), "x2": float(w), "x3": 1.0, "b1": 0.0, "b2": 1.0, "cat": "a", "yes": 0.0, "kind": 0.0, "y": 0.0}
            for v, w in zip(values, values[::-1], strict=True)]
    score = frame_of(spark, rows, SCHEMA)
    assert_same(spark_scores(spark, model, score), local_scores(model, score, tmp_path))


def test_a_set_leaf_column_is_refused_at_load(spark, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.ml.classification import DecisionTreeClassifier

    train, _ = data
    stages = [*_prep(NUMERIC, categorical=False), DecisionTreeClassifier(labelCol="yes", maxDepth=2, leafCol="leaf")]
    model = fit_save(stages, train, tmp_path / "dt_leaf")
    with pytest.raises(ModelLoadError, match="leafCol"):
        SparkMLModel(str(model))


def test_naive_bayes_rows_spark_fails_on_are_bad_records(spark, data, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.ml.classification import NaiveBayes

    train, score = data
    model = fit_save([*_prep(["x3"], categorical=True), NaiveBayes(labelCol="kind")], train, tmp_path / "nb")
    rows = _rows(20, 3)
    for r in rows[::4]:
        r["x3"] = -r["x3"] - 0.5  # a negative count
    mixed = frame_of(spark, rows, SCHEMA)
    with pytest.raises(Exception, match="nonnegative"):
        spark_scores(spark, model, mixed)
    expected = spark_scores(spark, model, mixed.filter("x3 >= 0"))
    assert_same(expected, local_scores(model, mixed, tmp_path, on_error="skip"))
