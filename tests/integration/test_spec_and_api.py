"""A job spec file drives the whole job; the Python API returns the summary."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakeinfer
from tests.conftest import FEATURES, Trained, make_frame, read_output, run_cli


@pytest.mark.parametrize("kind", ["toml", "yaml"])
def test_spec_file_drives_a_job(kind: str, xgboost_model: Trained, tmp_path: Path) -> None:
    frame = make_frame(200).rename(columns={"f0": "first"})
    frame.loc[5, "f1"] = np.nan
    table = pa.Table.from_pandas(frame[["id", "first", *FEATURES[1:]]], preserve_index=False)
    table = table.set_column(2, "f1", pa.array(frame["f1"].to_numpy(), from_pandas=True))  # NaN -> null
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "in.parquet")
    if kind == "toml":
        text = f"""
[model]
path = "{xgboost_model.path}"

[[pipeline.steps]]
op = "rename"
columns = {{ first = "f0" }}

[[pipeline.steps]]
op = "fill_null"
values = {{ f1 = 0.0 }}

[[pipeline.steps]]
op = "model"

[[pipeline.steps]]
op = "label_map"
labels = ["low", "mid", "high"]

[batch]
input = "data"
output = "out"
keep = ["id"]
workers = 2
"""
    else:
        text = f"""
model: {{path: "{xgboost_model.path}"}}
pipeline:
  steps:
    - {{op: rename, columns: {{first: f0}}}}
    - {{op: fill_null, values: {{f1: 0.0}}}}
    - {{op: model}}
    - {{op: label_map, labels: [low, mid, high]}}
batch: {{input: data, output: out, keep: [id], workers: 2}}
"""
    spec = tmp_path / f"job.{kind}"
    spec.write_text(text)
    result = run_cli("batch", "--spec", spec)
    assert result.returncode == 0, result.stderr
    out = read_output(tmp_path / "out")
    assert list(out.columns) == ["id", "prediction", "probability"]
    expected = np.array(["low", "mid", "high"])[xgboost_model.labels[:200]]
    # row 5 had its f1 replaced by 0.0, so it may differ; every other row matches the framework
    mask = np.arange(200) != 5
    assert (out["prediction"].to_numpy()[mask] == expected[mask]).all()


def test_bad_spec_is_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "job.toml"
    spec.write_text("[model]\npath = 'm.onnx'\ncolour = 'blue'\n")
    result = run_cli("batch", "--spec", spec)
    assert result.returncode == 1
    assert "model: unknown key 'colour'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_api_counts_one_model_load_per_worker(onnx_model: Trained, frame, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    data.mkdir()
    table = pa.Table.from_pandas(frame[["id", *FEATURES]], preserve_index=False)
    pq.write_table(table, data / "in.parquet", row_group_size=30)  # 30 row groups
    summary = lakeinfer.batch(str(data), str(tmp_path / "out"), model=str(onnx_model.path), features=FEATURES,
                              keep=["id"], workers=2, batch_size=16, unit_rows=30)
    assert summary.parts == 30
    assert summary.workers == 2
    assert summary.model_loads == 2  # not 30: each worker process loaded it once
    assert summary.rows == 900
    np.testing.assert_array_equal(read_output(tmp_path / "out")["prediction"], onnx_model.labels)


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
