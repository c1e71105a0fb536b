"""The Spark engine on a real Spark Connect server (started from pyspark's own jars, once for the
module): the same answers as ``--master local[2]`` and the framework, the model shipped as an
artifact named by its digest and loaded once per Python worker, the folder's record, Iceberg
tables with incremental runs and a killed client's rerun, Structured Streaming from Kafka, a newer
Spark's PipelineModel, and one line for a connector the server lacks.

Every job runs in a ``lakeinfer`` process of its own: a Spark Connect client marks its whole
process as a Connect one, which the classic sessions of other test modules must not see.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
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
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeinfer.models import model_digest
from lakeinfer.spark import tables as spark_tables
from lakeinfer.stream.spark import _connector
from tests.conftest import FEATURES, Trained, read_output, run_cli
from tests.kafka_helpers import consume, create_topics, produce, records, stream_cli
from tests.serving import free_port
from tests.slow_model import SlowEcho

pytest.importorskip("pyiceberg")

ROOT = Path(__file__).resolve().parents[2]
CATALOG = "connectlake"
# this tree's lakeinfer, and tests.slow_model for the server's Python workers that unpickle a model
PYTHONPATH = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A Spark Connect server on local[2] with the Iceberg and Kafka jars (not Delta's), and a pyiceberg
    SQL catalog on SQLite that the CLI and the server share."""
    from pyiceberg.catalog import load_catalog
    from pyspark.find_spark_home import _find_spark_home

    root = tmp_path_factory.mktemp("connect")
    (root / "warehouse").mkdir()
    props = {"type": "sql", "uri": f"sqlite:///{root / 'catalog.db'}", "warehouse": f"file://{root / 'warehouse'}"}
    catalog = load_catalog(CATALOG, **props)
    catalog.create_namespace("ns")
    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 (open for the server's whole life)
    proc = subprocess.Popen(
        [os.path.join(_find_spark_home(), "bin", "spark-submit"), "--class",
         "org.apache.spark.sql.connect.service.SparkConnectServer", "--master", "local[2]",
         "--conf", f"spark.connect.grpc.binding.port={port}", "--conf", "spark.ui.enabled=false",
         "--conf", "spark.sql.shuffle.partitions=4",
         "--packages", ",".join([*spark_tables.packages({"iceberg"}), _connector()]),
         "--conf", "spark.sql.extensions=org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONPATH": PYTHONPATH})
    deadline = time.monotonic() + 180
    while not _listening(port):
        assert proc.poll() is None, (root / "server.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the Spark Connect server did not start"
        time.sleep(0.2)
    env = {f"PYICEBERG_CATALOG__{CATALOG.upper()}__{k.upper()}": v for k, v in props.items()}
    yield {"url": f"sc://127.0.0.1:{port}", "catalog": catalog, "root": root, "env": env}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _cli(server: dict[str, Any], *args: Any) -> subprocess.CompletedProcess[str]:
    return run_cli("batch", "--engine", "spark", "--remote", server["url"], *args, "--json",
                   env={**server["env"], "PYTHONPATH": PYTHONPATH})


def _summary(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_files_equal_classic_spark_and_the_framework(server: dict[str, Any], sklearn_model: Trained,
                                                     datasets: dict[str, Path], tmp_path: Path) -> None:
    on_connect = _summary(_cli(server, "--model", sklearn_model.path, *sklearn_model.cli, "--input",
                               datasets["parquet"], "--output", tmp_path / "connect", "--keep", "id"))
    assert on_connect["rows"] == 900 and on_connect["rows_skipped"] == 0
    # the model reached each Python worker once: at most one load per worker, two workers at most
    assert 1 <= on_connect["model_loads"] == on_connect["workers"] <= 2, on_connect
    classic = run_cli("batch", "--engine", "spark", "--master", "local[2]", "--model", sklearn_model.path,
                      *sklearn_model.cli, "--input", datasets["parquet"], "--output", tmp_path / "classic",
                      "--keep", "id", "--json")
    assert _summary(classic)["rows"] == 900
    a, b = read_output(tmp_path / "connect"), read_output(tmp_path / "classic")
    assert a["id"].tolist() == b["id"].tolist() == list(range(900))
    assert sklearn_model.labels is not None and sklearn_model.probability is not None
    np.testing.assert_array_equal(a["prediction"], sklearn_model.labels)
    np.testing.assert_array_equal(a["prediction"], b["prediction"])
    np.testing.assert_allclose(np.stack(a["probability"]), np.stack(b["probability"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.stack(a["probability"]), sklearn_model.probability, rtol=0, atol=1e-9)

    # the record went through the output's file system, and the model through a digest-named artifact
    record = json.loads((tmp_path / "connect" / "_lakeinfer_job.json").read_text())
    assert record["fingerprint"]["pipeline"]["model_digest"] == model_digest(sklearn_model.path)
    assert json.loads((tmp_path / "connect" / "_SUCCESS").read_text())["rows"] == 900
    assert f"lakeinfer-{model_digest(sklearn_model.path)[:32]}-rf.joblib" in (server["root"] / "server.log").read_text()

    # SPARK_REMOTE names the server too; the same job is found done
    again = run_cli("batch", "--engine", "spark", "--model", sklearn_model.path, *sklearn_model.cli, "--input",
                    datasets["parquet"], "--output", tmp_path / "connect", "--keep", "id",
                    env={"SPARK_REMOTE": server["url"]})
    assert again.returncode == 0 and "resumed" in again.stdout, again.stderr[-2000:]


def _rows(frame: pd.DataFrame, start: int, stop: int) -> pa.Table:
    return pa.Table.from_pandas(frame[["id", *FEATURES]].iloc[start:stop], preserve_index=False)


def _commits(server: dict[str, Any], name: str) -> list[dict[str, str]]:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = server["catalog"].load_table(name)
    except NoSuchTableError:
        return []
    return [dict(s.summary.additional_properties) for s in table.snapshots()]


def _read(server: dict[str, Any], name: str) -> pd.DataFrame:
    table = server["catalog"].load_table(name).scan().to_arrow()
    return table.to_pandas().sort_values("id").reset_index(drop=True)


def test_iceberg_incremental_and_idle_reruns(server: dict[str, Any], onnx_model: Trained,
                                             frame: pd.DataFrame) -> None:
    suffix = uuid.uuid4().hex[:8]
    source = server["catalog"].create_table(f"ns.src_{suffix}", schema=_rows(frame, 0, 1).schema)
    source.append(_rows(frame, 0, 300))
    source.append(_rows(frame, 300, 600))
    args = ["--model", onnx_model.path, *onnx_model.cli, "--input", f"iceberg:ns.src_{suffix}", "--output",
            f"iceberg:ns.out_{suffix}", "--keep", "id", "--catalog", CATALOG, "--incremental"]
    first = _summary(_cli(server, *args))
    assert first["rows"] == 600 and first["job_id"] and 1 <= first["model_loads"] <= 2
    source.append(_rows(frame, 600, 900))
    more = _summary(_cli(server, *args))
    assert more["rows"] == 300 and more["note"] is None
    idle = _summary(_cli(server, *args))
    assert idle["note"] == "nothing new"
    result = _read(server, f"ns.out_{suffix}")
    assert result["id"].tolist() == list(range(900))
    assert onnx_model.labels is not None and onnx_model.probability is not None
    np.testing.assert_array_equal(result["prediction"], onnx_model.labels)
    np.testing.assert_allclose(np.stack(result["probability"]), onnx_model.probability, atol=1e-6)
    commits = _commits(server, f"ns.out_{suffix}")
    assert len(commits) == 2 and first["job_id"] in str(commits[0])


def test_killed_client_then_rerun_commits_every_row_once(server: dict[str, Any], tmp_path: Path) -> None:
    files, per_file = 6, 40
    rng = np.random.default_rng(5)
    frame = pd.DataFrame(np.round(rng.normal(size=(files * per_file, len(FEATURES))) * 1024) / 1024, columns=FEATURES)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    suffix = uuid.uuid4().hex[:8]
    source = server["catalog"].create_table(f"ns.src_{suffix}", schema=_rows(frame, 0, 1).schema)
    for i in range(files):
        source.append(_rows(frame, i * per_file, (i + 1) * per_file))
    model = tmp_path / "slow.joblib"
    # slow enough that the server is still running the killed client's job when the rerun joins
    joblib.dump(SlowEcho(len(FEATURES), delay=0.5), model)
    args = ["batch", "--engine", "spark", "--remote", server["url"], "--model", model, "--trust-model",
            "--features", ",".join(FEATURES), "--input", f"iceberg:ns.src_{suffix}", "--output",
            f"iceberg:ns.out_{suffix}", "--keep", "id", "--catalog", CATALOG, "--batch-size", "10"]
    job = subprocess.Popen([sys.executable, "-m", "lakeinfer", *map(str, args)], start_new_session=True,
                           env={**os.environ, **server["env"], "PYTHONPATH": PYTHONPATH},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _data_files(server, f"ns.out_{suffix}"):  # the server's tasks have started writing
        assert job.poll() is None, job.communicate()
        assert time.monotonic() < deadline, "the job wrote no data file"
        time.sleep(0.05)
    os.killpg(job.pid, signal.SIGKILL)  # the client: the server goes on with what it started
    job.wait()
    assert _commits(server, f"ns.out_{suffix}") == [], "the job committed before it could be killed"

    # the rerun interrupts the killed client's job, still running on the server; or, where the
    # server finished that job first (seen under a loaded machine), finds it committed: either way
    # one commit, every row once
    rerun = _summary(run_cli(*args, "--json", env={**server["env"], "PYTHONPATH": PYTHONPATH}))
    assert rerun["rows"] == files * per_file and rerun["note"] in (None, "already committed"), rerun
    result = _read(server, f"ns.out_{suffix}")
    assert result["id"].tolist() == list(range(files * per_file))
    np.testing.assert_allclose(result["prediction"].to_numpy(), frame["f0"].to_numpy() * 10.0)
    assert len(_commits(server, f"ns.out_{suffix}")) == 1


def _data_files(server: dict[str, Any], name: str) -> list[str]:
    from pyiceberg.exceptions import NoSuchTableError

    try:
        location = server["catalog"].load_table(name).location()
    except NoSuchTableError:
        return []
    return glob.glob(f"{location.removeprefix('file://')}/data/**/*.parquet", recursive=True)


FIT = """
import os, sys, traceback
try:
    exec(open(sys.argv[3]).read())
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(1)
sys.stdout.flush()
os._exit(0)
"""
FIT_BODY = """
import os, sys
import numpy as np, pandas as pd
from pyspark.sql import SparkSession
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.feature import StringIndexer, VectorAssembler
from pyspark.ml.functions import vector_to_array
folder = sys.argv[2]
spark = SparkSession.builder.master("local[1]").config("spark.ui.enabled", "false").getOrCreate()
rng = np.random.default_rng(3)
n = 400
plan = rng.choice(["basic", "plus", "pro"], n)
x, y = np.round(rng.normal(size=n), 6), np.round(rng.normal(size=n), 6)
rows = pd.DataFrame({"id": np.arange(n), "plan": plan, "x": x, "y": y,
                     "label": ((x + (plan == "pro") - y) > 0).astype(float)})
rows.to_parquet(f"{folder}/rows.parquet")
df = spark.read.parquet(f"{folder}/rows.parquet")
stages = [StringIndexer(inputCol="plan", outputCol="plan_i"),
          VectorAssembler(inputCols=["plan_i", "x", "y"], outputCol="features"), LogisticRegression(maxIter=20)]
Pipeline(stages=stages).fit(df).write().overwrite().save(f"{folder}/model")
out = PipelineModel.load(f"{folder}/model").transform(df)
import pyarrow.parquet as pq
pq.write_table(out.select("id", "prediction", vector_to_array("probability").alias("probability")).toArrow(),
               f"{folder}/expected.parquet")
"""


def test_newer_spark_pipeline_model_scored_by_lakeinfers_reader(server: dict[str, Any], tmp_path: Path) -> None:
    # fitted by Spark in a process of its own (a classic session: quicker to fit than over Connect)
    (tmp_path / "fit.py").write_text(FIT)
    (tmp_path / "fit_body.py").write_text(FIT_BODY)
    fitted = subprocess.run([sys.executable, str(tmp_path / "fit.py"), server["url"], str(tmp_path),
                             str(tmp_path / "fit_body.py")], capture_output=True, text=True, timeout=240)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    newer = tmp_path / "newer"
    shutil.copytree(tmp_path / "model", newer)
    for crc in glob.glob(str(newer / "**" / ".*.crc"), recursive=True):
        Path(crc).unlink()
    for part in glob.glob(str(newer / "**" / "metadata" / "part-*"), recursive=True):
        meta = json.loads(Path(part).read_text())
        meta["sparkVersion"] = "4.3.0"  # as pyspark 4.3 writes it: a param that 4.1 does not know
        if "LogisticRegression" in meta["class"]:
            meta["defaultParamMap"]["pruneTree"] = True
        Path(part).write_text(json.dumps(meta) + "\n")
    done = _cli(server, "--model", newer, "--input", tmp_path / "rows.parquet", "--output", tmp_path / "out",
                "--keep", "id")
    summary = _summary(done)
    assert summary["rows"] == 400 and summary["model_loads"] >= 1
    assert len(summary["remarks"]) == 1 and "scored with lakeinfer's own reader" in summary["remarks"][0]
    got = read_output(tmp_path / "out")
    expected = pd.read_parquet(tmp_path / "expected.parquet").sort_values("id").reset_index(drop=True)
    np.testing.assert_array_equal(got["prediction"], expected["prediction"])
    np.testing.assert_allclose(np.stack(got["probability"]), np.stack(expected["probability"]), rtol=0, atol=1e-9)


def test_a_connector_the_server_lacks_is_one_line(server: dict[str, Any], onnx_model: Trained,
                                                  datasets: dict[str, Path], tmp_path: Path) -> None:
    done = _cli(server, "--model", onnx_model.path, *onnx_model.cli, "--input", datasets["parquet"],
                "--output", f"delta:{tmp_path / 'out'}")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "the Spark Connect server has no delta connector" in lines[0]
    assert f"--packages {','.join(spark_tables.packages({'delta'}))}" in lines[0]
    nobody = run_cli("batch", "--engine", "spark", "--remote", f"sc://127.0.0.1:{free_port()}", "--model",
                     onnx_model.path, *onnx_model.cli, "--input", datasets["parquet"], "--output", tmp_path / "o")
    assert nobody.returncode == 1 and "no Spark Connect server answers at" in nobody.stderr
    assert len(nobody.stderr.strip().splitlines()) == 1


def test_structured_streaming_from_kafka(server: dict[str, Any], broker: str, onnx_model: Trained,
                                         tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, sink = f"in-{suffix}", f"out-{suffix}"
    create_topics(broker, source, sink)
    sent = records(300)
    produce(broker, source, sent)
    proc = stream_cli("--engine", "spark", "--remote", server["url"], "--checkpoint", tmp_path / "checkpoint",
                      "--trigger", "1 second", "--model", onnx_model.path, *onnx_model.cli,
                      "--bootstrap-servers", broker, "--input-topic", source, "--output-topic", sink, "--keep", "id")
    got = consume(broker, sink, expect=300, timeout=180, settle=2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    values = {json.loads(m.value())["id"]: json.loads(m.value()) for m in got}
    assert sorted(values) == list(range(300)), err[-3000:]
    assert all(m.key() == str(json.loads(m.value())["id"]).encode() for m in got)
    table = pa.Table.from_pylist([json.loads(v) for _, v in sent])
    pq.write_table(table, tmp_path / "rows.parquet")
    local = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", tmp_path / "rows.parquet",
                    "--output", tmp_path / "out", "--keep", "id")
    assert local.returncode == 0, local.stderr
    batch = read_output(tmp_path / "out")
    assert [values[i]["prediction"] for i in range(300)] == batch["prediction"].tolist()


def test_model_read_from_a_path_on_the_cluster(server: dict[str, Any], datasets: dict[str, Path],
                                               frame: pd.DataFrame, tmp_path: Path) -> None:
    model, on_cluster = tmp_path / "echo.joblib", tmp_path / "volume" / "echo.joblib"
    joblib.dump(SlowEcho(len(FEATURES), delay=0.0, load_delay=0.001), model)  # bytes of this test's own
    on_cluster.parent.mkdir()
    shutil.copy(model, on_cluster)
    args = ["--model", model, "--trust-model", "--features", ",".join(FEATURES), "--input", datasets["parquet"],
            "--keep", "id"]
    done = _summary(_cli(server, *args, "--output", tmp_path / "out", "--model-path-on-cluster", on_cluster))
    assert done["rows"] == 900 and 1 <= done["model_loads"] <= 2
    np.testing.assert_allclose(read_output(tmp_path / "out")["prediction"], frame["f0"] * 10.0)
    assert f"lakeinfer-{model_digest(model)[:32]}" not in (server["root"] / "server.log").read_text()  # not shipped
    joblib.dump(SlowEcho(len(FEATURES), delay=0.0, load_delay=0.002), on_cluster)  # another model there
    refused = _cli(server, *args, "--output", tmp_path / "other", "--model-path-on-cluster", on_cluster)
    assert refused.returncode == 1
    assert f"is not the one given as the model (digest {model_digest(model)[:12]})" in refused.stderr.splitlines()[-1]
