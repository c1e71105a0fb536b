"""Bad input ends in exit code 1 and one line naming the problem, with nothing marked complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import Trained, make_frame, read_output, run_cli, write_dataset


def _fails(result, *phrases: str) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lakeinfer: error: ")
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def _batch(model: Trained, data: Path, out: Path, *extra: str):  # type: ignore[no-untyped-def]
    return run_cli("batch", "--model", str(model.path), *model.cli, "--input", str(data), "--output", str(out),
                   "--keep", "id", "--workers", "1", *extra)


def test_missing_feature_column(onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    result = run_cli("batch", "--model", onnx_model.path, "--features", "f0,f1,f2,f3,f9",
                     "--input", datasets["parquet"], "--output", tmp_path / "out")
    _fails(result, "missing feature column 'f9'", "data-0.parquet")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_wrong_dtype(xgboost_model: Trained, tmp_path: Path) -> None:
    frame = make_frame(50)
    frame["f1"] = frame["f1"].map(lambda v: f"v{v}")
    data = tmp_path / "strings.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data)
    _fails(_batch(xgboost_model, data, tmp_path / "out"), "feature column 'f1' has type", "string; the model needs a number")


def test_unreadable_file(onnx_model: Trained, tmp_path: Path) -> None:
    data = tmp_path / "in"
    write_dataset(make_frame(60), data, "parquet", files=2)
    (data / "data-1.parquet").write_bytes(b"this is not parquet")
    _fails(_batch(onnx_model, data, tmp_path / "out"), "data-1.parquet", "Parquet")
    assert not (tmp_path / "out").exists()


def test_truncated_file_in_the_middle(onnx_model: Trained, tmp_path: Path) -> None:
    data = tmp_path / "in"
    write_dataset(make_frame(60), data, "csv", files=2)
    with open(data / "data-1.csv", "a") as fh:
        fh.write("1,not-a-number,2\n")
    result = _batch(onnx_model, data, tmp_path / "out")
    _fails(result, "data-1.csv")
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_model_that_does_not_load(datasets: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"\x00garbage")
    _fails(run_cli("batch", "--model", model, "--features", "f0", "--input", datasets["parquet"],
                   "--output", tmp_path / "out"), "cannot load ONNX model", "broken.onnx")


def test_missing_model_and_missing_input(onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    _fails(run_cli("batch", "--model", tmp_path / "nope.onnx", "--input", datasets["parquet"],
                   "--output", tmp_path / "o"),
           "nope.onnx", "does not exist")
    _fails(run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", tmp_path / "absent",
                   "--output", tmp_path / "o"), "absent", "does not exist")


def test_output_folder_of_another_job(onnx_model: Trained, xgboost_model: Trained,
                                      datasets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert _batch(onnx_model, datasets["parquet"], out).returncode == 0
    _fails(_batch(xgboost_model, datasets["parquet"], out), "holds another job's results", "--overwrite")
    assert _batch(xgboost_model, datasets["parquet"], out, "--overwrite").returncode == 0
    np.testing.assert_array_equal(read_output(out)["prediction"], xgboost_model.labels)


def test_output_folder_with_foreign_files(onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _fails(_batch(onnx_model, datasets["parquet"], out), "not empty")
    assert (out / "notes.txt").read_text() == "mine"


def test_pickle_needs_trust(sklearn_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    _fails(run_cli("batch", "--model", sklearn_model.path, "--input", datasets["parquet"], "--output", tmp_path / "o"),
           "pickle", "--trust-model", "ONNX or skops")


def test_mlflow_needs_trust(mlflow_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    _fails(run_cli("batch", "--model", mlflow_model.path, "--input", datasets["parquet"], "--output", tmp_path / "o"),
           "--trust-model")


def test_keep_column_missing(onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    _fails(_batch(onnx_model, datasets["parquet"], tmp_path / "out", "--keep", "customer"),
           "--keep column 'customer'")


@pytest.fixture()
def with_nulls(tmp_path: Path) -> Path:
    frame = make_frame(300)
    data = tmp_path / "nulls"
    write_dataset(frame, data, "parquet", files=3)
    # put nulls in f2 of rows 120 and 250 (file 1 row 20, file 2 row 50)
    for name, row in (("data-1.parquet", 20), ("data-2.parquet", 50)):
        table = pq.read_table(data / name)
        values = table.column("f2").to_pylist()
        values[row] = None
        table = table.set_column(table.schema.get_field_index("f2"), "f2", pa.array(values, pa.float64()))
        pq.write_table(table, data / name)
    return data


def test_null_feature_fails_by_default(onnx_model: Trained, with_nulls: Path, tmp_path: Path) -> None:
    result = _batch(onnx_model, with_nulls, tmp_path / "out")
    _fails(result, "'f2' is null", "--on-error")
    # two files hold a null, scored side by side: the line names the one whose unit failed first
    assert ("data-1.parquet, row 20:" in result.stderr) != ("data-2.parquet, row 50:" in result.stderr), result.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_null_feature_skip_counts_the_rows(onnx_model: Trained, with_nulls: Path, tmp_path: Path) -> None:
    result = _batch(onnx_model, with_nulls, tmp_path / "out", "--on-error", "skip")
    assert result.returncode == 0, result.stderr
    assert "scored 298 rows (2 skipped)" in result.stdout
    ids = read_output(tmp_path / "out")["id"].tolist()
    assert 120 not in ids and 250 not in ids and len(ids) == 298


def test_null_feature_null_keeps_the_row(onnx_model: Trained, with_nulls: Path, tmp_path: Path) -> None:
    result = _batch(onnx_model, with_nulls, tmp_path / "out", "--on-error", "null", "--workers", "2")
    assert result.returncode == 0, result.stderr
    out = read_output(tmp_path / "out")
    assert len(out) == 300
    assert out["prediction"].isna().tolist() == [i in (120, 250) for i in range(300)]
    assert out.loc[119, "prediction"] == onnx_model.labels[119]
    assert out.loc[251, "prediction"] == onnx_model.labels[251]


def test_usage_errors_are_one_line(onnx_model: Trained, datasets: dict[str, Path], tmp_path: Path) -> None:
    _fails(run_cli("batch", "--model", onnx_model.path, "--input", datasets["parquet"], "--output", tmp_path / "o"),
           "does not name its input features", "--features")
    _fails(run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--flavor", "pmml",
                   "--input", datasets["parquet"], "--output", tmp_path / "o"), "unknown flavor 'pmml'")
    _fails(run_cli("batch", "--model", onnx_model.path, "--features", "f0,f1",
                   "--input", datasets["parquet"], "--output", tmp_path / "o"), "takes 5 features but 2 were named")


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
