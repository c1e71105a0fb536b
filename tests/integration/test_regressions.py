"""Regression tests for defects found in use, each through the real command line where it showed."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import FEATURES, Trained, make_frame, run_cli


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
