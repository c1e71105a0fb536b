"""The Spark engine: same answers as the local engine, one model load per Python worker, Spark ML
PipelineModels run natively, and a real standalone cluster on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from lakeinfer.models import model_digest
from lakeinfer.spark.scoring import ScoreStats, score
from tests.conftest import FEATURES, Trained, make_frame, read_output, run_cli, spark_session
from tests.integration.test_s3 import s3_env  # noqa: F401 (a fixture)
from tests.serving import free_port


@pytest.fixture(scope="module")
def spark():  # type: ignore[no-untyped-def]
    return spark_session()  # shared with the table tests: one JVM with the lake jars


def test_spark_cli_equals_local_engine(onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    local = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", datasets["parquet"],
                    "--output", tmp_path / "local", "--keep", "id")
    assert local.returncode == 0, local.stderr
    on_spark = run_cli("batch", "--engine", "spark", "--master", "local[2]", "--model", onnx_model.path,
                       *onnx_model.cli, "--input", datasets["csv"], "--output", tmp_path / "spark", "--keep", "id")
    assert on_spark.returncode == 0, on_spark.stderr
    assert "scored 900 rows" in on_spark.stdout
    a, b = read_output(tmp_path / "local"), read_output(tmp_path / "spark")
    assert a["id"].tolist() == b["id"].tolist() == list(range(900))
    np.testing.assert_array_equal(a["prediction"], b["prediction"])
    np.testing.assert_allclose(np.stack(a["probability"]), np.stack(b["probability"]), atol=1e-6)
    again = run_cli("batch", "--engine", "spark", "--master", "local[2]", "--model", onnx_model.path,
                    *onnx_model.cli, "--input", datasets["csv"], "--output", tmp_path / "spark", "--keep", "id")
    assert again.returncode == 0 and "resumed" in again.stdout


def test_model_loads_once_per_python_worker(spark, xgboost_model: Trained, frame: pd.DataFrame,  # type: ignore[no-untyped-def]
                                            tmp_path: Path) -> None:
    df = spark.createDataFrame(frame[["id", *FEATURES]]).repartition(50)
    stats: list[ScoreStats] = []
    scored = score(df, str(xgboost_model.path), keep=["id"], stats=stats)
    result = scored.toPandas().sort_values("id")
    assert df.rdd.getNumPartitions() == 50
    assert 1 <= stats[0].model_loads <= stats[0].workers <= 2, (stats[0].model_loads, stats[0].workers)
    np.testing.assert_array_equal(result["prediction"], xgboost_model.labels)
    # every worker process used one copy of the model on this machine, and nothing else was left there
    root = Path(tempfile.gettempdir()) / f"lakeinfer-models-{os.getuid()}"
    digest = model_digest(xgboost_model.path)
    assert [p.name for p in root.iterdir() if p.name.startswith(digest) and ".aside-" not in p.name] == [
        f"{digest}-{hashlib.sha256(Path(xgboost_model.path).name.encode()).hexdigest()[:8]}"]
    assert not [p for p in root.iterdir() if p.name.startswith(f".{digest[:12]}-")]  # no staging folder left


def test_pipeline_model_runs_natively(spark, frame: pd.DataFrame, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import StringIndexer, VectorAssembler

    data = frame[["id", *FEATURES, "label"]].copy()
    data["segment"] = np.where(frame["f4"] > 0, "north", "south")
    data["label"] = data["label"].astype(float)
    pq.write_table(pa.Table.from_pandas(data, preserve_index=False), tmp_path / "train.parquet")
    df = spark.read.parquet(str(tmp_path / "train.parquet"))
    pipeline = Pipeline(stages=[
        StringIndexer(inputCol="segment", outputCol="segment_idx"),
        VectorAssembler(inputCols=[*FEATURES, "segment_idx"], outputCol="features"),
        LogisticRegression(maxIter=20),
    ])
    model_dir = tmp_path / "pipeline-model"
    pipeline.fit(df).write().save(str(model_dir))
    from pyspark.ml import PipelineModel
    from pyspark.ml.functions import vector_to_array

    expected = PipelineModel.load(str(model_dir)).transform(df).select(
        "id", "prediction", vector_to_array("probability").alias("probability")).toPandas().sort_values("id")

    result = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", model_dir,
                     "--input", tmp_path / "train.parquet", "--output", tmp_path / "out", "--keep", "id")
    assert result.returncode == 0, result.stderr
    out = read_output(tmp_path / "out")
    assert {"segment_idx", "features", "rawPrediction", "probability", "prediction"} <= set(out.columns)
    np.testing.assert_array_equal(out["prediction"], expected["prediction"])
    np.testing.assert_allclose(np.stack(out["probability"]), np.stack(expected["probability"]), atol=1e-12)

    # the local engine reads the same folder without a JVM and writes the same columns
    local = run_cli("batch", "--model", model_dir, "--input", tmp_path / "train.parquet", "--output", tmp_path / "l",
                    "--keep", "id")
    assert local.returncode == 0, local.stderr
    mine = read_output(tmp_path / "l")
    assert list(mine.columns) == list(out.columns)
    np.testing.assert_array_equal(mine["prediction"], out["prediction"])
    np.testing.assert_allclose(np.stack(mine["probability"]), np.stack(out["probability"]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.stack(mine["rawPrediction"]), np.stack(out["rawPrediction"]), rtol=0, atol=1e-9)


def test_bad_rows_on_spark_give_one_line(onnx_model: Trained, tmp_path: Path) -> None:
    rows = {"id": list(range(10)), **{f: [1.0] * 10 for f in FEATURES}}
    rows["f2"][7] = None
    pq.write_table(pa.table(rows), tmp_path / "in.parquet")
    result = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path,
                     *onnx_model.cli, "--input", tmp_path / "in.parquet", "--output", tmp_path / "out")
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("lakeinfer:")]
    assert len(lines) == 1 and "feature column 'f2' is null" in lines[0], result.stderr[-2000:]


@pytest.mark.parametrize("io", ["arrow", "spark"])
def test_parquet_input_runs_one_spark_job(spark, onnx_model: Trained, datasets: dict[str, Path],  # type: ignore[no-untyped-def]
                                          tmp_path: Path, io: str) -> None:
    # arrow: the units' tasks are the job; spark: the output schema comes from rows read on the
    # driver, and the write is the command's only job
    from lakeinfer import engines
    from lakeinfer.job import BatchJob
    from lakeinfer.runtime import PipelineRecipe

    tracker = spark.sparkContext.statusTracker()
    before = set(tracker.getJobIdsForGroup())
    recipe = PipelineRecipe(model_path=str(onnx_model.path), features=tuple(FEATURES))
    summary = engines.run(BatchJob(recipe=recipe, input=str(datasets["parquet"]), output=str(tmp_path / "out"),
                                   keep=("id",), engine="spark", spark_io="spark" if io == "spark" else "auto"))
    assert summary.rows == 900 and summary.io == io
    assert f"rows read and written by {'Spark' if io == 'spark' else 'pyarrow'}" in summary.line()
    assert len(set(tracker.getJobIdsForGroup()) - before) == 1
    if io == "spark":  # batches are bounded by rows only: Spark then skips sizing them after every row
        assert spark.conf.get("spark.sql.execution.arrow.maxBytesPerBatch") == str(2**31 - 1)
    else:  # a part per unit, as the local engine writes them; the model once per Python worker
        assert summary.parts == len(list((tmp_path / "out").glob("part-*.parquet"))) == 3
        assert 1 <= summary.model_loads <= summary.workers <= 2
    out = read_output(tmp_path / "out")
    np.testing.assert_array_equal(out["prediction"], onnx_model.labels)
    np.testing.assert_allclose(np.stack(out["probability"]), onnx_model.probability, atol=1e-6)


def test_spark_io_arrow_where_it_cannot_hold_is_one_line(onnx_model: Trained, datasets: dict[str, Path],
                                                         tmp_path: Path) -> None:
    result = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--spark-io", "arrow",
                     "--model", onnx_model.path, *onnx_model.cli, "--input", datasets["parquet"],
                     "--output", tmp_path / "out", "--partition-by", "prediction")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "lakeinfer: error: --spark-io arrow: --partition-by is Spark's writer's; leave --spark-io out (or give spark)"]


def test_driver_schema_and_sample_are_what_spark_reads(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from lakeinfer.spark.session import parquet_sample, read

    plain = pa.table({"id": pa.array([3, 1, 2], pa.int64()), "x": pa.array([0.5, None, 2.0], pa.float32()),
                      "name": ["a", None, "c"], "small": pa.array([1, 2, 3], pa.int16()),
                      "flag": [True, False, None], "day": pa.array([1, 2, 3], pa.date32())})
    # a timestamp is read one of several ways (the writer's flags, Spark's settings): Spark infers it
    other = plain.append_column("at", pa.array([1, 2, 3], pa.timestamp("ms")))
    for name, table in (("plain", plain), ("other", other)):
        path = str(tmp_path / f"{name}.parquet")
        pq.write_table(table, path)
        df, _, files = read(spark, path, None)
        assert df.schema == spark.read.parquet(path).schema, name
        sample = parquet_sample(df, path, files, 2)
        expected = df.limit(2).toArrow()
        assert sample is not None and sample.schema == expected.schema, name
        assert sample.to_pylist() == expected.to_pylist(), name


def _spark_class() -> list[str]:
    import pyspark

    home = os.path.dirname(pyspark.__file__)
    return [os.path.join(home, "bin", "spark-class")]


def _wait_for_worker(ui: int, timeout: float = 60) -> None:
    """Until the master's status page counts a live worker."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{ui}/json/", timeout=2).json().get("aliveworkers", 0) >= 1:
                return
        except (httpx.HTTPError, ValueError):  # the master is still starting
            pass
        time.sleep(0.2)
    raise AssertionError("no Spark worker registered with the master")


def test_standalone_cluster(onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    import pyspark

    env = {**os.environ, "SPARK_HOME": os.path.dirname(pyspark.__file__), "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(tmp_path / "work")}
    port, ui = free_port(), free_port()
    master = subprocess.Popen([*_spark_class(), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([*_spark_class(), "org.apache.spark.deploy.worker.Worker", f"spark://127.0.0.1:{port}",
                               "--host", "127.0.0.1", "--cores", "2", "--memory", "2g", "--webui-port", str(free_port())],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_worker(ui)
        result = run_cli("batch", "--engine", "spark", "--master", f"spark://127.0.0.1:{port}",
                         "--spark-conf", "spark.executor.memory=1g", "--spark-conf", "spark.cores.max=2",
                         "--model", onnx_model.path, *onnx_model.cli, "--input", datasets["parquet"],
                         "--output", tmp_path / "out", "--keep", "id", env={"SPARK_LOCAL_IP": "127.0.0.1"})
        assert result.returncode == 0, result.stderr[-3000:]
        out = read_output(tmp_path / "out")
        assert out["id"].tolist() == list(range(900))
        np.testing.assert_array_equal(out["prediction"], onnx_model.labels)
    finally:
        for proc in (worker, master):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_a_later_command_starts_its_jvm_from_the_class_archive_the_first_wrote(
        onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    from lakeinfer.spark import cds as _spark_cds

    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "LAKEINFER_SPARK_CDS": "1"}
    folder = tmp_path / "cache" / "lakeinfer" / "spark-cds"
    args = ("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path, *onnx_model.cli,
            "--input", datasets["parquet"], "--keep", "id")
    first = run_cli(*args, "--output", tmp_path / "first", env=env)
    assert first.returncode == 0, first.stderr
    # the command's output is its summary: nothing of the JVM's about the archive, on either stream
    assert first.stdout.strip().splitlines()[0].startswith("scored ") and len(first.stdout.strip().splitlines()) == 1
    assert "cds" not in first.stderr and "Error occurred during initialization of VM" not in first.stderr
    java = _spark_cds._java()
    assert java is not None
    deadline = time.monotonic() + 180  # the JVM writes it as it exits, after the command returned
    while not any(_spark_cds._whole(java, str(p)) for p in folder.glob("*.part.jsa")):
        assert time.monotonic() < deadline, sorted(p.name for p in folder.iterdir())
        time.sleep(0.5)
    # the second command, in a process that then reads its JVM's mapped files: the archive is one
    probe = ("import json, sys; from lakeinfer.cli import main; from lakeinfer.spark.session import session; "
             "code = main(sys.argv[1:]); s = session('local[1]', {}); "
             "maps = open(f'/proc/{s.sparkContext._gateway.proc.pid}/maps').read().split(); "
             "print(json.dumps([code, sorted({m for m in maps if m.endswith('.jsa')})]))")
    second = subprocess.run([sys.executable, "-c", probe, *map(str, args), "--output", str(tmp_path / "second")],
                            capture_output=True, text=True, timeout=240, env={**os.environ, **env})
    assert second.returncode == 0, second.stderr
    code, mapped = json.loads(second.stdout.strip().splitlines()[-1])
    assert code == 0, second.stderr
    [archive] = folder.glob("*.jsa")  # promoted: the candidate was renamed into place
    assert not archive.name.endswith(".part.jsa")
    assert str(archive) in mapped
    a, b = read_output(tmp_path / "first"), read_output(tmp_path / "second")
    np.testing.assert_array_equal(a["prediction"], b["prediction"])
    np.testing.assert_array_equal(np.stack(a["probability"]), np.stack(b["probability"]))






@pytest.fixture(scope="module")
def spark_one_worker():  # type: ignore[no-untyped-def]
    from lakeinfer.spark.session import session

    spark = session("local[1]", {"spark.sql.shuffle.partitions": "1"})
    yield spark
    spark.stop()


def test_spark_worker_cache_tells_recipes_of_one_model_apart(  # type: ignore[no-untyped-def]
        spark_one_worker, xgboost_binary_model: Trained, frame) -> None:
    from lakeinfer import MODEL, Threshold
    from lakeinfer.spark.scoring import score

    df = spark_one_worker.createDataFrame(frame[["id", *FEATURES]]).coalesce(1)
    model = str(xgboost_binary_model.path)
    plain = score(df, model, keep=["id"]).toPandas().sort_values("id")
    strict = score(df, model, keep=["id"], steps=[MODEL, Threshold(0.99)]).toPandas().sort_values("id")
    expected_strict = (xgboost_binary_model.probability[:, 1] >= 0.99).astype(np.int64)
    np.testing.assert_array_equal(plain["prediction"], xgboost_binary_model.labels)
    np.testing.assert_array_equal(strict["prediction"], expected_strict)
    assert (expected_strict != xgboost_binary_model.labels).sum() > 0  # the step changes some rows


def test_spark_reads_s3_input_with_pyarrow_or_through_s3a(s3_env: dict[str, str], onnx_model: Trained,  # noqa: F811
                                          datasets: dict[str, Path], tmp_path: Path) -> None:
    # Without hadoop-aws Spark cannot read s3a://, and says so: the input kept its scheme (the old
    # code read "lake/events/data-0.parquet" as a local path and failed on a missing file).
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="lake")
    for path in sorted(datasets["parquet"].iterdir()):
        client.upload_file(str(path), "lake", f"events/{path.name}")
    # the Python workers read s3:// with pyarrow, as the local engine does
    read = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path,
                   *onnx_model.cli, "--input", "s3://lake/events/", "--output", tmp_path / "arrow", "--keep", "id",
                   env=s3_env)
    assert read.returncode == 0, read.stderr[-3000:]
    assert "rows read and written by pyarrow" in read.stdout
    got = read_output(tmp_path / "arrow")
    assert got["id"].tolist() == list(range(900))
    np.testing.assert_array_equal(got["prediction"], onnx_model.labels)
    result = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--spark-io", "spark", "--model",
                     onnx_model.path, *onnx_model.cli, "--input", "s3://lake/events/", "--output", tmp_path / "out",
                     env=s3_env)
    assert result.returncode == 1, result.stdout
    assert [line for line in result.stderr.splitlines() if line.startswith("lakeinfer:")] == [
        "lakeinfer: error: Spark reads s3://lake/events/ as s3a://lake/events/ through Hadoop's s3a connector, "
        "which is not installed: pass --spark-conf spark.jars.packages=org.apache.hadoop:hadoop-aws:"
        "<Spark's Hadoop version>"]


def test_spark_rerun_after_the_input_changed_is_another_job(onnx_model: Trained, datasets: dict[str, Path],
                                                            tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for part in sorted(datasets["csv"].iterdir()):
        (folder / part.name).write_bytes(part.read_bytes())
    job = ("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path, *onnx_model.cli,
           "--input", folder, "--output", out, "--keep", "id")
    first = run_cli(*job)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("scored 900 rows"), first.stdout
    extra = make_frame(10, seed=1)
    extra["id"] += 900
    pcsv.write_csv(pa.Table.from_pandas(extra[["id", *FEATURES]], preserve_index=False), folder / "data-3.csv")
    rerun = run_cli(*job)
    assert rerun.returncode == 1, rerun.stdout
    digest = json.loads((out / "_lakeinfer_job.json").read_text())["fingerprint"]["pipeline"]["model_digest"]
    assert [line for line in rerun.stderr.splitlines() if line.startswith("lakeinfer:")] == [
        f"lakeinfer: error: output folder {out} holds another job's results (model {digest[:12]}, "
        f"input {folder}); choose another folder or pass --overwrite"]
    replaced = run_cli(*job, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert replaced.stdout.startswith("scored 910 rows"), replaced.stdout
    assert sorted(pq.read_table(out).column("id").to_pylist()) == list(range(910))


def test_spark_command_on_a_missing_input_fails_before_starting_spark(onnx_model: Trained, tmp_path: Path) -> None:
    result = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path,
                     *onnx_model.cli, "--input", tmp_path / "nowhere", "--output", tmp_path / "out")
    assert result.returncode == 1
    # one line, and none of the JVM's start-up lines (log4j's, the launcher's) before it
    assert result.stderr.strip().splitlines() == [f"lakeinfer: error: input {tmp_path / 'nowhere'} does not exist"]
