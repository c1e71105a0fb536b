"""Iceberg (a pyiceberg SQL catalog on SQLite, as Iceberg's JDBC catalog on Spark) and Delta tables
on the Spark engine: read, write, incremental and idle reruns, kill -9 and rerun, an overwritten
input, and a table the local engine wrote continued by Spark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest

from lakeinfer import batch
from lakeinfer.errors import InputError
from tests.conftest import FEATURES, Trained, run_cli, spark_session
from tests.slow_model import SlowEcho

pytest.importorskip("pyiceberg")
pytest.importorskip("deltalake")

ROOT = Path(__file__).resolve().parents[2]
CATALOG = "sparklake"


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One SQL catalog on a SQLite file with a local warehouse, configured the pyiceberg way (env
    variables) for this process, the CLI's and Spark's; one Spark session for the module."""
    from pyiceberg.catalog import load_catalog

    root = tmp_path_factory.mktemp("sparklake")
    (root / "warehouse").mkdir()
    props = {"type": "sql", "uri": f"sqlite:///{root / 'catalog.db'}", "warehouse": f"file://{root / 'warehouse'}"}
    env = {f"PYICEBERG_CATALOG__{CATALOG.upper()}__{k.upper()}": v for k, v in props.items()}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    catalog = load_catalog(CATALOG, **props)
    catalog.create_namespace("ns")
    yield {"env": env, "catalog": catalog, "root": root, "spark": spark_session()}
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _rows(frame: pd.DataFrame, start: int, stop: int) -> pa.Table:
    return pa.Table.from_pandas(frame[["id", *FEATURES]].iloc[start:stop], preserve_index=False)


class Tables:
    """An input and an output table of one kind, with unique names, and what to ask them."""

    def __init__(self, lake: dict[str, Any], kind: str) -> None:
        self.lake, self.kind = lake, kind
        suffix = uuid.uuid4().hex[:8]
        if kind == "iceberg":
            self.input, self.output = f"iceberg:ns.src_{suffix}", f"iceberg:ns.out_{suffix}"
        else:
            self.input = f"delta:{lake['root'] / ('src_' + suffix)}"
            self.output = f"delta:{lake['root'] / ('out_' + suffix)}"

    def append(self, rows: pa.Table, *, mode: str = "append") -> None:
        if self.kind == "iceberg":
            name = self.input[len("iceberg:"):]
            table = self.lake["catalog"].create_table_if_not_exists(name, schema=rows.schema)
            table.overwrite(rows) if mode == "overwrite" else table.append(rows)
        else:
            from deltalake import write_deltalake

            write_deltalake(self.input[len("delta:"):], rows, mode=mode)

    def read(self) -> pd.DataFrame:
        if self.kind == "iceberg":
            table = self.lake["catalog"].load_table(self.output[len("iceberg:"):]).scan().to_arrow()
        else:
            from deltalake import DeltaTable

            table = pa.table(DeltaTable(self.output[len("delta:"):]).to_pyarrow_table())
        return table.to_pandas().sort_values("id").reset_index(drop=True)

    def commits(self) -> list[dict[str, str]]:
        """The output table's commits, oldest first, each with its properties."""
        if self.kind == "iceberg":
            from pyiceberg.exceptions import NoSuchTableError

            try:
                table = self.lake["catalog"].load_table(self.output[len("iceberg:"):])
            except NoSuchTableError:
                return []
            return [dict(s.summary.additional_properties) for s in table.snapshots()]
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            history = DeltaTable(self.output[len("delta:"):]).history()
        except TableNotFoundError:  # none yet, or only the empty _delta_log a killed job began
            return []
        return [{"userMetadata": h.get("userMetadata", ""), **{k: str(v) for k, v in h.items()}}
                for h in reversed(history)]


def _check(result: pd.DataFrame, trained: Trained, ids: range) -> None:
    """Every row once, each with the framework's own prediction."""
    assert result["id"].tolist() == list(ids)
    assert trained.labels is not None and trained.probability is not None
    np.testing.assert_array_equal(result["prediction"].to_numpy(), trained.labels[list(ids)])
    np.testing.assert_allclose(np.stack(result["probability"].to_numpy()), trained.probability[list(ids)], atol=1e-6)


def _run(t: Tables, trained: Trained, engine: str = "spark", **options: Any) -> Any:
    extra = {"master": "local[2]"} if engine == "spark" else {"workers": 1}
    return batch(t.input, t.output, model=str(trained.path), features=FEATURES, keep=["id"], engine=engine,
                 catalog=CATALOG, **extra, **options)


@pytest.mark.parametrize("kind", ["iceberg", "delta"])
def test_spark_reads_writes_incremental_and_idle_reruns(kind: str, lake: dict[str, Any], onnx_model: Trained,
                                                        frame: pd.DataFrame) -> None:
    t = Tables(lake, kind)
    t.append(_rows(frame, 0, 300))
    t.append(_rows(frame, 300, 600))
    first = _run(t, onnx_model)
    assert first.rows == 600 and first.note is None and first.job_id
    _check(t.read(), onnx_model, range(600))
    commits = t.commits()
    assert len(commits) == 1 and first.job_id in str(commits[0])

    again = _run(t, onnx_model)  # the same job: found in the table's history
    assert again.note == "already committed" and again.rows == 600 and again.job_id == first.job_id
    assert len(t.commits()) == 1

    t.append(_rows(frame, 600, 900))
    more = _run(t, onnx_model, incremental=True)
    assert more.rows == 300 and more.note is None
    _check(t.read(), onnx_model, range(900))
    assert len(t.commits()) == 2

    idle = _run(t, onnx_model, incremental=True)
    assert idle.note == "nothing new" and len(t.commits()) == 2


def test_spark_iceberg_where_and_snapshot(lake: dict[str, Any], onnx_model: Trained, frame: pd.DataFrame) -> None:
    t = Tables(lake, "iceberg")
    t.append(_rows(frame, 0, 450))
    first = lake["catalog"].load_table(t.input[len("iceberg:"):]).current_snapshot().snapshot_id
    t.append(_rows(frame, 450, 900))
    done = _run(t, onnx_model, where="id >= 400 and id < 500")
    assert done.rows == 100
    _check(t.read(), onnx_model, range(400, 500))
    old = Tables(lake, "iceberg")
    old.input = t.input
    _run(old, onnx_model, snapshot=first)
    _check(old.read(), onnx_model, range(450))


@pytest.mark.parametrize("kind", ["iceberg", "delta"])
def test_spark_overwritten_input_needs_full(kind: str, lake: dict[str, Any], onnx_model: Trained,
                                            frame: pd.DataFrame) -> None:
    t = Tables(lake, kind)
    t.append(_rows(frame, 0, 300))
    _run(t, onnx_model, incremental=True)
    t.append(_rows(frame, 300, 500), mode="overwrite")
    with pytest.raises(InputError, match="--full"):
        _run(t, onnx_model, incremental=True)
    refused = run_cli("batch", "--engine", "spark", "--model", onnx_model.path, *onnx_model.cli, "--input",
                      t.input, "--output", t.output, "--keep", "id", "--catalog", CATALOG, "--incremental",
                      env=lake["env"])
    assert refused.returncode == 1
    assert "--full" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    before = len(t.commits())
    rescored = _run(t, onnx_model, incremental=True, full=True)
    assert rescored.rows == 200
    _check(t.read(), onnx_model, range(300, 500))
    assert len(t.commits()) > before
    assert _run(t, onnx_model, incremental=True).note == "nothing new"


@pytest.mark.parametrize("kind", ["iceberg", "delta"])
def test_local_then_spark_continue_one_table(kind: str, lake: dict[str, Any], onnx_model: Trained,
                                             frame: pd.DataFrame) -> None:
    t = Tables(lake, kind)
    t.append(_rows(frame, 0, 400))
    local = _run(t, onnx_model, engine="local", incremental=True)
    assert local.rows == 400
    # the same job on Spark: the local engine's commit is found, nothing is written twice
    same = _run(t, onnx_model, incremental=True)
    assert same.note == "nothing new" and len(t.commits()) == 1

    t.append(_rows(frame, 400, 700))
    on_spark = _run(t, onnx_model, incremental=True)
    assert on_spark.rows == 300 and on_spark.note is None
    _check(t.read(), onnx_model, range(700))

    t.append(_rows(frame, 700, 900))  # and back: the local engine continues from Spark's commit
    back = _run(t, onnx_model, engine="local", incremental=True)
    assert back.rows == 200
    _check(t.read(), onnx_model, range(900))
    assert len(t.commits()) == 3


def test_one_job_is_already_committed_on_either_engine(lake: dict[str, Any], onnx_model: Trained,
                                                       frame: pd.DataFrame) -> None:
    t = Tables(lake, "delta")
    t.append(_rows(frame, 0, 250))
    spark_job = _run(t, onnx_model)
    local_again = _run(t, onnx_model, engine="local")
    assert local_again.note == "already committed" and local_again.job_id == spark_job.job_id
    assert local_again.rows == 250 and len(t.commits()) == 1


def _data_files(t: Tables) -> list[Path]:
    if t.kind == "iceberg":
        from pyiceberg.exceptions import NoSuchTableError

        try:  # the job creates the table, then Spark's tasks write into its location
            location = t.lake["catalog"].load_table(t.output[len("iceberg:"):]).location()
        except NoSuchTableError:
            return []
        return list(Path(location.removeprefix("file://")).glob("data/**/*.parquet"))
    return list(Path(t.output[len("delta:"):]).glob("*.parquet"))


@pytest.mark.parametrize("kind", ["iceberg", "delta"])
def test_spark_sigkill_then_rerun_commits_every_row_once(kind: str, lake: dict[str, Any], tmp_path: Path) -> None:
    files, per_file = 6, 40
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(np.round(rng.normal(size=(files * per_file, len(FEATURES))) * 1024) / 1024, columns=FEATURES)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    t = Tables(lake, kind)
    for i in range(files):
        t.append(_rows(frame, i * per_file, (i + 1) * per_file))
    model = tmp_path / "slow.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.1), model)
    args = ["batch", "--engine", "spark", "--master", "local[2]", "--model", model, "--trust-model", "--features",
            ",".join(FEATURES), "--input", t.input, "--output", t.output, "--keep", "id", "--catalog", CATALOG,
            "--batch-size", "10"]
    # this tree's lakeinfer, and tests.slow_model for the Python workers that unpickle the model
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    job = subprocess.Popen([sys.executable, "-m", "lakeinfer", *map(str, args)], start_new_session=True,
                           env={**os.environ, **lake["env"], "PYTHONPATH": path},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not _data_files(t):  # Spark's tasks have started writing the output's data files
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job wrote no data file"
        time.sleep(0.05)
    family = [psutil.Process(job.pid), *psutil.Process(job.pid).children(recursive=True)]
    os.killpg(job.pid, signal.SIGKILL)  # the driver, its JVM and the Python workers
    job.wait()
    psutil.wait_procs(family, timeout=20)
    assert t.commits() == [], "the job committed before it could be killed"
    assert _data_files(t)  # written, never published

    rerun = batch(t.input, t.output, model=str(model), trust=True, features=FEATURES, keep=["id"], engine="spark",
                  master="local[2]", catalog=CATALOG)
    assert rerun.rows == files * per_file
    result = t.read()
    assert result["id"].tolist() == list(range(files * per_file))
    np.testing.assert_allclose(result["prediction"].to_numpy(), frame["f0"].to_numpy() * 10.0)
    assert len(t.commits()) == 1


def test_missing_jars_fail_in_one_line(lake: dict[str, Any], onnx_model: Trained, frame: pd.DataFrame) -> None:
    t = Tables(lake, "iceberg")
    t.append(_rows(frame, 0, 10))
    # a runtime version Maven Central does not have: Spark cannot start with it
    env = {**lake["env"], "LAKEINFER_ICEBERG_VERSION": "0.0.1"}
    done = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path,
                   *onnx_model.cli, "--input", t.input, "--output", t.output, "--catalog", CATALOG, env=env)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # no launcher stack, no Ivy report: the one line
    assert lines[0].startswith("lakeinfer: error: Spark did not start with the jars"), lines[0]
    assert "unresolved dependency: org.apache.iceberg#iceberg-spark-runtime-4.1_2.13;0.0.1: not found" in lines[0]
