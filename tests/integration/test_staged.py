"""Staged models (``lakeinfer split``): each stage in a process of its own, in every mode the same
answers as the unsplit model and as the framework's own predict."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
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
from lakeinfer.models.staged import Manifest, split_model
from tests.conftest import FEATURES, read_output, run_cli
from tests.serving import ROOT, column_tensors, serving

FLOAT32_NET = 1e-5   # float32 nets: a cut between a MatMul and its Add changes onnxruntime's fusion
TREES = 1e-6


# -- models ---------------------------------------------------------------------------------------
def residual_mlp(path: Path, *, hidden: int, layers: int, classes: int = 3, seed: int = 0) -> Path:
    """An MLP whose hidden layers add their input back (residual connections), and whose head also
    takes the first layer's output (a long skip connection, which crosses every cut), as ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights: list[Any] = []

    def weight(name: str, shape: tuple[int, ...]) -> str:
        scale = 1.0 / np.sqrt(shape[0]) if len(shape) == 2 else 0.1
        weights.append(numpy_helper.from_array((rng.normal(size=shape) * scale).astype(np.float32), name))
        return name

    nodes = [helper.make_node("MatMul", ["X", weight("W0", (len(FEATURES), hidden))], ["m0"], name="dense_0"),
             helper.make_node("Add", ["m0", weight("b0", (hidden,))], ["a0"]),
             helper.make_node("Relu", ["a0"], ["h0"])]
    previous = "h0"
    for i in range(1, layers):
        nodes += [helper.make_node("MatMul", [previous, weight(f"W{i}", (hidden, hidden))], [f"m{i}"], name=f"dense_{i}"),
                  helper.make_node("Add", [f"m{i}", weight(f"b{i}", (hidden,))], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
                  helper.make_node("Add", [f"r{i}", previous], [f"h{i}"])]  # the skip connection
        previous = f"h{i}"
    nodes.append(helper.make_node("Add", [previous, "h0"], ["skip"]))
    nodes += [helper.make_node("MatMul", ["skip", weight("Wout", (hidden, classes))], ["logits"], name="head"),
              helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
              helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "residual_mlp", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, len(FEATURES)])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes])], initializer=weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"feature_names": ",".join(FEATURES)})
    onnx.save(model, str(path))
    return path


def onnxruntime_predict(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, proba = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    return labels, proba


def as_batch(x: np.ndarray) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(x[:, j].astype(np.float64)) for j in range(x.shape[1])], names=FEATURES)


def column(batch: pa.RecordBatch | pd.DataFrame, name: str) -> np.ndarray:
    values = batch.column(name).to_pylist() if isinstance(batch, pa.RecordBatch) else batch[name].tolist()
    return np.asarray([np.asarray(v) for v in values])


# -- stage processes ----------------------------------------------------------------------------
def stage_processes(root: psutil.Process | None = None) -> list[psutil.Process]:
    """The stage processes below ``root`` (this process): spawned interpreters running spawn_main."""
    found = []
    for child in (root or psutil.Process()).children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def assert_gone(processes: list[psutil.Process], timeout: float = 10) -> None:
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    assert not alive, f"stage processes survived: {[p.pid for p in alive]}"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture(autouse=True)
def no_stage_survives() -> Iterator[None]:
    yield
    gc.collect()  # a model nobody holds closes its stages
    assert_gone(stage_processes())


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory, X: pd.DataFrame) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("staged")
    path = residual_mlp(root / "mlp.onnx", hidden=64, layers=5)
    labels, proba = onnxruntime_predict(path, X.to_numpy())
    result = run_cli("split", "--model", path, "--stages", "2", "--output", root / "mlp-2")
    assert result.returncode == 0, result.stderr
    split_model(str(path), 3, str(root / "mlp-3"))
    return {"path": path, 2: root / "mlp-2", 3: root / "mlp-3", "labels": labels, "proba": proba, "table": result.stdout,
            "root": root}


# -- split ---------------------------------------------------------------------------------------
def test_split_writes_balanced_stages_and_inspect_shows_them(mlp: dict[str, Any]) -> None:
    table = mlp["table"].splitlines()
    assert table[0].split()[:4] == ["stage", "file", "covers", "weights"] and len(table) == 4
    for count in (2, 3):
        manifest = Manifest.read(str(mlp[count]))
        assert len(manifest.stages) == count and manifest.source == "mlp.onnx"
        assert manifest.stages[0].inputs == ("X",) and manifest.stages[-1].outputs == ("label", "probabilities")
        for before, after in zip(manifest.stages, manifest.stages[1:], strict=False):
            assert before.outputs == after.inputs
        shares = [s.cost_share for s in manifest.stages]
        assert max(shares) - min(shares) < 0.3, shares
    # the long skip connection crosses every cut as a second tensor
    for count in (2, 3):
        assert all(len(s.outputs) == 2 and "h0" in s.outputs for s in Manifest.read(str(mlp[count])).stages[:-1])
    info = lakeinfer.inspect_model(str(mlp[3]))
    assert info["flavor"] == "staged" and info["input_columns"] == FEATURES
    assert [o["name"] for o in info["outputs"]] == ["prediction", "probability"]
    assert sum(note.startswith("stage ") for note in info["extra"]["notes"]) == 3
    assert not stage_processes()  # inspect starts no stage


def test_a_graph_without_a_legal_cut_is_refused_in_one_line(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((5, 2), dtype=np.float32), "W")
    graph = helper.make_graph([helper.make_node("MatMul", ["X", "W"], ["y"], name="only_matmul")], "one",
                              [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "one.onnx"))
    result = run_cli("split", "--model", tmp_path / "one.onnx", "--stages", "2", "--output", tmp_path / "out",
                     "--features", ",".join(FEATURES))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "node 'only_matmul' (MatMul)" in result.stderr and "cannot be divided" in result.stderr
    assert not (tmp_path / "out").exists()


# -- batch and the Python API ---------------------------------------------------------------------
def test_batch_cli_two_stages_equals_unsplit_and_onnxruntime(mlp: dict[str, Any], datasets: dict[str, Path],
                                                             frame: pd.DataFrame, tmp_path: Path) -> None:
    result = run_cli("batch", "--model", mlp["path"], "--input", datasets["parquet"], "--output",
                     tmp_path / "unsplit", "--keep", "id", "--batch-size", "256")
    assert result.returncode == 0, result.stderr
    job = subprocess.Popen([sys.executable, "-m", "lakeinfer", "batch", "--model", str(mlp[2]), "--input",
                            str(datasets["parquet"]), "--output", str(tmp_path / "staged"), "--keep", "id",
                            "--batch-size", "256"], stderr=subprocess.PIPE, text=True, env=_env())
    seen: dict[int, psutil.Process] = {}
    try:  # the command's stage processes, noted while it runs, must end with it
        command = psutil.Process(job.pid)
        while job.poll() is None:
            try:
                seen.update((p.pid, p) for p in stage_processes(command))
            except psutil.NoSuchProcess:
                break
            time.sleep(0.02)
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 0, err
    assert len(seen) == 2
    assert_gone(list(seen.values()))
    staged, unsplit = read_output(tmp_path / "staged"), read_output(tmp_path / "unsplit")
    assert staged["id"].tolist() == frame["id"].tolist()
    np.testing.assert_array_equal(staged["prediction"], mlp["labels"])
    np.testing.assert_allclose(column(staged, "probability"), mlp["proba"], atol=FLOAT32_NET, rtol=0)
    np.testing.assert_array_equal(staged["prediction"], unsplit["prediction"])
    np.testing.assert_allclose(column(staged, "probability"), column(unsplit, "probability"), atol=FLOAT32_NET, rtol=0)


def test_python_api_three_stages_equals_unsplit_and_onnxruntime(mlp: dict[str, Any], datasets: dict[str, Path],
                                                                X: pd.DataFrame, tmp_path: Path) -> None:
    summary = lakeinfer.batch(str(datasets["parquet"]), str(tmp_path / "out"), model=str(mlp[3]), keep=["id"],
                              batch_size=300)
    assert summary.rows == len(X) and summary.model_loads == 1
    out = read_output(tmp_path / "out")
    np.testing.assert_array_equal(out["prediction"], mlp["labels"])
    np.testing.assert_allclose(column(out, "probability"), mlp["proba"], atol=FLOAT32_NET, rtol=0)

    model, unsplit = lakeinfer.load_model(str(mlp[3])), lakeinfer.load_model(str(mlp["path"]))
    try:
        rows = X.to_numpy()
        for part in (rows, rows[:1], rows[:0]):  # many rows, a lone row, none
            got, want = model.predict(as_batch(part)), unsplit.predict(as_batch(part))
            assert got.schema == want.schema
            np.testing.assert_array_equal(column(got, "prediction"), column(want, "prediction"))
            if len(part):
                np.testing.assert_allclose(column(got, "probability"), column(want, "probability"), atol=FLOAT32_NET)
        assert len(stage_processes()) == 3
        assert os.getpid() not in model.stages.pids  # type: ignore[attr-defined]
    finally:
        model.close()  # type: ignore[attr-defined]
    assert not stage_processes()


# -- tree ensembles ------------------------------------------------------------------------------
def _tree_models(root: Path, X: pd.DataFrame, frame: pd.DataFrame) -> Iterator[tuple[str, Path, np.ndarray, np.ndarray | None]]:
    import lightgbm as lgb
    import xgboost as xgb
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    x = X.to_numpy(np.float32)
    binary, labels = frame["binary"].to_numpy(), frame["label"].to_numpy()
    for name, model, y in (("xgboost-binary", xgb.XGBClassifier(n_estimators=9, max_depth=3, base_score=0.3), binary),
                           ("xgboost-multiclass", xgb.XGBClassifier(n_estimators=9, max_depth=3, base_score=0.2), labels)):
        model.fit(x, y)
        path = root / f"{name}.json"
        model.get_booster().save_model(str(path))
        yield name, path, model.predict(x), model.predict_proba(x)
    booster = lgb.LGBMClassifier(n_estimators=9, num_leaves=7, verbose=-1).fit(X, labels)
    booster.booster_.save_model(str(root / "lightgbm.txt"))
    yield "lightgbm-multiclass", root / "lightgbm.txt", booster.predict(X), booster.predict_proba(X)
    regressor = lgb.LGBMRegressor(n_estimators=9, num_leaves=7, verbose=-1).fit(X, frame["target"])
    regressor.booster_.save_model(str(root / "lightgbm-reg.txt"))
    yield "lightgbm-regression", root / "lightgbm-reg.txt", regressor.predict(X), None
    import onnxruntime as ort

    for name, y in (("forest-binary", binary), ("forest-multiclass", labels)):
        forest = RandomForestClassifier(n_estimators=9, max_depth=5, random_state=0).fit(x, y)
        path = root / f"{name}.onnx"
        path.write_bytes(to_onnx(forest, x[:1], options={"zipmap": False}).SerializeToString())
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        predicted, proba = session.run(None, {session.get_inputs()[0].name: x})
        # onnxruntime's forest is the framework here; it agrees with scikit-learn's own predict
        np.testing.assert_array_equal(predicted, forest.predict(x))
        yield name, path, predicted, proba


def test_tree_ensembles_split_by_tree_range_equal_the_framework(tmp_path: Path, X: pd.DataFrame,
                                                                frame: pd.DataFrame) -> None:
    batch = as_batch(X.to_numpy())
    for i, (name, path, labels, proba) in enumerate(_tree_models(tmp_path, X, frame)):
        unsplit = lakeinfer.load_model(str(path), features=FEATURES).predict(batch)
        for count in (2 + i % 2,):  # the models in 2 and in 3 shards by turns: a first and last stage, and a middle one
            folder = tmp_path / f"{name}-{count}"
            manifest = split_model(str(path), count, str(folder), features=FEATURES)
            assert len(manifest.stages) == count and manifest.stages[-1].merge is not None
            model = lakeinfer.load_model(str(folder))
            try:
                got = model.predict(batch)
            finally:
                model.close()  # type: ignore[attr-defined]
            assert got.schema == unsplit.schema, name
            if proba is None:  # a regressor
                np.testing.assert_allclose(column(got, "prediction"), labels, atol=TREES, rtol=0, err_msg=name)
            else:
                np.testing.assert_array_equal(column(got, "prediction"), labels, err_msg=name)
                np.testing.assert_allclose(column(got, "probability"), proba, atol=TREES, rtol=0, err_msg=name)
                np.testing.assert_allclose(column(got, "probability"), column(unsplit, "probability"), atol=TREES,
                                           rtol=0, err_msg=name)
            np.testing.assert_allclose(column(got, "prediction"), column(unsplit, "prediction"), atol=TREES, rtol=0)


# -- a stage process that dies ---------------------------------------------------------------------
def test_kill_9_of_a_stage_fails_the_job_naming_it_and_the_rerun_gives_every_row_once(
        tmp_path: Path) -> None:
    model = residual_mlp(tmp_path / "wide.onnx", hidden=384, layers=5)
    split_model(str(model), 2, str(tmp_path / "wide-2"))
    rows, files = 1500, 40
    rng = np.random.default_rng(7)
    (tmp_path / "in").mkdir()
    for i in range(files):
        x = np.round(rng.normal(size=(rows, len(FEATURES))) * 1024) / 1024
        frame = pd.DataFrame(x, columns=FEATURES)
        frame.insert(0, "id", np.arange(i * rows, (i + 1) * rows))
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "in" / f"part-{i:02d}.parquet")
    args = [sys.executable, "-m", "lakeinfer", "batch", "--model", str(tmp_path / "wide-2"), "--input",
            str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--keep", "id", "--batch-size", "500", "--quiet"]
    job = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        command = psutil.Process(job.pid)
        deadline = time.monotonic() + 60
        # wait for the first finished part, then kill stage 2 while the job is still running
        while not list((tmp_path / "out").glob("part-*.parquet")):
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before a part was written"
            time.sleep(0.02)
        stages = sorted(stage_processes(command), key=lambda p: (p.create_time(), p.pid))  # in start order
        assert len(stages) == 2
        victim = stages[1]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = job.communicate(timeout=30)
        took = time.monotonic() - killed_at
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode == 1, err
    last = err.strip().splitlines()[-1]
    assert f"(pid {victim.pid}) died (signal 9)" in last and "stage 2 of 2" in last, err
    assert took < 10, took
    assert_gone(stages)
    finished = len(list((tmp_path / "out").glob("part-*.parquet")))
    assert 0 < finished < files

    rerun = run_cli("batch", "--model", tmp_path / "wide-2", "--input", tmp_path / "in", "--output",
                    tmp_path / "out", "--keep", "id", "--batch-size", "500", "--json")
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout)
    assert summary["parts_resumed"] == finished and summary["rows"] == rows * files
    out = read_output(tmp_path / "out")
    assert out["id"].tolist() == list(range(rows * files))  # every row exactly once
    labels, proba = onnxruntime_predict(model, pq.read_table(tmp_path / "in").to_pandas().sort_values("id")[FEATURES].to_numpy())
    np.testing.assert_array_equal(out["prediction"], labels)
    np.testing.assert_allclose(column(out, "probability"), proba, atol=FLOAT32_NET, rtol=0)


# -- serve and stream -----------------------------------------------------------------------------
def test_serve_answers_v2_with_the_unsplit_models_answers(mlp: dict[str, Any], X: pd.DataFrame) -> None:
    import tritonclient.http as triton

    rows = X.to_numpy()[:120]
    unsplit = lakeinfer.load_model(str(mlp["path"])).predict(as_batch(rows))
    with serving("--model", mlp[2], "--name", "mlp") as server:
        client = triton.InferenceServerClient(url=f"127.0.0.1:{server.port}")
        assert client.is_server_ready() and client.is_model_ready("mlp")
        meta = client.get_model_metadata("mlp")
        assert [i["name"] for i in meta["inputs"]] == FEATURES
        assert [o["name"] for o in meta["outputs"]] == ["prediction", "probability"]
        for part in (rows, rows[:1]):
            result = client.infer("mlp", column_tensors(triton, part, FEATURES))
            np.testing.assert_array_equal(result.as_numpy("prediction"), mlp["labels"][:len(part)])
            np.testing.assert_allclose(result.as_numpy("probability"), mlp["proba"][:len(part)], atol=FLOAT32_NET,
                                       rtol=0)
            np.testing.assert_allclose(result.as_numpy("probability"), column(unsplit, "probability")[:len(part)],
                                       atol=FLOAT32_NET, rtol=0)
        stages = sorted(stage_processes(psutil.Process(server.proc.pid)), key=lambda p: (p.create_time(), p.pid))
        assert len(stages) == 2  # started by the first request
        stages[0].send_signal(signal.SIGKILL)  # a dead stage: the request fails with 503, naming it
        assert_gone(stages)
        answer = httpx.post(f"{server.url}/v2/models/mlp/infer", timeout=30, json={"inputs": [
            {"name": f, "shape": [1], "datatype": "FP64", "data": [0.5]} for f in FEATURES]})
        assert answer.status_code == 503, answer.text
        assert f"stage 1 of 2 (pid {stages[0].pid}) died (signal 9)" in answer.json()["error"]
    assert server.proc.returncode == 0
    assert_gone(stages)


def test_stream_scores_every_record_as_the_unsplit_model(broker: str, mlp: dict[str, Any]) -> None:
    from tests.kafka_helpers import consume, create_topics, produce, records, stream_cli

    suffix = uuid.uuid4().hex[:8]
    source, sink = f"in-{suffix}", f"out-{suffix}"
    create_topics(broker, source, sink)
    sent = records(300)
    produce(broker, source, sent)
    proc = stream_cli("--model", mlp[3], "--bootstrap-servers", broker, "--input-topic", source, "--output-topic",
                      sink, "--keep", "id", "--group-id", f"g-{source}", "--exactly-once")
    try:
        got = consume(broker, sink, expect=300, timeout=90, settle=0.5)
        command = psutil.Process(proc.pid)
        stages = stage_processes(command)
        assert len(stages) == 3
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert_gone(stages)
    by_id = {json.loads(m.value())["id"]: json.loads(m.value()) for m in got}
    assert sorted(by_id) == list(range(300))
    x = np.array([[json.loads(v)[f] for f in FEATURES] for _, v in sent])
    labels, proba = onnxruntime_predict(mlp["path"], x)
    unsplit = lakeinfer.load_model(str(mlp["path"])).predict(as_batch(x))
    np.testing.assert_array_equal([by_id[i]["prediction"] for i in range(300)], labels)
    np.testing.assert_allclose([by_id[i]["probability"] for i in range(300)], proba, atol=FLOAT32_NET, rtol=0)
    np.testing.assert_allclose([by_id[i]["probability"] for i in range(300)], column(unsplit, "probability"),
                               atol=FLOAT32_NET, rtol=0)


# -- memory ----------------------------------------------------------------------------------------
class PeakMemory:
    """The peak resident memory of each stage process below this one, sampled until stopped."""

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            for process in stage_processes():
                try:
                    self.peak[process.pid] = max(self.peak.get(process.pid, 0), process.memory_info().rss)
                except psutil.NoSuchProcess:
                    pass

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _stage_peaks(folder: Path, x: np.ndarray) -> list[int]:
    """Each stage's peak resident memory through its load and the scoring of ``x`` in 64-row batches."""
    model = lakeinfer.load_model(str(folder))
    try:
        with PeakMemory() as memory:
            pids = model.stages.pids  # type: ignore[attr-defined]
            for start in range(0, len(x), 64):
                model.predict(as_batch(x[start: start + 64]))
    finally:
        model.close()  # type: ignore[attr-defined]
    return [memory.peak[pid] for pid in pids]


def test_each_stage_holds_its_share_of_the_weights(tmp_path: Path, X: pd.DataFrame) -> None:
    # 8 hidden matrices of 16 MiB: each of 2 stages holds 4 of them, 64 MiB
    heavy = residual_mlp(tmp_path / "heavy.onnx", hidden=2048, layers=9)
    twin = residual_mlp(tmp_path / "twin.onnx", hidden=8, layers=9)  # the same graph, next to no weights
    manifest = split_model(str(heavy), 2, str(tmp_path / "heavy-2"))
    split_model(str(twin), 2, str(tmp_path / "twin-2"))
    x = X.to_numpy()[:256]
    heavy_peaks, twin_peaks = _stage_peaks(tmp_path / "heavy-2", x), _stage_peaks(tmp_path / "twin-2", x)
    total = manifest.weight_bytes
    for stage, held, base in zip(manifest.stages, heavy_peaks, twin_peaks, strict=True):
        share = stage.weight_bytes / total
        used = (held - base) / total
        assert used <= share + 0.15, (stage.file, round(used, 3), round(share, 3))


# -- devices -----------------------------------------------------------------------------------------
def test_devices_place_each_stage_and_a_missing_provider_fails_loudly(mlp: dict[str, Any], X: pd.DataFrame,
                                                                      tmp_path: Path) -> None:
    import onnxruntime as ort

    result = run_cli("split", "--model", mlp["path"], "--stages", "2", "--output", tmp_path / "gpu",
                     "--devices", "cpu,cuda:0")
    assert result.returncode == 0, result.stderr
    assert Manifest.read(str(tmp_path / "gpu")).devices == ("cpu", "cuda:0")
    model = lakeinfer.load_model(str(tmp_path / "gpu"))
    batch = as_batch(X.to_numpy()[:100])
    try:
        if "CUDAExecutionProvider" in ort.get_available_providers():  # stage 2 on the GPU
            got = model.predict(batch)
            np.testing.assert_array_equal(column(got, "prediction"), mlp["labels"][:100])
            np.testing.assert_allclose(column(got, "probability"), mlp["proba"][:100], atol=FLOAT32_NET, rtol=0)
        else:  # no CUDA here: stage 2 refuses to load, in one line that names it and the fix
            with pytest.raises(lakeinfer.ConfigError, match=r"^stage 2 of 2: device cuda:0: .*onnxruntime-gpu"):
                model.predict(batch)
    finally:
        model.close()  # type: ignore[attr-defined]
    # the model option overrides the folder's placement
    override = lakeinfer.load_model(str(tmp_path / "gpu"), device="cpu")
    try:
        np.testing.assert_array_equal(column(override.predict(batch), "prediction"), mlp["labels"][:100])
    finally:
        override.close()  # type: ignore[attr-defined]
