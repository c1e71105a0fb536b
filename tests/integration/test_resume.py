"""A job killed with SIGKILL and rerun gives every input row exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import joblib
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import FEATURES, read_output, run_cli
from tests.slow_model import SlowClassifier

ROOT = Path(__file__).resolve().parents[2]
FILES, ROWS_PER_FILE = 40, 100


def _input(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(FILES):
        data = {"id": np.arange(i * ROWS_PER_FILE, (i + 1) * ROWS_PER_FILE)}
        data.update({f: rng.normal(size=ROWS_PER_FILE) for f in FEATURES})
        pq.write_table(pa.table(data), folder / f"in-{i:03d}.parquet")
    return folder


def test_sigkill_then_rerun_gives_every_row_exactly_once(tmp_path: Path) -> None:
    model = tmp_path / "slow.joblib"
    joblib.dump(SlowClassifier(len(FEATURES), delay=0.1), model)
    data, out = _input(tmp_path / "in"), tmp_path / "out"
    args = ["batch", "--model", model, "--trust-model", "--features", ",".join(FEATURES), "--input", data,
            "--output", out, "--keep", "id", "--workers", "2", "--batch-size", "50"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    job = subprocess.Popen([sys.executable, "-m", "lakeinfer", *map(str, args)], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob("part-*.parquet"))) < 3:
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job wrote no parts"
        time.sleep(0.05)
    workers = psutil.Process(job.pid).children(recursive=True)
    job.send_signal(signal.SIGKILL)
    job.wait()
    # the workers notice their parent is gone and exit instead of running on as orphans
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, alive
    finished = len(list(out.glob("part-*.parquet")))
    assert finished < FILES, "the job finished before it could be killed"
    assert not (out / "_SUCCESS").exists()

    rerun = run_cli(*args, env={"PYTHONPATH": str(ROOT)})
    assert rerun.returncode == 0, rerun.stderr
    assert f"{finished} resumed" in rerun.stdout
    result = read_output(out)
    assert result["id"].tolist() == list(range(FILES * ROWS_PER_FILE))
    assert (out / "_SUCCESS").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_rerun_of_a_finished_job_changes_nothing(tmp_path: Path, onnx_model, datasets) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    args = ["batch", "--model", onnx_model.path, *onnx_model.cli, "--input", datasets["parquet"],
            "--output", out, "--keep", "id", "--workers", "1"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")}
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "3 resumed" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*")} == stamps
    assert len(read_output(out)) == 900
