"""Iceberg (a pyiceberg SQL catalog on SQLite) and Delta tables as batch input and output:
one commit per job, incremental and idle reruns, kill -9 and rerun, and the errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest

from tests.conftest import FEATURES, Trained, run_cli
from tests.slow_model import SlowEcho

pytest.importorskip("pyiceberg")
pytest.importorskip("deltalake")

ROOT = Path(__file__).resolve().parents[2]


def _rows(frame: pd.DataFrame, start: int, stop: int) -> pa.Table:
    return pa.Table.from_pandas(frame[["id", *FEATURES]].iloc[start:stop], preserve_index=False)


def _iceberg_input(lake: dict[str, Any], frame: pd.DataFrame, name: str, chunks: list[tuple[int, int]]) -> Any:
    table = lake["catalog"].create_table(name, schema=_rows(frame, 0, 0).schema)
    for start, stop in chunks:
        table.append(_rows(frame, start, stop))
    return table


def _delta_input(path: Path, frame: pd.DataFrame, chunks: list[tuple[int, int]]) -> None:
    from deltalake import write_deltalake

    for start, stop in chunks:
        write_deltalake(str(path), _rows(frame, start, stop), mode="append")


def _read(lake: dict[str, Any], output: str) -> pd.DataFrame:
    if output.startswith("iceberg:"):
        table = lake["catalog"].load_table(output[len("iceberg:"):]).scan().to_arrow()
    else:
        from deltalake import DeltaTable

        table = pa.table(DeltaTable(output.removeprefix("delta:")).to_pyarrow_table())
    return table.to_pandas().sort_values("id").reset_index(drop=True)


def _commits(lake: dict[str, Any], output: str) -> int:
    """Snapshots of an Iceberg table, versions of a Delta table (0 when it does not exist)."""
    if output.startswith("iceberg:"):
        from pyiceberg.exceptions import NoSuchTableError

        try:
            return len(lake["catalog"].load_table(output[len("iceberg:"):]).snapshots())
        except NoSuchTableError:
            return 0
    path = output.removeprefix("delta:")
    if not os.path.isdir(os.path.join(path, "_delta_log")):
        return 0
    from deltalake import DeltaTable

    return DeltaTable(path).version() + 1


def _check(result: pd.DataFrame, trained: Trained, ids: range) -> None:
    assert result["id"].tolist() == list(ids)
    np.testing.assert_array_equal(result["prediction"].to_numpy(), trained.labels[list(ids)])
    np.testing.assert_allclose(np.stack(result["probability"].to_numpy()), trained.probability[list(ids)], atol=1e-6)


def _batch(lake: dict[str, Any], trained: Trained, source: str, output: str, *extra: str) -> Any:
    args = ["batch", "--model", trained.path, *trained.cli, "--input", source, "--output", output,
            "--keep", "id", "--workers", "1"]
    if output.startswith("iceberg:"):
        args += ["--staging", lake["staging"]]
    return run_cli(*args, *extra, env=lake["env"])


@pytest.mark.parametrize("kind", ["iceberg", "delta"])
def test_read_write_incremental_and_idle_reruns(kind: str, lake: dict[str, Any], onnx_model: Trained,
                                               frame: pd.DataFrame, tmp_path: Path) -> None:
    if kind == "iceberg":
        source = _iceberg_input(lake, frame, "ns.src", [(0, 300), (300, 600)])
        append = source.append
        input_uri, output = "iceberg:ns.src", "iceberg:ns.scores"
    else:
        _delta_input(tmp_path / "src", frame, [(0, 300), (300, 600)])

        def append(rows: pa.Table) -> None:
            from deltalake import write_deltalake

            write_deltalake(str(tmp_path / "src"), rows, mode="append")

        input_uri, output = str(tmp_path / "src"), f"delta:{tmp_path / 'scores'}"  # no prefix: _delta_log says

    first = _batch(lake, onnx_model, input_uri, output)
    assert first.returncode == 0, first.stderr
    assert "600 rows" in first.stdout
    _check(_read(lake, output), onnx_model, range(600))
    assert _commits(lake, output) == 1
    assert not list(lake["staging"].glob("*/*")) and not (tmp_path / ".lakeinfer-staging").exists()

    again = _batch(lake, onnx_model, input_uri, output)  # the same job: found in the table's history
    assert again.returncode == 0, again.stderr
    assert "already committed" in again.stdout
    assert _commits(lake, output) == 1

    append(_rows(frame, 600, 900))
    more = _batch(lake, onnx_model, input_uri, output, "--incremental")
    assert more.returncode == 0, more.stderr
    assert "scored 300 rows" in more.stdout
    _check(_read(lake, output), onnx_model, range(900))
    assert _commits(lake, output) == 2

    idle = _batch(lake, onnx_model, input_uri, output, "--incremental")
    assert idle.returncode == 0, idle.stderr
    assert "nothing new" in idle.stdout
    assert _commits(lake, output) == 2


def test_iceberg_where_and_snapshot(lake: dict[str, Any], onnx_model: Trained, frame: pd.DataFrame) -> None:
    source = _iceberg_input(lake, frame, "ns.src", [(0, 450)])
    first_snapshot = source.current_snapshot().snapshot_id
    source.append(_rows(frame, 450, 900))
    done = _batch(lake, onnx_model, "iceberg:ns.src", "iceberg:ns.low", "--where", "id < 100")
    assert done.returncode == 0, done.stderr
    _check(_read(lake, "iceberg:ns.low"), onnx_model, range(100))
    old = _batch(lake, onnx_model, "iceberg:ns.src", "iceberg:ns.old", "--snapshot", str(first_snapshot))
    assert old.returncode == 0, old.stderr
    _check(_read(lake, "iceberg:ns.old"), onnx_model, range(450))


@pytest.mark.parametrize("kind", ["iceberg", "delta"])
def test_an_overwritten_input_needs_full(kind: str, lake: dict[str, Any], onnx_model: Trained,
                                         frame: pd.DataFrame, tmp_path: Path) -> None:
    if kind == "iceberg":
        source = _iceberg_input(lake, frame, "ns.src", [(0, 300)])
        input_uri, output = "iceberg:ns.src", "iceberg:ns.scores"
    else:
        _delta_input(tmp_path / "src", frame, [(0, 300)])
        input_uri, output = f"delta:{tmp_path / 'src'}", f"delta:{tmp_path / 'scores'}"
    first = _batch(lake, onnx_model, input_uri, output, "--incremental")
    assert first.returncode == 0, first.stderr
    if kind == "iceberg":
        source.overwrite(_rows(frame, 300, 500))
    else:
        from deltalake import write_deltalake

        write_deltalake(str(tmp_path / "src"), _rows(frame, 300, 500), mode="overwrite")
    refused = _batch(lake, onnx_model, input_uri, output, "--incremental")
    assert refused.returncode == 1
    assert "--full" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    commits = _commits(lake, output)
    rescored = _batch(lake, onnx_model, input_uri, output, "--incremental", "--full")
    assert rescored.returncode == 0, rescored.stderr
    _check(_read(lake, output), onnx_model, range(300, 500))
    assert _commits(lake, output) > commits
    idle = _batch(lake, onnx_model, input_uri, output, "--incremental")
    assert "nothing new" in idle.stdout, idle.stderr


def test_errors_are_one_line(lake: dict[str, Any], onnx_model: Trained, frame: pd.DataFrame) -> None:
    _iceberg_input(lake, frame, "ns.src", [(0, 100)])
    lake["catalog"].create_table("ns.other", schema=pa.schema([("id", pa.string()), ("score", pa.float64())]))
    cases = [
        (["--catalog", "nowhere"], "iceberg:ns.src", "catalog 'nowhere'"),
        ([], "iceberg:ns.missing", "does not exist"),
        (["--where", "id >>> 3"], "iceberg:ns.src", "bad --where"),
        (["--where", "nothere > 3"], "iceberg:ns.src", "bad --where"),
    ]
    for extra, input_uri, expected in cases:
        done = _batch(lake, onnx_model, input_uri, "iceberg:ns.out", *extra)
        assert done.returncode == 1, (extra, done.stdout)
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    clash = _batch(lake, onnx_model, "iceberg:ns.src", "iceberg:ns.other")
    assert clash.returncode == 1
    assert "another schema" in clash.stderr and len(clash.stderr.strip().splitlines()) == 1, clash.stderr
    assert not lake["catalog"].load_table("ns.other").snapshots()


@pytest.mark.parametrize("kind", ["iceberg", "delta"])
def test_sigkill_then_rerun_commits_every_row_once(kind: str, lake: dict[str, Any], tmp_path: Path) -> None:
    files, per_file = 16, 50
    rng = np.random.default_rng(3)
    frame = pd.DataFrame(np.round(rng.normal(size=(files * per_file, len(FEATURES))) * 1024) / 1024, columns=FEATURES)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    chunks = [(i * per_file, (i + 1) * per_file) for i in range(files)]
    if kind == "iceberg":
        _iceberg_input(lake, frame, "ns.src", chunks)
        input_uri, output = "iceberg:ns.src", "iceberg:ns.scores"
    else:
        _delta_input(tmp_path / "src", frame, chunks)
        input_uri, output = f"delta:{tmp_path / 'src'}", f"delta:{tmp_path / 'scores'}"
    model = tmp_path / "slow.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.2), model)
    staging = tmp_path / "staging"
    args = ["batch", "--model", model, "--trust-model", "--features", ",".join(FEATURES), "--input", input_uri,
            "--output", output, "--keep", "id", "--workers", "2", "--staging", staging]
    # this tree's lakeinfer, and tests.slow_model for the worker processes that unpickle the model
    path = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env = {**os.environ, **lake["env"], **path}
    job = subprocess.Popen([sys.executable, "-m", "lakeinfer", *map(str, args)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(staging.glob("*/*/part-*.parquet"))) < 3:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job staged no parts"
        time.sleep(0.05)
    workers = psutil.Process(job.pid).children(recursive=True)
    job.send_signal(signal.SIGKILL)
    job.wait()
    psutil.wait_procs(workers, timeout=10)
    staged = len(list(staging.glob("*/*/part-*.parquet")))
    assert staged < files, "the job finished before it could be killed"
    assert _commits(lake, output) == 0  # nothing visible before the commit

    rerun = run_cli(*args, env={**lake["env"], **path})
    assert rerun.returncode == 0, rerun.stderr
    assert f"{staged} resumed" in rerun.stdout
    result = _read(lake, output)
    assert result["id"].tolist() == list(range(files * per_file))
    np.testing.assert_allclose(result["prediction"].to_numpy(), frame["f0"].to_numpy() * 10.0)
    assert _commits(lake, output) == 1
    assert not list(staging.glob("*/*"))


def test_the_job_spec_takes_the_table_options(lake: dict[str, Any], onnx_model: Trained, frame: pd.DataFrame,
                                              tmp_path: Path) -> None:
    _iceberg_input(lake, frame, "ns.src", [(0, 200)])
    spec = tmp_path / "job.toml"
    spec.write_text(f"""
[model]
path = "{onnx_model.path}"
features = {FEATURES!r}

[batch]
input = "iceberg:ns.src"
output = "iceberg:ns.scores"
keep = ["id"]
workers = 1
catalog = "default"
where = "id >= 50"
incremental = true
staging = "{lake['staging']}"
""".replace("'", '"'))
    done = run_cli("batch", "--spec", spec, env=lake["env"])
    assert done.returncode == 0, done.stderr
    _check(_read(lake, "iceberg:ns.scores"), onnx_model, range(50, 200))
    idle = run_cli("batch", "--spec", spec, env=lake["env"])
    assert "nothing new" in idle.stdout, idle.stderr
