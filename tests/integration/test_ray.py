"""``--engine ray`` on a real Ray: a private local Ray per command, and a ``ray start --head``
cluster joined by address. Outputs equal the local engine's and the framework's; actors and the
driver killed mid-job; every row exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakeinfer
from lakeinfer.ray._reaper import sweep
from lakeinfer.ray.session import SESSION_MARK
from tests.conftest import FEATURES, Trained, read_output, run_cli
from tests.serving import free_port
from tests.slow_model import SlowEcho

CLUSTER_MARK = "LAKEINFER_TEST_RAY_CLUSTER"  # the `ray start` cluster's processes carry it
ROOT = Path(__file__).resolve().parents[2]
# this tree's lakeinfer, and tests.slow_model for the actors that unpickle the slow model
PATHS = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _ray_processes(temp: Path) -> set[int]:
    """The processes of private Rays whose folders are under ``temp`` (a command run with TMPDIR
    set to it): they carry the folder in their environment, or (Ray's agents, which rewrite
    theirs) hold their logs there open, whoever their parent is now."""
    found = set()
    needle = f"{SESSION_MARK}={temp}".encode()
    for proc in psutil.process_iter():
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as fh:
                if any(entry.startswith(needle) for entry in fh.read().split(b"\0")):
                    found.add(proc.pid)
            fds = f"/proc/{proc.pid}/fd"  # read raw: a log whose folder is gone is "... (deleted)"
            if any(os.readlink(f"{fds}/{fd}").startswith(f"{temp}/") for fd in os.listdir(fds)):
                found.add(proc.pid)
        except OSError:
            continue
    return found


def _short_temp() -> Path:
    """A folder for a command's private Ray: short, as Ray's socket paths must fit 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="lkt-", dir="/tmp"))


def _equal_to_local(out: Path, onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    local = lakeinfer.batch(str(datasets["parquet"]), str(tmp_path / "local"), model=str(onnx_model.path),
                            features=FEATURES, keep=["id"])
    assert local.rows == 900
    ours, theirs = read_output(out), read_output(tmp_path / "local")
    np.testing.assert_array_equal(ours["id"], np.arange(900))
    np.testing.assert_array_equal(ours["prediction"], onnx_model.labels)
    np.testing.assert_array_equal(ours["prediction"], theirs["prediction"])
    np.testing.assert_allclose(np.stack(ours["probability"]), onnx_model.probability, atol=1e-6)
    np.testing.assert_allclose(np.stack(ours["probability"]), np.stack(theirs["probability"]), rtol=0, atol=1e-9)


def test_cli_on_a_private_ray_equals_the_local_engine(onnx_model: Trained, datasets: dict[str, Path],
                                                      tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    temp = _short_temp()
    env = {"HOME": str(home), "TMPDIR": str(temp),
           **{k: "" for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}}
    result = run_cli("batch", "--engine", "ray", "--model", onnx_model.path, *onnx_model.cli, "--input",
                     datasets["parquet"], "--output", tmp_path / "out", "--keep", "id", "--json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert summary["rows"] == 900 and summary["parts"] == 3
    assert summary["model_loads"] == summary["workers"] >= 1  # once per actor
    _equal_to_local(tmp_path / "out", onnx_model, datasets, tmp_path)
    assert not (home / ".ray").exists()  # the private Ray's token lived in its own folder
    deadline = time.monotonic() + 30
    while _ray_processes(temp) or list(temp.glob("lakeinfer-ray-*")):  # it stops what it started, removes its folder
        assert time.monotonic() < deadline, "the private Ray outlived the command"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_here():  # type: ignore[no-untyped-def]
    """A private Ray for this test process: jobs run through the API reuse it."""
    from lakeinfer.ray.session import ray_session

    with ray_session(None) as ray:
        yield ray


def test_api_on_ray_every_input_format(ray_here, onnx_model: Trained, datasets: dict[str, Path],  # type: ignore[no-untyped-def]
                                       tmp_path: Path) -> None:
    for fmt in ("csv", "jsonl", "parquet"):
        summary = lakeinfer.batch(str(datasets[fmt]), str(tmp_path / fmt), model=str(onnx_model.path),
                                  features=FEATURES, keep=["id"], engine="ray", workers=2)
        assert (summary.rows, summary.workers, summary.model_loads) == (900, 2, 2)
        out = read_output(tmp_path / fmt)
        np.testing.assert_array_equal(out["prediction"], onnx_model.labels)
    _equal_to_local(tmp_path / "parquet", onnx_model, datasets, tmp_path)
    again = lakeinfer.batch(str(datasets["parquet"]), str(tmp_path / "parquet"), model=str(onnx_model.path),
                            features=FEATURES, keep=["id"], engine="ray")
    assert again.parts_resumed == again.parts == 3 and again.model_loads == 0  # already done: nothing scored


def test_as_many_actors_as_cpus_does_not_hang(ray_here, onnx_model: Trained,  # type: ignore[no-untyped-def]
                                              datasets: dict[str, Path], tmp_path: Path) -> None:
    cpus = int(ray_here.cluster_resources()["CPU"])
    summary = lakeinfer.batch(str(datasets["parquet"]), str(tmp_path / "out"), model=str(onnx_model.path),
                              features=FEATURES, keep=["id"], engine="ray", workers=cpus, unit_rows=100)
    assert summary.rows == 900 and summary.workers == cpus


def test_a_bad_row_is_named_with_its_file(ray_here, onnx_model: Trained, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "in"
    data.mkdir()
    frame = pd.DataFrame({"id": [0, 1, 2], **{f: [0.5, None, 1.0] if f == "f2" else [0.1, 0.2, 0.3] for f in FEATURES}})
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / "bad.parquet")
    with pytest.raises(lakeinfer.BadRecordError, match=r"bad.parquet, row 1: feature column 'f2' is null"):
        lakeinfer.batch(str(data), str(tmp_path / "out"), model=str(onnx_model.path), features=FEATURES,
                        engine="ray")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_model_that_cannot_be_scored_fails_before_ray_starts(onnx_model: Trained, datasets: dict[str, Path],
                                                              tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lakeinfer.engines.ray as ray_engine

    def started(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Ray was started before the model was checked")

    monkeypatch.setattr(ray_engine, "ray_session", started)
    # an ONNX model that names no features, given none: the driver's check names the fix
    with pytest.raises(lakeinfer.LakeinferError, match="does not name its input features; pass --features"):
        lakeinfer.batch(str(datasets["parquet"]), str(tmp_path / "out"), model=str(onnx_model.path), engine="ray")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_iceberg_table_on_ray_equals_the_local_engine(ray_here, onnx_model: Trained, frame: pd.DataFrame,  # type: ignore[no-untyped-def]
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyiceberg.catalog import load_catalog

    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    props = {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": f"file://{warehouse}"}
    for key, value in props.items():
        monkeypatch.setenv(f"PYICEBERG_CATALOG__DEFAULT__{key.upper()}", value)
    catalog = load_catalog("default", **props)
    catalog.create_namespace("ns")
    rows = pa.Table.from_pandas(frame[["id", *FEATURES]], preserve_index=False)
    table = catalog.create_table("ns.src", schema=rows.schema)
    table.append(rows.slice(0, 400))
    table.append(rows.slice(400))
    options = {"model": str(onnx_model.path), "features": FEATURES, "keep": ["id"]}
    ray_run = lakeinfer.batch("iceberg:ns.src", "iceberg:ns.by_ray", engine="ray", **options)
    local = lakeinfer.batch("iceberg:ns.src", "iceberg:ns.by_local", **options)
    assert ray_run.rows == local.rows == 900 and ray_run.commit is not None
    by_ray = catalog.load_table("ns.by_ray").scan().to_pandas().sort_values("id").reset_index(drop=True)
    by_local = catalog.load_table("ns.by_local").scan().to_pandas().sort_values("id").reset_index(drop=True)
    np.testing.assert_array_equal(by_ray["prediction"], onnx_model.labels)
    np.testing.assert_array_equal(by_ray["prediction"], by_local["prediction"])
    np.testing.assert_allclose(np.stack(by_ray["probability"]), np.stack(by_local["probability"]), rtol=0, atol=1e-9)
    again = lakeinfer.batch("iceberg:ns.src", "iceberg:ns.by_ray", engine="ray", **options)
    assert again.note == "already committed" and len(catalog.load_table("ns.by_ray").snapshots()) == 1


@pytest.fixture(scope="module")
def slow_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """24 files of 50 rows and a model that takes 0.4 s a call: a job of about 5 s on 2 actors."""
    root = tmp_path_factory.mktemp("slow")
    data = root / "in"
    data.mkdir()
    rng = np.random.default_rng(7)
    for i in range(24):
        x = rng.normal(size=(50, len(FEATURES)))
        pq.write_table(pa.table({"id": np.arange(i * 50, (i + 1) * 50), **{f: x[:, j] for j, f in enumerate(FEATURES)}}),
                       data / f"part-{i:02d}.parquet")
    model = root / "slow.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.4), model)
    args = ["batch", "--engine", "ray", "--model", str(model), "--trust-model", "--features", ",".join(FEATURES),
            "--input", str(data), "--keep", "id", "--workers", "2", "--json"]
    return {"args": args, "files": 24, "rows": 1200}


def _start(args: list[str], out: Path, temp: Path | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **PATHS, "RAY_ADDRESS": "", **({"TMPDIR": str(temp)} if temp else {})}
    return subprocess.Popen([sys.executable, "-m", "lakeinfer", *args, "--output", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _parts(out: Path) -> int:
    return len(list(out.glob("part-*.parquet")))


def _wait_for_parts(job: subprocess.Popen[str], out: Path, count: int) -> None:
    deadline = time.monotonic() + 120
    while _parts(out) < count:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job wrote no parts"
        time.sleep(0.05)


def _exactly_once(out: Path, rows: int) -> None:
    scored = read_output(out)
    np.testing.assert_array_equal(scored["id"], np.arange(rows))  # every row, once


def test_an_actor_killed_mid_job_is_replaced(slow_job: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    job = _start(slow_job["args"], out)
    _wait_for_parts(job, out, 2)
    actors = [p for p in psutil.Process(job.pid).children(recursive=True)
              if "UnitActor" in " ".join(p.cmdline())]
    assert actors, "no actor process found"
    actors[0].send_signal(signal.SIGKILL)
    killed_at = _parts(out)
    stdout, stderr = job.communicate(timeout=180)
    assert job.returncode == 0, stderr[-3000:]
    # units still queued when it died: the actor held two in flight, which fail and are redone
    assert killed_at <= slow_job["files"] - 5, "the job was too far on when the actor was killed"
    summary = json.loads(stdout)
    assert summary["rows"] == slow_job["rows"] and summary["workers"] == 2
    # the replacement's load counts once it is done (test_a_replacement_actor_counts_its_model_load);
    # on a loaded machine it may still be loading when the other actor has scored every unit
    assert summary["model_loads"] in (2, 3)
    _exactly_once(out, slow_job["rows"])


def test_a_replacement_actor_counts_its_model_load(ray_here, onnx_model: Trained) -> None:  # type: ignore[no-untyped-def]
    from lakeinfer.engines.ray import RayRunner
    from lakeinfer.runtime import PipelineRecipe

    runner = RayRunner(ray_here, PipelineRecipe(str(onnx_model.path), features=tuple(FEATURES)), workers=2, units=4)
    try:
        assert ray_here.get(runner._loaded) == [1, 1]
        ray_here.kill(runner.actors[0], no_restart=True)
        runner._replace(0)
        assert ray_here.get(runner._loaded[-1]) == 1
        # the dead actor's load and its replacement's, which scored no unit, both count
        assert runner.model_loads([]) == 3
    finally:
        runner.close()


def test_the_driver_killed_mid_job_then_a_rerun_resumes(slow_job: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    temp = _short_temp()
    job = _start(slow_job["args"], out, temp)
    _wait_for_parts(job, out, 3)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done = _parts(out)
    assert done < slow_job["files"], "the job finished before it could be killed"
    deadline = time.monotonic() + 30
    while _ray_processes(temp) or list(temp.glob("lakeinfer-ray-*")):  # the private Ray ends with its driver
        assert time.monotonic() < deadline, "the private Ray outlived its driver"
        time.sleep(0.1)
    rerun = _start(slow_job["args"], out)
    stdout, stderr = rerun.communicate(timeout=180)
    assert rerun.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["parts_resumed"] >= done and summary["rows"] == slow_job["rows"]
    _exactly_once(out, slow_job["rows"])


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``ray start --head`` on this machine, with its token in a folder of the test's own."""
    root = tmp_path_factory.mktemp("cluster")
    token = root / "token"
    token.write_text("b" * 64)
    port = free_port()
    temp = Path("/tmp") / f"lkr-{port}"
    env = {**os.environ, **PATHS, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token), "HOME": str(root),
           CLUSTER_MARK: str(temp)}
    env.pop("RAY_ADDRESS", None)
    env.pop(SESSION_MARK, None)  # not this process's private Ray's: its sweep would stop this cluster
    ray_cli = str(Path(sys.executable).parent / "ray")
    started = subprocess.run([ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                              "--disable-usage-stats", f"--temp-dir={temp}"], env=env, capture_output=True, text=True,
                             timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    yield {"address": f"127.0.0.1:{port}", "env": env}
    # this cluster's processes only (they carry its mark): `ray stop` would stop every Ray on the
    # machine, this test process's own private one too, whose shutdown would then wait on the dead
    sweep(str(temp), CLUSTER_MARK)


def test_joins_a_ray_start_cluster_and_starts_no_ray_of_its_own(ray_cluster, onnx_model: Trained,  # type: ignore[no-untyped-def]
                                                                datasets: dict[str, Path], tmp_path: Path) -> None:
    heads = {p.pid for p in psutil.process_iter(["cmdline"]) if "gcs_server" in " ".join(p.info["cmdline"] or [])}
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-m", "lakeinfer", "batch", "--engine", "ray", "--ray-address",
                            ray_cluster["address"], "--model", str(onnx_model.path), *onnx_model.cli, "--input",
                            str(datasets["parquet"]), "--output", str(out), "--keep", "id"],
                           env=ray_cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started_here: set[int] = set()
    while job.poll() is None:  # whatever the command starts is its own child
        try:
            children = psutil.Process(job.pid).children(recursive=True)
            started_here |= {p.pid for p in children if "gcs_server" in " ".join(p.cmdline()) or "raylet" in p.name()}
        except psutil.Error:  # the command or a child ended meanwhile
            pass
        time.sleep(0.05)
    stdout, stderr = job.communicate()
    assert job.returncode == 0, stderr[-3000:]
    assert started_here == set(), "the command started a Ray of its own"
    assert heads and all(psutil.pid_exists(pid) for pid in heads)  # the cluster's own head, still up
    _equal_to_local(out, onnx_model, datasets, tmp_path)


def _replicas() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if "ServeReplica:lakeinfer" in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_ray_serve_answers_like_lakeinfer_serve_and_survives_a_killed_replica(onnx_model: Trained, X: Any) -> None:
    import httpx
    import tritonclient.http as triton

    port = free_port()
    temp = _short_temp()
    server = subprocess.Popen([sys.executable, "-m", "lakeinfer", "serve", "--engine", "ray", "--replicas", "2",
                               "--model", str(onnx_model.path), *onnx_model.cli, "--name", "rf", "--port", str(port)],
                              env={**os.environ, **PATHS, "RAY_ADDRESS": "", "TMPDIR": str(temp)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while len(_replicas()) < 2 or not _ready(url):
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "Ray Serve did not become ready"
            time.sleep(0.1)
        # a private Ray serves in Ray Serve's high-throughput mode: HAProxy forwards to the replicas
        assert any(p.name() == "haproxy" for p in psutil.Process(server.pid).children(recursive=True)), \
            "Ray Serve's HAProxy ingress is not in use"
        rows = X.to_numpy(np.float32)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")

        def infer() -> tuple[np.ndarray, np.ndarray]:
            tensor = triton.InferInput("x", list(rows.shape), "FP32")
            tensor.set_data_from_numpy(rows)
            result = client.infer("rf", [tensor])
            return result.as_numpy("prediction"), result.as_numpy("probability")

        labels, probability = infer()
        np.testing.assert_array_equal(labels, onnx_model.labels)
        np.testing.assert_allclose(probability, onnx_model.probability, atol=1e-6)
        records = httpx.post(f"{url}/v1/models/rf/predict",
                             json={"instances": [dict(zip(FEATURES, map(float, rows[0]), strict=True))]})
        assert records.status_code == 200 and records.json()["predictions"][0]["prediction"] == onnx_model.labels[0]
        assert httpx.post(f"{url}/v2/models/nope/infer", json={"inputs": []}).status_code == 404

        victim = _replicas()[0]
        victim.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 120
        answered = 0
        while answered < 20 or len([p for p in _replicas() if p.pid != victim.pid]) < 2:
            assert time.monotonic() < deadline, "Ray Serve did not recover from a killed replica"
            try:
                labels, _ = infer()
            except Exception:  # a request routed to the dying replica: the next ones are answered
                continue
            np.testing.assert_array_equal(labels, onnx_model.labels)
            answered += 1
        assert _ready(url)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
    assert server.returncode == 0
    deadline = time.monotonic() + 30
    while _ray_processes(temp):
        assert time.monotonic() < deadline, "Ray Serve's processes outlived the command"
        time.sleep(0.1)


def _ready(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_staged_model_on_ray_runs_each_stage_in_an_actor(ray_here, datasets: dict[str, Path], X: Any,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    from lakeinfer.models.staged import split_model
    from lakeinfer.models.staged.ray_stages import RayStages
    from tests.integration.test_staged import as_batch, column, onnxruntime_predict, residual_mlp

    path = residual_mlp(tmp_path / "mlp.onnx", hidden=32, layers=4)
    labels, proba = onnxruntime_predict(path, X.to_numpy())
    split_model(str(path), 2, str(tmp_path / "mlp-2"), devices=["ray"])
    summary = lakeinfer.batch(str(datasets["parquet"]), str(tmp_path / "out"), model=str(tmp_path / "mlp-2"),
                              keep=["id"], engine="ray", batch_size=300)
    assert summary.rows == len(X) and summary.workers == 1  # one feeder; the stages hold the CPUs
    out = read_output(tmp_path / "out")
    np.testing.assert_array_equal(out["prediction"], labels)
    # against the unsplit model, float32 within 1e-5: the cut changes onnxruntime's fusion
    # (test_staged.py); against the same cut scored by the local engine, bit for bit
    np.testing.assert_allclose(column(out, "probability"), proba, atol=1e-5, rtol=0)
    split_model(str(path), 2, str(tmp_path / "mlp-2-here"))
    lakeinfer.batch(str(datasets["parquet"]), str(tmp_path / "here"), model=str(tmp_path / "mlp-2-here"),
                    keep=["id"], engine="local", batch_size=300)
    here = read_output(tmp_path / "here")
    np.testing.assert_array_equal(out["id"], here["id"])
    np.testing.assert_array_equal(column(out, "probability"), column(here, "probability"))

    model = lakeinfer.load_model(str(tmp_path / "mlp-2"))
    try:
        got = model.predict(as_batch(X.to_numpy()))
        stages = model.stages  # type: ignore[attr-defined]
        assert isinstance(stages, RayStages)
        # each stage an actor of its own, in Ray's worker processes, not a process this one started
        assert len(set(stages.pids)) == 2 and os.getpid() not in stages.pids
        assert not {p.pid for p in psutil.Process().children()} & set(stages.pids)
        np.testing.assert_array_equal(column(got, "prediction"), labels)
    finally:
        model.close()  # type: ignore[attr-defined]


def test_two_private_rays_one_after_the_other_in_one_process() -> None:
    # each has its own token: the second must not be refused with the first one's
    probe = ("from lakeinfer.ray.session import ray_session\n"
             "for _ in range(2):\n"
             "    with ray_session(None) as ray:\n"
             "        print(int(ray.cluster_resources()['CPU']))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=240,
                          env={**os.environ, **{k: "" for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.split()) == 2
