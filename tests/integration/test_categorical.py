"""String and categorical features in every flavor that learns them, in every mode: each compared
with the framework's own predictions on the same rows."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

import lakeinfer
from tests.conftest import read_output, run_cli
from tests.kafka_helpers import (
    consume,
    create_topics,
    produce,
    stream_cli,
)
from tests.serving import serving

NUMBERS = ["a", "b"]
TEXT = ["plan", "region"]
COLUMNS = ["a", "plan", "region", "b"]
PLANS = ["basic", "pro", "team"]
REGIONS = ["eu", "us", "apac", "latam"]


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": np.arange(rows, dtype=np.int64),
        "a": np.round(rng.normal(size=rows) * 1024) / 1024,
        "plan": rng.choice(PLANS, rows).astype(object),
        "region": rng.choice(REGIONS, rows).astype(object),
        "b": np.round(rng.normal(size=rows) * 1024) / 1024,
    })
    return frame


def target(frame: pd.DataFrame) -> np.ndarray:
    return (((frame["a"] > 0) ^ (frame["plan"] == "pro")) | (frame["region"] == "eu")).astype(int).to_numpy()


def as_categories(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(**{c: frame[c].astype("category") for c in TEXT})


@dataclass
class Flavor:
    name: str
    path: Path
    model: Any
    categorical: bool  # fitted on pandas category columns (else on strings)
    cli: tuple[str, ...] = ()

    def expected(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The framework's own predict on the rows as a user would read them with pandas."""
        x = frame[COLUMNS]
        x = as_categories(x) if self.categorical else x
        return np.asarray(self.model.predict(x)), np.asarray(self.model.predict_proba(x))


class OnnxRunner:
    """onnxruntime itself, over a graph with one input per column (skl2onnx's export)."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def _run(self, x: pd.DataFrame) -> list[Any]:
        feeds = {c: x[[c]].to_numpy(object if c in TEXT else np.float32) for c in COLUMNS}
        return self.session.run(None, feeds)  # type: ignore[no-any-return]

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(self._run(x)[0])

    def predict_proba(self, x: pd.DataFrame) -> np.ndarray:
        return np.asarray(self._run(x)[1])


@pytest.fixture(scope="module")
def flavors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Flavor]:
    import lightgbm
    import xgboost
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    folder = tmp_path_factory.mktemp("categorical-models")
    train = make_frame(800, seed=1)
    x, y = train[COLUMNS], target(train)
    out: dict[str, Flavor] = {}
    pipeline = Pipeline([
        ("prep", ColumnTransformer([("onehot", OneHotEncoder(handle_unknown="error"), TEXT),
                                    ("scale", StandardScaler(), NUMBERS)])),
        ("lr", LogisticRegression(max_iter=500)),
    ]).fit(x, y)
    joblib.dump(pipeline, folder / "onehot.joblib")
    out["onehot"] = Flavor("onehot", folder / "onehot.joblib", pipeline, False, ("--trust-model",))
    # the same pipeline as ONNX, one graph input per column: strings as string tensors
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType

    types = [(c, StringTensorType([None, 1]) if c in TEXT else FloatTensorType([None, 1])) for c in COLUMNS]
    graph = convert_sklearn(pipeline, initial_types=types, options={id(pipeline): {"zipmap": False}})
    (folder / "onehot.onnx").write_bytes(graph.SerializeToString())
    out["onnx"] = Flavor("onnx", folder / "onehot.onnx", OnnxRunner(folder / "onehot.onnx"), False)
    hgb = HistGradientBoostingClassifier(categorical_features="from_dtype", max_iter=30, random_state=0)
    hgb.fit(as_categories(x), y)
    joblib.dump(hgb, folder / "hgb.joblib")
    out["hgb"] = Flavor("hgb", folder / "hgb.joblib", hgb, True, ("--trust-model",))
    xgb = xgboost.XGBClassifier(enable_categorical=True, n_estimators=30, tree_method="hist")
    xgb.fit(as_categories(x), y)
    xgb.get_booster().save_model(folder / "xgb.json")
    out["xgb"] = Flavor("xgb", folder / "xgb.json", xgb, True)
    lgb = lightgbm.LGBMClassifier(n_estimators=30, verbose=-1, min_child_samples=5).fit(as_categories(x), y)
    lgb.booster_.save_model(folder / "lgb.txt")
    out["lgb"] = Flavor("lgb", folder / "lgb.txt", lgb, True)
    return out


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(300, seed=2)


@pytest.fixture(scope="module")
def files(frame: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("categorical-data")
    table = pa.Table.from_pandas(frame, preserve_index=False)
    paths = {"parquet": folder / "plain.parquet", "dictionary": folder / "dictionary.parquet",
             "csv": folder / "rows.csv", "jsonl": folder / "rows.jsonl"}
    pq.write_table(table, paths["parquet"], row_group_size=64)
    # dictionary-encoded, each dictionary in an order unlike the training order (reversed)
    encoded = table
    for name, values in (("plan", PLANS), ("region", REGIONS)):
        order = values[::-1]
        codes = pa.array([order.index(v) for v in frame[name]], pa.int32())
        encoded = encoded.set_column(encoded.schema.get_field_index(name), name,
                                     pa.DictionaryArray.from_arrays(codes, pa.array(order)))
    pq.write_table(encoded, paths["dictionary"], row_group_size=64)
    assert pq.read_table(paths["dictionary"]).column("plan").type == pa.dictionary(pa.int32(), pa.string())
    pcsv.write_csv(table, paths["csv"])
    with open(paths["jsonl"], "w") as fh:
        for row in table.to_pylist():
            fh.write(json.dumps(row) + "\n")
    return paths


def _compare(mode: str, predictions: Any, probabilities: Any, labels: np.ndarray, proba: np.ndarray) -> None:
    np.testing.assert_array_equal(np.asarray(predictions), labels, err_msg=mode)
    np.testing.assert_allclose(np.stack(list(probabilities)), proba, rtol=0, atol=1e-6, err_msg=mode)


@pytest.mark.parametrize("name", ["onehot", "hgb", "xgb", "lgb", "onnx"])
def test_local_engine_every_format(name: str, flavors: dict[str, Flavor], files: dict[str, Path],
                                   frame: pd.DataFrame, tmp_path: Path) -> None:
    flavor = flavors[name]
    labels, proba = flavor.expected(frame)
    for fmt, path in files.items():
        out = tmp_path / fmt
        result = run_cli("batch", "--model", flavor.path, *flavor.cli, "--input", path, "--output", out,
                         "--keep", "id", "--quiet") if fmt == "parquet" else None
        if result is not None:
            assert result.returncode == 0, result.stderr
        else:
            lakeinfer.batch(str(path), str(out), model=str(flavor.path), trust=True, keep=["id"])
        scored = read_output(out)
        _compare(f"{name} {fmt}", scored["prediction"], scored["probability"], labels, proba)


def test_worker_processes_and_unseen_categories(flavors: dict[str, Flavor], tmp_path: Path) -> None:
    frame = make_frame(200, seed=3)
    frame.loc[[5, 17], "plan"] = "enterprise"  # a plan none of the models has seen
    frame.loc[[8], "region"] = "mars"
    data = tmp_path / "unseen.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data, row_group_size=50)
    for name in ("hgb", "xgb", "lgb"):  # each takes an unseen category by its own rule
        flavor = flavors[name]
        labels, proba = flavor.expected(frame)
        lakeinfer.batch(str(data), str(tmp_path / name), model=str(flavor.path), trust=True, keep=["id"],
                        workers=2, unit_rows=50)
        scored = read_output(tmp_path / name)
        _compare(f"{name} unseen", scored["prediction"], scored["probability"], labels, proba)
    # the one-hot encoder refuses unknown categories: a bad record naming the column, row and value
    onehot = flavors["onehot"]
    with pytest.raises(lakeinfer.BadRecordError, match=r"row 5: feature column 'plan' holds 'enterprise', "
                                                       r"a category the model does not know"):
        lakeinfer.batch(str(data), str(tmp_path / "refused"), model=str(onehot.path), trust=True)
    summary = lakeinfer.batch(str(data), str(tmp_path / "skipped"), model=str(onehot.path), trust=True,
                              keep=["id"], on_error="skip")
    assert (summary.rows, summary.rows_skipped) == (197, 3)
    kept = frame.drop(index=[5, 8, 17])
    labels, proba = onehot.expected(kept)
    scored = read_output(tmp_path / "skipped")
    assert scored["id"].tolist() == kept["id"].tolist()
    _compare("onehot skip", scored["prediction"], scored["probability"], labels, proba)


def test_nulls_in_categories_follow_the_missing_value_rule(flavors: dict[str, Flavor], tmp_path: Path) -> None:
    frame = make_frame(100, seed=4)
    frame.loc[[3], "plan"] = None
    data = tmp_path / "nulls.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    # LightGBM takes a missing category as missing: the framework's own answer
    lgb = flavors["lgb"]
    labels, proba = lgb.expected(frame)
    lakeinfer.batch(str(data), str(tmp_path / "lgb"), model=str(lgb.path), keep=["id"])
    scored = read_output(tmp_path / "lgb")
    _compare("lgb null", scored["prediction"], scored["probability"], labels, proba)
    # the one-hot pipeline does not take missing values: a bad record
    with pytest.raises(lakeinfer.BadRecordError, match=r"row 3: feature column 'plan' is null"):
        lakeinfer.batch(str(data), str(tmp_path / "onehot"), model=str(flavors["onehot"].path), trust=True)


def test_a_number_where_a_category_is_expected(flavors: dict[str, Flavor], tmp_path: Path) -> None:
    frame = make_frame(20, seed=5)
    frame["plan"] = np.arange(20)
    data = tmp_path / "numbers.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    result = run_cli("batch", "--model", flavors["lgb"].path, "--input", data, "--output", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"lakeinfer: error: input file {data}: feature column 'plan' has type int64; the model expects a "
        "category (one of 'basic', 'pro', 'team')"]


def test_inspect_shows_feature_types_and_categories(flavors: dict[str, Flavor]) -> None:
    onnx = {f["name"]: f["type"] for f in lakeinfer.inspect_model(str(flavors["onnx"].path))["feature_types"]}
    assert onnx == {"a": "number", "plan": "string", "region": "string", "b": "number"}
    for name, kind in (("onehot", "string"), ("hgb", "category"), ("xgb", "category"), ("lgb", "category")):
        flavor = flavors[name]
        info = lakeinfer.inspect_model(str(flavor.path), trust=True)
        types = {f["name"]: f for f in info["feature_types"]}
        assert [f["name"] for f in info["feature_types"]] == COLUMNS, name
        assert types["a"] == {"name": "a", "type": "number"}
        assert types["plan"] == {"name": "plan", "type": kind, "categories": sorted(PLANS)}, name
        assert types["region"]["categories"] == sorted(REGIONS), name
        shown = run_cli("inspect", "--model", flavor.path, *flavor.cli)
        assert shown.returncode == 0, shown.stderr
        assert f"  plan: {kind} {sorted(PLANS)}" in shown.stdout


def test_spark_engine(flavors: dict[str, Flavor], files: dict[str, Path], frame: pd.DataFrame) -> None:
    from lakeinfer.spark.scoring import score
    from lakeinfer.spark.session import session

    spark = session("local[1]", {"spark.sql.shuffle.partitions": "1"})
    try:
        df = spark.read.parquet(str(files["dictionary"]))
        for name, flavor in flavors.items():
            labels, proba = flavor.expected(frame)
            rows = score(df, str(flavor.path), keep=["id"], trust=True).toArrow().sort_by("id")
            _compare(f"{name} spark", rows.column("prediction").to_pylist(),
                     rows.column("probability").to_pylist(), labels, proba)
    finally:
        spark.stop()


@pytest.mark.parametrize("name", ["onehot", "hgb", "xgb", "lgb", "onnx"])
def test_server_records_and_v2_bytes(name: str, flavors: dict[str, Flavor], frame: pd.DataFrame) -> None:
    import tritonclient.http as triton

    flavor = flavors[name]
    rows = frame.iloc[:40]
    labels, proba = flavor.expected(rows)
    with serving("--model", flavor.path, *flavor.cli, "--name", "m") as server:
        answer = httpx.post(f"{server.url}/v1/models/m/predict",
                            json={"instances": rows[COLUMNS].to_dict(orient="records")}, timeout=30)
        assert answer.status_code == 200, answer.text
        served = answer.json()["predictions"]
        _compare(f"{name} records", [p["prediction"] for p in served], [p["probability"] for p in served],
                 labels, proba)
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        meta = {i["name"]: i["datatype"] for i in client.get_model_metadata("m")["inputs"]}
        number = "FP32" if name in ("xgb", "onnx") else "FP64"  # these compute in float32
        assert meta == {"a": number, "plan": "BYTES", "region": "BYTES", "b": number}
        inputs = []
        for column in COLUMNS:
            values = rows[column].to_numpy(object if column in TEXT else np.float64)
            tensor = triton.InferInput(column, [len(rows)], "BYTES" if column in TEXT else "FP64")
            tensor.set_data_from_numpy(values, binary_data=column in TEXT)
            inputs.append(tensor)
        result = client.infer("m", inputs)
        _compare(f"{name} v2", result.as_numpy("prediction"), result.as_numpy("probability"), labels, proba)


def test_stream(broker: str, flavors: dict[str, Flavor], frame: pd.DataFrame) -> None:
    rows = frame.iloc[:60]
    messages = [(str(i).encode(), json.dumps(r).encode())
                for i, r in zip(rows["id"], rows[["id", *COLUMNS]].to_dict(orient="records"), strict=True)]
    for name, flavor in flavors.items():
        source, sink = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
        create_topics(broker, source, sink, partitions=1)
        produce(broker, source, messages)
        proc = stream_cli("--model", flavor.path, *flavor.cli, "--bootstrap-servers", broker,
                          "--input-topic", source, "--output-topic", sink, "--group-id", f"g-{source}",
                          "--keep", "id")
        try:
            outputs = consume(broker, sink, expect=len(rows), timeout=90, settle=0.5)
        finally:
            proc.terminate()
            proc.communicate(timeout=60)
        got = sorted((json.loads(m.value()) for m in outputs), key=lambda v: v["id"])
        assert [v["id"] for v in got] == rows["id"].tolist(), name
        labels, proba = flavor.expected(rows)
        _compare(f"{name} stream", [v["prediction"] for v in got], [v["probability"] for v in got], labels, proba)
