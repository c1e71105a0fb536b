"""H2O-3 MOJOs scored without a JVM, against H2O's own in-cluster predict on the same rows.

H2O itself (the ``h2o`` client starts its JVM, once for the module) trains small GBM, DRF, XRT and
GLM models on numeric and categorical columns with NAs in both; the test rows add NAs and levels
unseen in training. lakeinfer's batch and serve outputs must equal H2O's: the same labels,
probabilities and values within 1e-6. Numbers are whole (as float64): every path (CSV into H2O,
Parquet, JSON) carries them exactly, so H2O and lakeinfer see the same bits.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakeinfer
from lakeinfer.models.h2o import FEW_ROWS
from tests.conftest import read_output, run_cli
from tests.serving import free_port, serving

PLANS = ["basic", "free", "pro", "team"]
REGIONS = ["asia", "eu", "us"]
CITIES = [f"city{i:02d}" for i in range(60)]  # more than 32 levels: bitsets with an offset and a length
FEATURES = ["a", "b", "plan", "region", "city"]
CLASSES = ["x", "y", "z"]


def make_frame(rows: int, seed: int, *, unseen: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(-20, 21, rows).astype(np.float64)
    b = rng.integers(0, 50, rows).astype(np.float64)
    plan = rng.choice(PLANS + (["enterprise"] if unseen else []), rows).astype(object)
    region = rng.choice(REGIONS + (["mars"] if unseen else []), rows).astype(object)
    city = rng.choice(CITIES + (["atlantis"] if unseen else []), rows).astype(object)
    a[rng.choice(rows, rows // 12, replace=False)] = np.nan
    plan[rng.choice(rows, rows // 12, replace=False)] = None
    region[rng.choice(rows, rows // 20, replace=False)] = None
    city[rng.choice(rows, rows // 25, replace=False)] = None
    lucky = np.isin(city, CITIES[::3])
    score = np.nan_to_num(a) / 8 + (plan == "pro") - (region == "eu") + lucky + rng.normal(size=rows) * 0.6
    frame = pd.DataFrame({"id": np.arange(rows, dtype=np.int64), "a": a, "b": b, "plan": plan, "region": region,
                          "city": city})
    frame["y"] = np.where(score > 0.3, "yes", "no")
    frame["k"] = np.array(CLASSES)[np.digitize(score + b / 40, [0.0, 1.2])]
    frame["r"] = np.nan_to_num(a) * 1.5 + b / 4 + (plan == "team") * 3 + rng.normal(size=rows)
    frame["n"] = rng.poisson(np.exp(np.nan_to_num(a) / 20 + lucky)).astype(np.float64)  # counts: a log link
    return frame


@dataclass
class Mojo:
    path: Path
    target: str
    labels: np.ndarray  # H2O's predict column: labels (classifiers) or values (regression)
    probability: np.ndarray | None  # H2O's class probabilities, in domain order


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    return make_frame(240, seed=7, unseen=True)


def _upload(h2o: Any, frame: pd.DataFrame, folder: Path, name: str) -> Any:
    path = folder / f"{name}.csv"
    frame.to_csv(path, index=False, na_rep="")
    types = {c: "enum" for c in ("plan", "region", "city", "y", "k")}
    types.update({c: "numeric" for c in ("id", "a", "b", "r", "n")})
    return h2o.upload_file(str(path), col_types=types, na_strings=[""])


@pytest.fixture(scope="module")
def h2o_models(tmp_path_factory: pytest.TempPathFactory, test_rows: pd.DataFrame) -> Iterator[dict[str, Mojo]]:
    os.environ["DO_NOT_TRACK"] = "1"
    import h2o
    from h2o.estimators import (
        H2ODeepLearningEstimator,
        H2OGeneralizedLinearEstimator,
        H2OGradientBoostingEstimator,
        H2OKMeansEstimator,
        H2ORandomForestEstimator,
    )

    folder = tmp_path_factory.mktemp("h2o")
    h2o.init(port=free_port(), nthreads=2, max_mem_size="1G", verbose=False, name=f"lakeinfer-{os.getpid()}")
    h2o.no_progress()
    try:
        train = _upload(h2o, make_frame(400, seed=1), folder, "train")
        test = _upload(h2o, test_rows, folder, "test")
        specs = {
            "gbm_binomial": (H2OGradientBoostingEstimator(ntrees=20, max_depth=4, seed=1), "y"),
            "gbm_regression": (H2OGradientBoostingEstimator(ntrees=15, max_depth=4, seed=1), "r"),
            "gbm_multinomial": (H2OGradientBoostingEstimator(ntrees=8, max_depth=3, seed=1), "k"),
            # few deep trees on half samples: leaves of pure classes, so some rows tie between classes
            "drf_multinomial": (H2ORandomForestEstimator(ntrees=4, max_depth=8, seed=3, sample_rate=0.5), "k"),
            "drf_binomial": (H2ORandomForestEstimator(ntrees=10, max_depth=5, seed=1), "y"),
            "xrt_regression": (H2ORandomForestEstimator(ntrees=10, max_depth=5, seed=1,
                                                        histogram_type="Random"), "r"),
            # H2O codes categories without their first level unless regularized (lambda > 0)
            "glm_binomial": (H2OGeneralizedLinearEstimator(family="binomial", lambda_=0.0), "y"),
            "glm_binomial_all_levels": (H2OGeneralizedLinearEstimator(family="binomial", lambda_=0.001), "y"),
            "glm_skip_missing": (H2OGeneralizedLinearEstimator(family="binomial", lambda_=0.001,
                                                               missing_values_handling="Skip"), "y"),
            "glm_multinomial": (H2OGeneralizedLinearEstimator(family="multinomial", lambda_=0.001), "k"),
            "glm_regression": (H2OGeneralizedLinearEstimator(family="gaussian"), "r"),
            "gbm_poisson": (H2OGradientBoostingEstimator(ntrees=10, max_depth=3, seed=1, distribution="poisson"), "n"),
            "glm_poisson": (H2OGeneralizedLinearEstimator(family="poisson", lambda_=0.0), "n"),
            # no numpy scorer: the JVM tier (h2o-genmodel.jar saved next to the MOJO)
            "deeplearning": (H2ODeepLearningEstimator(hidden=[4], epochs=1, seed=1, reproducible=True), "y"),
            "kmeans": (H2OKMeansEstimator(k=2, seed=1), None),
            "gbm_one_hot": (H2OGradientBoostingEstimator(ntrees=5, max_depth=3, seed=1,
                                                         categorical_encoding="one_hot_explicit"), "k"),
        }
        models: dict[str, Mojo] = {}
        for name, (estimator, target) in specs.items():
            estimator.train(x=FEATURES, y=target, training_frame=train)
            if name in ("deeplearning", "kmeans", "gbm_one_hot"):
                (folder / name).mkdir()
                path = Path(estimator.download_mojo(str(folder / name), get_genmodel_jar=True))
                if target is None:
                    models[name] = Mojo(path, "", np.empty(0), None)  # refused: nothing to compare
                    continue
            else:
                path = Path(estimator.download_mojo(str(folder / f"{name}.zip")))
            with warnings.catch_warnings():  # H2O warns of the test rows' unseen levels: there on purpose
                warnings.filterwarnings("ignore", "Test/Validation dataset column")
                predicted = estimator.predict(test).as_data_frame(use_multi_thread=True)
            assert target is not None
            if target in ("r", "n"):
                models[name] = Mojo(path, target, predicted["predict"].to_numpy(np.float64), None)
            else:
                domain = train[target].levels()[0]
                models[name] = Mojo(path, target, predicted["predict"].astype(str).to_numpy(),
                                    predicted[domain].to_numpy(np.float64))
        yield models
    finally:
        h2o.cluster().shutdown()


SCORED = ["gbm_binomial", "gbm_regression", "gbm_multinomial", "drf_multinomial", "drf_binomial",
          "xrt_regression", "glm_binomial", "glm_binomial_all_levels", "glm_multinomial", "glm_regression",
          "gbm_poisson", "glm_poisson"]


def _compare(what: str, mojo: Mojo, predictions: Any, probabilities: Any = None) -> None:
    if mojo.probability is None:
        np.testing.assert_allclose(np.asarray(predictions, dtype=np.float64), mojo.labels, rtol=0, atol=1e-6,
                                   err_msg=what)
        return
    np.testing.assert_array_equal(np.asarray(predictions, dtype=object), mojo.labels.astype(object), err_msg=what)
    np.testing.assert_allclose(np.stack([np.asarray(p, dtype=np.float64) for p in probabilities]),
                               mojo.probability, rtol=0, atol=1e-6, err_msg=what)


def _parquet(frame: pd.DataFrame, path: Path, *, dictionary: bool = False) -> Path:
    table = pa.Table.from_pandas(frame[["id", *FEATURES]], preserve_index=False)
    if dictionary:  # categories as Arrow dictionaries, their values in an order of their own
        for name in ("plan", "region", "city"):
            column = table.column(name).combine_chunks()
            values = sorted({v for v in column.to_pylist() if v is not None}, reverse=True)
            indices = pa.array([values.index(v) if v is not None else None for v in column.to_pylist()], pa.int32())
            table = table.set_column(table.schema.get_field_index(name), name,
                                     pa.DictionaryArray.from_arrays(indices, pa.array(values)))
    pq.write_table(table, path, row_group_size=60)
    return path


def _java_descendants(pid: int) -> set[int]:
    found = set()
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "java" in child.name().lower() or any("java" in part for part in child.cmdline()[:1]):
                found.add(child.pid)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("name", SCORED)
def test_batch_equals_h2o_predict(name: str, h2o_models: dict[str, Mojo], test_rows: pd.DataFrame,
                                  tmp_path: Path) -> None:
    mojo = h2o_models[name]
    before = _java_descendants(os.getpid())  # the test's own H2O cluster, started by the h2o client
    for dictionary in (False, True):
        data = _parquet(test_rows, tmp_path / f"rows-{dictionary}.parquet", dictionary=dictionary)
        out = tmp_path / f"out-{dictionary}"
        lakeinfer.batch(str(data), str(out), model=str(mojo.path), keep=["id"])
        scored = read_output(out)
        assert scored["id"].tolist() == test_rows["id"].tolist()
        _compare(f"{name} dictionary={dictionary}", mojo, scored["prediction"],
                 scored["probability"] if mojo.probability is not None else None)
    assert _java_descendants(os.getpid()) == before  # lakeinfer started no JVM


def test_glm_codings_both_covered(h2o_models: dict[str, Mojo]) -> None:
    import zipfile

    flags = {}
    for name in ("glm_binomial", "glm_binomial_all_levels"):
        with zipfile.ZipFile(h2o_models[name].path) as archive:
            flags[name] = "use_all_factor_levels = true" in archive.read("model.ini").decode()
    assert flags == {"glm_binomial": False, "glm_binomial_all_levels": True}


def test_glm_without_mean_imputation_refuses_missing_values(h2o_models: dict[str, Mojo], test_rows: pd.DataFrame,
                                                            tmp_path: Path) -> None:
    """A GLM trained with missing_values_handling="Skip" cannot take a NA or an unseen level: a bad
    record naming the column; skipped, the other rows equal H2O's predict."""
    import zipfile

    mojo = h2o_models["glm_skip_missing"]
    with zipfile.ZipFile(mojo.path) as archive:
        assert "mean_imputation = false" in archive.read("model.ini").decode()
    data = _parquet(test_rows, tmp_path / "rows.parquet")
    features = test_rows[FEATURES]
    unseen = features["plan"].eq("enterprise") | features["region"].eq("mars") | features["city"].eq("atlantis")
    bad = features.isna().any(axis=1) | unseen
    first = int(np.flatnonzero(bad.to_numpy())[0])
    with pytest.raises(lakeinfer.BadRecordError, match=rf"row {first}: feature column '\w+' (is null|is NaN|holds)"):
        lakeinfer.batch(str(data), str(tmp_path / "refused"), model=str(mojo.path))
    summary = lakeinfer.batch(str(data), str(tmp_path / "skipped"), model=str(mojo.path), keep=["id"],
                              on_error="skip")
    assert summary.rows_skipped == int(bad.sum())
    scored = read_output(tmp_path / "skipped")
    kept = np.flatnonzero(~bad.to_numpy())
    assert scored["id"].tolist() == test_rows["id"].iloc[kept].tolist()
    assert mojo.probability is not None
    _compare("glm skip", Mojo(mojo.path, mojo.target, mojo.labels[kept], mojo.probability[kept]),
             scored["prediction"], scored["probability"])


def test_the_rows_include_ties_and_unseen_levels(h2o_models: dict[str, Mojo], test_rows: pd.DataFrame) -> None:
    """The tie-break (H2O's seeded draw) and unseen levels are exercised, not only possible."""
    p = h2o_models["drf_multinomial"].probability
    assert p is not None
    tied = (p == p.max(axis=1, keepdims=True)).sum(axis=1) > 1
    unseen = test_rows["plan"].eq("enterprise") | test_rows["region"].eq("mars") | test_rows["city"].eq("atlantis")
    assert tied.sum() >= 2 and (tied & unseen).any() and (tied & ~unseen).any()


def test_cli_batch_worker_processes_no_jvm(h2o_models: dict[str, Mojo], test_rows: pd.DataFrame,
                                           tmp_path: Path) -> None:
    data = _parquet(test_rows, tmp_path / "rows.parquet")
    for name in ("gbm_binomial", "drf_multinomial", "glm_binomial"):
        mojo = h2o_models[name]
        out = tmp_path / name
        result = run_cli("batch", "--model", str(mojo.path), "--input", str(data), "--output", str(out), "--keep", "id",
                         "--workers", "2", "--quiet")
        assert result.returncode == 0, result.stderr
        scored = read_output(out)
        _compare(f"{name} cli", mojo, scored["prediction"], scored["probability"])
    assert "java" not in result.stderr.lower()


def test_serve_equals_h2o_predict_without_a_jvm(h2o_models: dict[str, Mojo], test_rows: pd.DataFrame) -> None:
    rows = test_rows[FEATURES].astype(object).where(test_rows[FEATURES].notna(), None)
    records = rows.to_dict(orient="records")
    for name in ("gbm_regression", "drf_multinomial", "glm_binomial"):
        mojo = h2o_models[name]
        with serving("--model", mojo.path, "--name", "m", "--workers", "1") as server:
            answer = httpx.post(f"{server.url}/v1/models/m/predict", json={"instances": records}, timeout=60)
            assert answer.status_code == 200, answer.text
            served = answer.json()["predictions"]
            _compare(f"{name} records", mojo, [p["prediction"] for p in served],
                     [p["probability"] for p in served] if mojo.probability is not None else None)
            # and in requests of a few rows (levels coded by a dict, not Arrow's kernels): NAs and unseen levels too
            few = [p for at in range(0, len(records), FEW_ROWS - 1)
                   for p in httpx.post(f"{server.url}/v1/models/m/predict", json={"instances": records[at:at + FEW_ROWS - 1]},
                                       timeout=60).json()["predictions"]]
            _compare(f"{name} few-row records", mojo, [p["prediction"] for p in few],
                     [p["probability"] for p in few] if mojo.probability is not None else None)
            # one row at a time, over the v2 protocol, strings as BYTES
            whole = [i for i, r in enumerate(records) if all(v is not None for v in r.values())]
            for i in whole[:3]:
                inputs = [{"name": c, "shape": [1], "datatype": "BYTES" if c in ("plan", "region", "city") else "FP64",
                           "data": [records[i][c]]} for c in FEATURES]
                reply = httpx.post(f"{server.url}/v2/models/m/infer", json={"inputs": inputs}, timeout=30)
                assert reply.status_code == 200, reply.text
                out = {o["name"]: o["data"] for o in reply.json()["outputs"]}
                one = Mojo(mojo.path, mojo.target, mojo.labels[i:i + 1],
                           None if mojo.probability is None else mojo.probability[i:i + 1])
                _compare(f"{name} v2 row {i}", one, out["prediction"],
                         [out["probability"]] if mojo.probability is not None else None)
            server_process = psutil.Process(server.proc.pid)
            assert not _java_descendants(server.proc.pid)
            maps = [m.path for p in (server_process, *server_process.children(recursive=True))
                    for m in p.memory_maps()]
            assert not [m for m in maps if "libjvm" in m]


def test_other_algorithms_on_the_jvm_tier(h2o_models: dict[str, Mojo], test_rows: pd.DataFrame,
                                          tmp_path: Path) -> None:
    """A DeepLearning MOJO, and a GBM of one-hot encoded categories, have no numpy scorer:
    h2o-genmodel scores them, in a java process of the worker's own, equal to H2O's predict."""
    data = _parquet(test_rows, tmp_path / "rows.parquet", dictionary=True)
    for name in ("deeplearning", "gbm_one_hot"):
        mojo = h2o_models[name]
        info = lakeinfer.inspect_model(str(mojo.path))
        assert "java process" in info["extra"]["notes"][0]
        assert sorted(c["name"] for c in info["extra"]["columns"]) == sorted(FEATURES)  # before any encoding
        lakeinfer.batch(str(data), str(tmp_path / name), model=str(mojo.path), keep=["id"], workers=1)
        scored = read_output(tmp_path / name)
        _compare(f"{name} on the JVM tier", mojo, scored["prediction"], scored["probability"])


def test_what_no_tier_scores_is_refused_in_one_line(h2o_models: dict[str, Mojo], test_rows: pd.DataFrame,
                                                    tmp_path: Path) -> None:
    data = _parquet(test_rows, tmp_path / "rows.parquet")
    kmeans = h2o_models["kmeans"]
    with pytest.raises(lakeinfer.ModelLoadError, match=r"holds a K-means model \(algo 'kmeans'\).*a Clustering model"):
        lakeinfer.inspect_model(str(kmeans.path))
    # without a jar for h2o-genmodel the DeepLearning MOJO is refused, at load, in one line
    mojo = h2o_models["deeplearning"]
    missing = {"LAKEINFER_H2O_GENMODEL_JAR": str(tmp_path / "absent.jar")}
    result = run_cli("batch", "--model", str(mojo.path), "--input", str(data), "--output", str(tmp_path / "out"),
                     env=missing)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Deep Learning model (algo 'deeplearning')" in lines[0] \
        and "absent.jar is not a file" in lines[0], lines
    # the server refuses it at start-up, not per request
    served = run_cli("serve", "--model", str(mojo.path), "--port", str(free_port()), env=missing, timeout=60)
    assert served.returncode == 1 and served.stderr.strip().splitlines() == lines


def test_inspect_shows_algorithm_domains_and_threshold(h2o_models: dict[str, Mojo]) -> None:
    import zipfile

    mojo = h2o_models["gbm_binomial"]
    with zipfile.ZipFile(mojo.path) as archive:
        ini = archive.read("model.ini").decode()
    threshold = float(next(line.split("=", 1)[1] for line in ini.splitlines() if line.startswith("default_threshold")))
    info = lakeinfer.inspect_model(str(mojo.path))
    assert info["flavor"] == "h2o" and info["classes"] == ["no", "yes"]
    extra = info["extra"]
    assert (extra["algorithm"], extra["mojo_version"], extra["default_threshold"]) == ("gbm", "1.40", threshold)
    assert extra["columns"][:2] == [{"name": "a", "domain": None}, {"name": "b", "domain": None}]
    assert {c["name"]: c["domain"] for c in extra["columns"]}["plan"] == PLANS
    shown = run_cli("inspect", "--model", str(mojo.path))
    assert shown.returncode == 0, shown.stderr
    assert "flavor:   h2o" in shown.stdout and f"  plan: category {PLANS}" in shown.stdout
    assert f">= {threshold!r}" in shown.stdout and "MOJO version 1.40" in shown.stdout


def test_stream_equals_h2o_predict_without_a_jvm(h2o_models: dict[str, Mojo], test_rows: pd.DataFrame,
                                                  broker: str) -> None:
    import json
    import uuid

    from tests.kafka_helpers import consume, create_topics, produce, stream_cli

    mojo = h2o_models["drf_multinomial"]
    rows = test_rows[["id", *FEATURES]].astype(object).where(test_rows[["id", *FEATURES]].notna(), None)
    suffix = uuid.uuid4().hex[:8]
    source, target, dead = f"h2o-in-{suffix}", f"h2o-out-{suffix}", f"h2o-dlq-{suffix}"
    create_topics(broker, source, target, dead, partitions=2)
    produce(broker, source, [(str(r["id"]).encode(), json.dumps(r).encode()) for r in rows.to_dict(orient="records")])
    stream = stream_cli("--model", mojo.path, "--bootstrap-servers", broker, "--input-topic", source,
                        "--output-topic", target, "--dead-letter-topic", dead, "--group-id", f"g-{suffix}",
                        "--keep", "id", "--exactly-once")
    try:
        out = consume(broker, target, expect=len(rows), settle=0.5)
        assert not _java_descendants(stream.pid)
    finally:
        stream.terminate()
        stream.communicate(timeout=60)
    by_id = {json.loads(m.value())["id"]: json.loads(m.value()) for m in out}
    assert sorted(by_id) == rows["id"].tolist()  # every row once, none to the dead letters
    ordered = [by_id[i] for i in rows["id"].tolist()]
    _compare("stream", mojo, [o["prediction"] for o in ordered], [o["probability"] for o in ordered])
