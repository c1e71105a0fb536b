"""The per-flavor fast paths give what the framework itself gives: the same labels as the
estimator's own predict (ties included), probabilities within 1e-9 of its predict_proba."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from lakeinfer.models.sklearn import SklearnModel

WIDTH = 6
NAMES = [f"f{i}" for i in range(WIDTH)]


def _data(rows: int = 400, classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # few distinct values: many rows share leaves, so equal scores (ties) come up
    x = rng.integers(-2, 3, size=(rows, WIDTH)).astype(np.float64)
    y = (x[:, 0] + x[:, 1] * x[:, 2] + rng.normal(scale=0.5, size=rows)).round().astype(int) % classes
    return x, np.array(["no", "yes", "maybe"])[y] if classes <= 3 else y


def _batch(x: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(x[:, j]) for j in range(x.shape[1])], names=NAMES)


def _check(model: SklearnModel, estimator: Any, x: np.ndarray) -> None:
    out = model.predict(_batch(x))
    frame = pd.DataFrame(x, columns=NAMES) if hasattr(estimator, "feature_names_in_") else x
    assert out.column("prediction").to_pylist() == estimator.predict(frame).tolist()
    got = np.array(out.column("probability").to_pylist())
    np.testing.assert_allclose(got, estimator.predict_proba(frame), rtol=0, atol=1e-9)


FAMILIES = {
    "gradient_boosting": lambda: GradientBoostingClassifier(n_estimators=20, random_state=0),
    "hist_gradient_boosting": lambda: HistGradientBoostingClassifier(max_iter=20, random_state=0),
    "random_forest": lambda: RandomForestClassifier(n_estimators=2, max_depth=2, random_state=0),
    "extra_trees": lambda: ExtraTreesClassifier(n_estimators=4, max_depth=2, random_state=0),
    "logistic": lambda: LogisticRegression(),
    "logistic_scaled": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.5)),
}


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("named", [False, True])
def test_one_call_equals_predict_and_predict_proba(family: str, classes: int, named: bool) -> None:
    x, y = _data(classes=classes)
    estimator = FAMILIES[family]()
    estimator.fit(pd.DataFrame(x, columns=NAMES) if named else x, y)
    model = SklearnModel("m.joblib", estimator, features=NAMES)
    assert model._joint is not None
    assert not model._frame  # positional: the array goes in, no DataFrame
    test, _ = _data(rows=300, classes=classes, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about feature names reaches the caller
        _check(model, estimator, test)


@pytest.mark.parametrize("classes", [2, 3])
def test_logistic_regression_is_one_call(classes: int) -> None:
    x, y = _data(classes=classes)
    estimator = LogisticRegression().fit(x, y)
    model = SklearnModel("m.joblib", estimator, features=NAMES)
    test, _ = _data(rows=50, classes=classes, seed=3)
    expected = estimator.predict(test).tolist(), estimator.predict_proba(test)
    calls: list[str] = []
    for method in ("predict", "predict_proba", "decision_function"):
        own = getattr(estimator, method)
        setattr(estimator, method, lambda x, own=own, method=method: calls.append(method) or own(x))
    out = model.predict(_batch(test))
    assert calls == ["decision_function"]
    assert out.column("prediction").to_pylist() == expected[0]
    np.testing.assert_allclose(np.array(out.column("probability").to_pylist()), expected[1], rtol=0, atol=1e-9)


def test_forest_ties_follow_predict() -> None:
    x, y = _data()
    forest = RandomForestClassifier(n_estimators=2, max_depth=2, random_state=3).fit(x, y)
    forest.estimators_[0].tree_.value[:] = 0.5  # an even vote wherever the other tree is even too
    tree = forest.estimators_[1].tree_
    leaves = np.flatnonzero(tree.children_left == -1)
    tree.value[leaves[:len(leaves) // 2]] = 0.5
    test, _ = _data(rows=300, seed=2)
    proba = forest.predict_proba(test)
    assert (proba[:, 0] == proba[:, 1]).any() and (proba[:, 0] != proba[:, 1]).any()
    _check(SklearnModel("m.joblib", forest, features=NAMES), forest, test)


def test_gradient_boosting_zero_score_is_the_positive_class() -> None:
    """predict takes raw >= 0 as the second class; the argmax of [0.5, 0.5] would be the first."""
    x, y = _data()
    boosting = GradientBoostingClassifier(n_estimators=3, init="zero", random_state=0).fit(x, y)
    for tree in boosting.estimators_.ravel():
        tree.tree_.value[:] = 0.0  # every score exactly 0
    test, _ = _data(rows=50, seed=2)
    assert (boosting.decision_function(test) == 0).all()
    _check(SklearnModel("m.joblib", boosting, features=NAMES), boosting, test)
    assert set(SklearnModel("m.joblib", boosting, features=NAMES).predict(_batch(test)).column("prediction").to_pylist()) == {"yes"}


def test_hist_gradient_boosting_zero_score_is_the_negative_class() -> None:
    """predict takes raw > 0 as the second class."""
    x, y = _data()
    boosting = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(x, y)
    boosting._baseline_prediction = np.zeros_like(boosting._baseline_prediction)
    for predictors in boosting._predictors:
        for predictor in predictors:
            predictor.nodes["value"] = 0.0
    test, _ = _data(rows=50, seed=2)
    assert (boosting.decision_function(test) == 0).all()
    _check(SklearnModel("m.joblib", boosting, features=NAMES), boosting, test)


def test_pipeline_runs_its_transformers_once_and_ends_in_the_joint_rule() -> None:
    x, y = _data(classes=3)
    pipe = make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=10, random_state=0))
    pipe.fit(pd.DataFrame(x, columns=NAMES), y)
    model = SklearnModel("m.joblib", pipe)
    assert model._joint is not None and not model._frame
    _check(model, pipe, _data(rows=100, classes=3, seed=4)[0])


def test_column_transformer_still_gets_a_dataframe() -> None:
    x, y = _data()
    select = ColumnTransformer([("keep", "passthrough", ["f1", "f0", "f2"])])
    pipe = Pipeline([("select", select), ("model", RandomForestClassifier(n_estimators=3, random_state=0))])
    pipe.fit(pd.DataFrame(x, columns=NAMES), y)
    model = SklearnModel("m.joblib", pipe)
    assert model._frame
    _check(model, pipe, _data(rows=100, seed=4)[0])


# -- the one [N, K] tensor, kept as one matrix column ------------------------------------------

def _runtime(tmp_path: Any, estimator: Any, **options: Any) -> Any:
    import joblib

    from lakeinfer.runtime import ModelRuntime, PipelineRecipe

    path = tmp_path / "m.joblib"
    joblib.dump(estimator, path)
    return ModelRuntime(PipelineRecipe(model_path=str(path), trust=True, features=tuple(NAMES), **options))


def _fitted(estimator: Any) -> Any:
    x, y = _data()
    return estimator.fit(x, y)


def test_packed_matrix_scores_as_the_split_columns(tmp_path: Any) -> None:
    from lakeinfer.schema import pack_features

    runtime = _runtime(tmp_path, _fitted(GradientBoostingClassifier(n_estimators=5, random_state=0)))
    test, _ = _data(rows=40, seed=5)
    for matrix in (test, test.astype(np.float32)):
        packed = runtime.score(pack_features(matrix))
        split = runtime.score(_batch(matrix))
        assert packed.errors is None and packed.outputs.equals(split.outputs)


@pytest.mark.parametrize(("value", "reason"), [
    (float("nan"), "feature column 'f3' is NaN"),
    (float("inf"), "feature column 'f3' is Infinity"),
    (-float("inf"), "feature column 'f3' is -Infinity"),
])
def test_packed_bad_values_name_the_row_and_the_column(tmp_path: Any, value: float, reason: str) -> None:
    from lakeinfer.schema import pack_features

    runtime = _runtime(tmp_path, _fitted(GradientBoostingClassifier(n_estimators=3, random_state=0)))
    assert not runtime.model.handles_missing
    test, _ = _data(rows=5, seed=5)
    test[2, 3] = value
    test[4, 3] = value
    scored = runtime.score(pack_features(test))
    assert scored.errors == [None, None, reason, None, reason] == runtime.score(_batch(test)).errors
    assert scored.outputs.column("prediction").null_count == 2
    good = runtime.score(_batch(np.delete(test, [2, 4], axis=0))).outputs.column("prediction").to_pylist()
    assert [v for v in scored.outputs.column("prediction").to_pylist() if v is not None] == good
    with pytest.raises(Exception, match=f"row 2: {reason}"):
        runtime.transform(pack_features(test))


def test_packed_missing_values_reach_a_model_that_takes_them(tmp_path: Any) -> None:
    from lakeinfer.schema import pack_features

    estimator = _fitted(HistGradientBoostingClassifier(max_iter=5, random_state=0))
    runtime = _runtime(tmp_path, estimator)
    test, _ = _data(rows=6, seed=5)
    test[1, 0] = float("nan")
    scored = runtime.score(pack_features(test))
    assert scored.errors is None
    assert scored.outputs.column("prediction").to_pylist() == estimator.predict(test).tolist()


def test_packed_matrix_is_split_for_steps_before_the_model(tmp_path: Any) -> None:
    from lakeinfer.schema import pack_features

    estimator = _fitted(RandomForestClassifier(n_estimators=3, random_state=0))
    runtime = _runtime(tmp_path, estimator, steps=({"op": "cast", "columns": {"f0": "float64"}}, "model"))
    test, _ = _data(rows=6, seed=5)
    scored = runtime.score(pack_features(test))
    assert scored.outputs.column("prediction").to_pylist() == estimator.predict(test).tolist()


def test_packed_float32_model_names_a_value_beyond_its_range(tmp_path: Any) -> None:
    xgb = pytest.importorskip("xgboost")
    from lakeinfer.runtime import ModelRuntime, PipelineRecipe
    from lakeinfer.schema import pack_features

    x, y = _data()
    booster = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(x, (y == "yes").astype(int)), 5)
    path = tmp_path / "m.ubj"
    booster.save_model(path)
    runtime = ModelRuntime(PipelineRecipe(model_path=str(path), features=tuple(NAMES)))
    test, _ = _data(rows=4, seed=5)
    test[1, 2], test[3, 0] = 1e39, float("nan")
    packed, split = runtime.score(pack_features(test)), runtime.score(_batch(test))
    assert packed.errors == split.errors == [None, "feature column 'f2' holds 1e+39, beyond the model's float32 range",
                                             None, None]
    assert packed.outputs.equals(split.outputs)


@pytest.mark.parametrize("classes", [2, 3])
def test_onnx_zipmap_gives_the_probabilities_of_the_graph_without_it(tmp_path: Any, classes: int) -> None:
    skl2onnx = pytest.importorskip("skl2onnx")
    from lakeinfer.models import load_model

    x, y = _data(classes=classes)
    forest = RandomForestClassifier(n_estimators=5, random_state=0).fit(x.astype(np.float32), y)
    outputs = {}
    for zipmap in (True, False):
        path = tmp_path / f"m{zipmap}.onnx"
        path.write_bytes(skl2onnx.to_onnx(forest, x[:1].astype(np.float32),
                                          options={"zipmap": zipmap}).SerializeToString())
        outputs[zipmap] = load_model(str(path), features=NAMES).predict(_batch(_data(rows=50, seed=3)[0]))
    assert outputs[True].equals(outputs[False])
    assert outputs[True].column("prediction").to_pylist() == forest.predict(_data(rows=50, seed=3)[0]).tolist()


@pytest.mark.parametrize("objective", ["binary:logistic", "multi:softprob", "multi:softmax", "reg:squarederror",
                                       "binary:logitraw"])
def test_xgboost_dense_call_gives_inplace_predicts_bits(tmp_path: Any, objective: str) -> None:
    import xgboost as xgb

    from lakeinfer.models.xgboost import XGBoostModel

    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, WIDTH)).astype(np.float32)
    x[::7, 2] = np.nan  # the default branch, as inplace_predict takes it
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int) if objective.startswith("multi") else x[:, 0] > 0
    params = {"objective": objective, "max_depth": 4, "nthread": 1}
    if objective.startswith("multi"):
        params["num_class"] = 3
    booster = xgb.train(params, xgb.DMatrix(x, y.astype(np.float32)), 20)
    path = tmp_path / "model.ubj"
    booster.save_model(path)
    model = XGBoostModel(str(path), features=NAMES)
    assert model._dense is not None  # the C call, not inplace_predict, gives what is checked below
    for rows in (x[:1], x[:2], x):
        raw = model._dense(np.ascontiguousarray(rows))
        expected = booster.inplace_predict(rows)
        assert raw.dtype == expected.dtype and raw.shape == expected.shape
        np.testing.assert_array_equal(raw, expected)
    batch = pa.RecordBatch.from_arrays([pa.array(x[:, j]) for j in range(WIDTH)], names=NAMES)
    out = model.predict(batch)
    if objective == "multi:softprob":
        np.testing.assert_array_equal(np.array(out.column("probability").to_pylist()), booster.inplace_predict(x))
    elif objective == "reg:squarederror":
        np.testing.assert_array_equal(out.column("prediction").to_numpy(), booster.inplace_predict(x))
