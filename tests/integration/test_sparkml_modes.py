"""Spark ML PipelineModels without a JVM in every mode: the local engine, the server (v2 and
records) and the Kafka stream give what Spark's own ``transform`` gives on the same rows; a model
saved by a newer Spark loads (an unknown default param noted, an unknown set param refused) and
the Spark engine names Spark's own reason when it cannot load one."""

from __future__ import annotations

import glob
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.kafka_helpers import create_topics, produce, stream_cli
from tests.serving import serving
from tests.sparkml_helpers import (
    ID,
    assert_same,
    fit_save,
    frame_of,
    local_scores,
    spark_scores,
    spark_session,
)

SCHEMA = "plan string, region string, x double, y double, label double"
INPUTS = ("plan", "region", "x", "y")


def _rows(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "plus", "pro"], n, p=[0.5, 0.3, 0.2])
    region = rng.choice(["north", "south", "east", "west"], n)
    x = np.round(rng.normal(size=n), 6)
    y = np.round(rng.exponential(2.0, n), 6)
    score = x + (plan == "pro") * 1.5 - (region == "east") + 0.3 * y
    label = np.digitize(score, [-0.5, 1.0]).astype(float)  # three classes
    return pd.DataFrame({"plan": plan, "region": region, "x": x, "y": y, "label": label})


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from pyspark.ml.classification import LogisticRegression, RandomForestClassifier
    from pyspark.ml.feature import OneHotEncoder, StandardScaler, StringIndexer, VectorAssembler

    folder = tmp_path_factory.mktemp("sparkml")
    train = frame_of(spark_session(), _rows(600, 1), SCHEMA)
    linear = fit_save([
        StringIndexer(inputCol="plan", outputCol="plan_i", handleInvalid="keep"),
        OneHotEncoder(inputCols=["plan_i"], outputCols=["plan_v"]),
        VectorAssembler(inputCols=["plan_v", "x", "y"], outputCol="raw"),
        StandardScaler(inputCol="raw", outputCol="features", withMean=True),
        LogisticRegression(maxIter=30, regParam=0.01),
    ], train, folder / "linear")
    forest = fit_save([
        StringIndexer(inputCol="region", outputCol="region_i"),  # straight into the trees: categorical splits
        StringIndexer(inputCol="plan", outputCol="plan_i", handleInvalid="skip"),
        VectorAssembler(inputCols=["region_i", "plan_i", "x", "y"], outputCol="features"),
        RandomForestClassifier(numTrees=12, maxDepth=5, seed=3),
    ], train, folder / "forest")
    return {"linear": linear, "forest": forest}


def _test_rows() -> pd.DataFrame:
    rows = _rows(60, 2)
    rows.loc[3, "plan"] = "enterprise"  # unseen: keep in one model, skip in the other
    rows.loc[5, "plan"] = None
    return rows


@pytest.mark.parametrize("name", ["linear", "forest"])
def test_local_engine_equals_spark(spark, models: dict[str, Path], name: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    df = frame_of(spark, _test_rows(), SCHEMA)
    expected = spark_scores(spark, models[name], df)
    if name == "forest":  # handleInvalid='skip' drops the two rows, in Spark and here
        assert 3 not in expected[ID].tolist() and 5 not in expected[ID].tolist()
    assert_same(expected, local_scores(models[name], df, tmp_path))


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as JSON records, a missing value as null (pandas holds a missing string as NaN)."""
    return [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}
            for r in rows[list(INPUTS)].to_dict("records")]


def _v2_inputs(rows: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for name in INPUTS:
        values = rows[name].tolist()
        text = name in ("plan", "region")
        out.append({"name": name, "shape": [len(rows)], "datatype": "BYTES" if text else "FP64", "data": values})
    return out


def test_server_equals_spark(spark, models: dict[str, Path]) -> None:  # type: ignore[no-untyped-def]
    rows = _test_rows().drop(index=[3, 5]).reset_index(drop=True)
    expected = spark_scores(spark, models["forest"], frame_of(spark, rows, SCHEMA))
    with serving("--model", models["forest"], "--name", "forest", "--workers", "1") as server:
        v2 = httpx.post(f"{server.url}/v2/models/forest/infer", json={"inputs": _v2_inputs(rows)}, timeout=30)
        assert v2.status_code == 200, v2.text
        outputs = {o["name"]: o for o in v2.json()["outputs"]}
        got = pd.DataFrame({ID: range(len(rows))})
        for name in expected.columns.drop(ID):
            out = outputs[name]
            data = np.asarray(out["data"], dtype=np.float64)
            got[name] = list(data.reshape(out["shape"])) if len(out["shape"]) == 2 else data
        assert_same(expected, got)

        instances = _records(rows)
        records = httpx.post(f"{server.url}/v1/models/forest/predict", json={"instances": instances}, timeout=30)
        assert records.status_code == 200, records.text
        served = pd.DataFrame(records.json()["predictions"])
        served.insert(0, ID, range(len(rows)))
        assert_same(expected, served)

        # the rows Spark drops or refuses are per-record errors here, naming the row and the column
        bad = _records(_test_rows().loc[[0, 3]])
        refused = httpx.post(f"{server.url}/v1/models/forest/predict", json={"instances": bad}, timeout=30)
        assert refused.status_code == 400
        assert refused.json()["error"].startswith("instances[1]: column 'plan' is 'enterprise'"), refused.text


def test_stream_equals_spark(spark, models: dict[str, Path], broker: str) -> None:  # type: ignore[no-untyped-def]
    from confluent_kafka import Consumer

    rows = _test_rows()
    expected = spark_scores(spark, models["forest"], frame_of(spark, rows, SCHEMA))
    tag = uuid.uuid4().hex[:8]
    topics = (f"in-{tag}", f"out-{tag}", f"dlq-{tag}")
    create_topics(broker, *topics, partitions=2)
    stream = stream_cli("--model", models["forest"], "--bootstrap-servers", broker, "--input-topic", topics[0],
                        "--output-topic", topics[1], "--dead-letter-topic", topics[2], "--group-id", f"g-{tag}",
                        "--keep", ID, "--max-batch-size", "16")
    try:
        produce(broker, topics[0], [(str(i).encode(), json.dumps({ID: i, **r}).encode())
                                    for i, r in enumerate(_records(rows))])
        consumer = Consumer({"bootstrap.servers": broker, "group.id": f"check-{tag}",
                             "auto.offset.reset": "earliest"})
        consumer.subscribe([topics[1], topics[2]])
        got: dict[int, tuple[str, dict[str, Any]]] = {}
        deadline = time.monotonic() + 90
        while len(got) < len(rows) and time.monotonic() < deadline:
            assert stream.poll() is None, stream.stderr.read() if stream.stderr else ""
            for m in consumer.consume(100, 0.5):
                if m.error() is None:
                    got[int(m.key())] = (m.topic(), json.loads(m.value()))
        consumer.close()
    finally:
        stream.terminate()
        stream.communicate(timeout=60)
    assert len(got) == len(rows)
    dead = {i for i, (topic, _) in got.items() if topic == topics[2]}
    assert dead == {3, 5}  # what Spark's handleInvalid='skip' drops, the stream dead-letters, with the reason
    assert "column 'plan' is null" in got[5][1]["error"]
    scored = pd.DataFrame([dict(v, **{ID: i}) for i, (t, v) in sorted(got.items()) if i not in dead])
    assert_same(expected, scored)


def _saved_by_newer(source: Path, target: Path, *, stage: str, param: str, explicit: bool) -> Path:
    """A copy of a model folder as a newer Spark would write it: another version, one more param."""
    shutil.copytree(source, target)
    for crc in glob.glob(str(target / "**" / ".*.crc"), recursive=True):
        Path(crc).unlink()  # Hadoop checks a .crc beside each file it reads
    for part in glob.glob(str(target / "**" / "metadata" / "part-*"), recursive=True):
        meta = json.loads(Path(part).read_text())
        meta["sparkVersion"] = "4.3.0"
        if stage in meta["class"]:
            meta["paramMap" if explicit else "defaultParamMap"][param] = True
        Path(part).write_text(json.dumps(meta) + "\n")
    return target


def test_model_saved_by_a_newer_spark(spark, models: dict[str, Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    newer = _saved_by_newer(models["linear"], tmp_path / "newer", stage="LogisticRegression",
                            param="pruneTree", explicit=False)
    df = frame_of(spark, _test_rows(), SCHEMA)
    assert_same(spark_scores(spark, models["linear"], df), local_scores(newer, df, tmp_path))
    shown = run_cli("inspect", "--model", newer)
    assert shown.returncode == 0, shown.stderr
    assert "stages (saved by Spark 4.3.0):" in shown.stdout
    assert "param 'pruneTree' not known to this reader, ignored" in shown.stdout

    # this Spark itself cannot load it: the Spark engine scores it with lakeinfer's reader, and says so
    rows = tmp_path / "rows.parquet"
    _test_rows().to_parquet(rows)
    on_spark = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", newer, "--input", rows,
                       "--output", tmp_path / "out")
    assert on_spark.returncode == 0, on_spark.stderr
    note = on_spark.stdout.strip().splitlines()[-1]
    assert note.startswith("note: Spark cannot load the Spark ML model") and "Param pruneTree does not exist" in note
    assert note.endswith("scored with lakeinfer's own reader of Spark ML models"), note

    refused = _saved_by_newer(models["linear"], tmp_path / "refused", stage="LogisticRegression",
                              param="calibrateMargins", explicit=True)
    shown = run_cli("inspect", "--model", refused)
    assert shown.returncode == 1
    assert shown.stderr.strip() == (
        f"lakeinfer: error: LogisticRegressionModel {_uid(refused, 'LogisticRegression')} (saved by Spark 4.3.0) "
        "sets param 'calibrateMargins' = True, which this reader does not know and which may change predictions; "
        "score this model with --engine spark")


def _uid(folder: Path, stage: str) -> str:
    for part in glob.glob(str(folder / "stages" / "*" / "metadata" / "part-*")):
        meta = json.loads(Path(part).read_text())
        if stage in meta["class"]:
            return str(meta["uid"])
    raise AssertionError(f"no {stage} stage in {folder}")


