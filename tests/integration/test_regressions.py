"""Regression tests for defects found in use, each through the real command line where it showed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import FEATURES, Trained, make_frame, run_cli
from tests.integration.test_s3 import s3_env  # noqa: F401 (a fixture)


def test_repeated_keep_keeps_every_column(onnx_model: Trained, tmp_path: Path) -> None:
    frame = make_frame(40)
    frame["tag"] = [f"t{i}" for i in range(40)]
    pq.write_table(pa.Table.from_pandas(frame[["id", "tag", *FEATURES]], preserve_index=False),
                   tmp_path / "in.parquet")
    result = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", tmp_path / "in.parquet",
                     "--output", tmp_path / "out", "--keep", "id", "--keep", "tag", "--workers", "1")
    assert result.returncode == 0, result.stderr
    out = pq.read_table(tmp_path / "out")
    assert out.column_names == ["id", "tag", "prediction", "probability"]
    assert sorted(out.column("tag").to_pylist()) == sorted(f"t{i}" for i in range(40))


def test_parquet_folder_with_a_csv_file_fails_naming_it(onnx_model: Trained, datasets: dict[str, Path],
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for part in sorted(datasets["parquet"].iterdir()):
        (folder / part.name).write_bytes(part.read_bytes())
    (folder / "late.csv").write_bytes((datasets["csv"] / "data-0.csv").read_bytes())
    result = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", folder,
                     "--input-format", "parquet", "--output", tmp_path / "out", "--workers", "1")
    assert result.returncode == 1, result.stdout
    assert result.stderr.splitlines() == [
        f"lakeinfer: error: input {folder} holds {folder}/late.csv, a csv file, among its parquet files; "
        "remove it or give a glob that leaves it out"]
    assert not (tmp_path / "out").exists()


def test_missing_feature_column_lists_the_input_columns(onnx_model: Trained, datasets: dict[str, Path],
                                                        tmp_path: Path) -> None:
    result = run_cli("batch", "--model", onnx_model.path, "--features", "f0,f1,f2,f3,f9",
                     "--input", datasets["parquet"], "--output", tmp_path / "out", "--workers", "1")
    assert result.returncode == 1, result.stdout
    assert result.stderr.splitlines() == [
        f"lakeinfer: error: input file {datasets['parquet']}/data-0.parquet: missing feature column 'f9' "
        "(the input has: id, f0, f1, f2, f3, f4)"]


def _one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, result.stdout
    assert "Stack trace" not in result.stderr and "[bt]" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_xgboost_file_that_is_not_a_model_fails_in_one_line(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"not": "a model"}')
    assert _one_error_line(run_cli("inspect", "--model", bad_json)) == (
        f"lakeinfer: error: cannot load XGBoost model {bad_json}: Invalid cast, from Null to Object")
    bad_ubj = tmp_path / "bad.ubj"
    bad_ubj.write_bytes(b"garbage, not UBJSON")
    assert _one_error_line(run_cli("inspect", "--model", bad_ubj)) == (
        f"lakeinfer: error: cannot load XGBoost model {bad_ubj}: Check failed: str[0] == '{{' (g vs. {{) : "
        f"Invalid model format in: `{bad_ubj}`.")


def test_lightgbm_file_that_is_not_a_model_fails_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("tree\nversion=v4\nnum_class=1\n")
    assert _one_error_line(run_cli("inspect", "--model", bad)) == (
        f"lakeinfer: error: cannot load LightGBM model {bad}: Model file doesn't specify the label index")


def _string_label_onnx(frame, tmp_path: Path, *, zipmap: bool):  # type: ignore[no-untyped-def]
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    x = frame[FEATURES].to_numpy(np.float32)
    labels = np.array(["low", "mid", "high"])[frame["label"].to_numpy()]
    model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, labels)
    path = tmp_path / f"rf-{zipmap}.onnx"
    path.write_bytes(to_onnx(model, x[:1], options={"zipmap": zipmap}).SerializeToString())
    return model, path


@pytest.mark.parametrize("zipmap", [True, False])
def test_inspect_shows_onnx_classifier_classes(zipmap: bool, tmp_path: Path) -> None:
    model, path = _string_label_onnx(make_frame(200), tmp_path, zipmap=zipmap)
    result = run_cli("inspect", "--model", path, "--features", ",".join(FEATURES), "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["task"] == "classification"
    assert info["classes"] == model.classes_.tolist() == ["high", "low", "mid"]


def test_inspect_shows_classes_of_the_onnx_fixtures(onnx_model: Trained, onnx_zipmap_model: Trained,
                                                    frame) -> None:  # type: ignore[no-untyped-def]
    for trained in (onnx_model, onnx_zipmap_model):  # both fitted on frame["label"]: classes_ 0, 1, 2
        result = run_cli("inspect", "--model", trained.path, *trained.cli, "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["classes"] == np.unique(frame["label"]).tolist() == [0, 1, 2]


@pytest.fixture(scope="module")
def spark_one_worker():  # type: ignore[no-untyped-def]
    from lakeinfer.engines._spark_session import session

    spark = session("local[1]", {"spark.sql.shuffle.partitions": "1"})
    yield spark
    spark.stop()


def test_spark_worker_cache_tells_recipes_of_one_model_apart(  # type: ignore[no-untyped-def]
        spark_one_worker, xgboost_binary_model: Trained, frame) -> None:
    from lakeinfer import MODEL, Threshold
    from lakeinfer.engines.spark import score

    df = spark_one_worker.createDataFrame(frame[["id", *FEATURES]]).coalesce(1)
    model = str(xgboost_binary_model.path)
    plain = score(df, model, keep=["id"]).toPandas().sort_values("id")
    strict = score(df, model, keep=["id"], steps=[MODEL, Threshold(0.99)]).toPandas().sort_values("id")
    expected_strict = (xgboost_binary_model.probability[:, 1] >= 0.99).astype(np.int64)
    np.testing.assert_array_equal(plain["prediction"], xgboost_binary_model.labels)
    np.testing.assert_array_equal(strict["prediction"], expected_strict)
    assert (expected_strict != xgboost_binary_model.labels).sum() > 0  # the step changes some rows


def test_spark_reads_s3_input_through_s3a(s3_env: dict[str, str], onnx_model: Trained,  # noqa: F811
                                          datasets: dict[str, Path], tmp_path: Path) -> None:
    # Without hadoop-aws Spark cannot read s3a://, and says so: the input kept its scheme (the old
    # code read "lake/events/data-0.parquet" as a local path and failed on a missing file).
    import boto3

    client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket="lake")
    for path in sorted(datasets["parquet"].iterdir()):
        client.upload_file(str(path), "lake", f"events/{path.name}")
    result = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path,
                     *onnx_model.cli, "--input", "s3://lake/events/", "--output", tmp_path / "out", env=s3_env)
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


def test_summary_to_a_closed_pipe_is_one_error_line_after_a_complete_job(onnx_model: Trained, tmp_path: Path) -> None:
    """`lakeinfer batch --json | head -c0`: the reader is gone before the summary is printed."""
    frame = make_frame(50)
    pq.write_table(pa.Table.from_pandas(frame[["id", *FEATURES]], preserve_index=False), tmp_path / "in.parquet")
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to the pipe now fails with EPIPE
    try:
        result = subprocess.run([sys.executable, "-m", "lakeinfer", "batch", "--model", str(onnx_model.path),
                                 *map(str, onnx_model.cli), "--input", str(tmp_path / "in.parquet"),
                                 "--output", str(tmp_path / "out"), "--json"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=240)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["lakeinfer: error: the output was not all read (broken pipe)"]
    assert pq.read_table(tmp_path / "out").num_rows == 50  # the job itself was done and committed


def test_spark_command_on_a_missing_input_fails_before_starting_spark(onnx_model: Trained, tmp_path: Path) -> None:
    result = run_cli("batch", "--engine", "spark", "--master", "local[1]", "--model", onnx_model.path,
                     *onnx_model.cli, "--input", tmp_path / "nowhere", "--output", tmp_path / "out")
    assert result.returncode == 1
    # one line, and none of the JVM's start-up lines (log4j's, the launcher's) before it
    assert result.stderr.strip().splitlines() == [f"lakeinfer: error: input {tmp_path / 'nowhere'} does not exist"]
