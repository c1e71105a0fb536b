"""The one rule for null, NaN and +-Infinity, and the batch defects it replaced, end to end."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import lakeinfer
from tests.conftest import FEATURES, Trained, make_frame, read_output, run_cli


def _one_file(tmp_path: Path, rows: int, bad: dict[tuple[int, str], float | None]) -> Path:
    frame = make_frame(rows)
    table = pa.Table.from_pandas(frame[["id", *FEATURES]], preserve_index=False)
    for name in {c for _, c in bad}:
        values = table.column(name).to_pylist()
        for (row, column), value in bad.items():
            if column == name:
                values[row] = value
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.float64()))
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=100)
    return path


def _one_line(result, *phrases: str) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return str(lines[0])


def test_a_null_in_the_first_batch_fails_at_once(onnx_model: Trained, tmp_path: Path) -> None:
    # the read-ahead thread once blocked for ever on a full queue once its consumer had failed
    data = _one_file(tmp_path, 300, {(80, "f0"): None})
    for workers in ("1", "2"):
        result = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", data, "--output",
                         tmp_path / f"out{workers}", "--batch-size", "100", "--workers", workers, timeout=120)
        _one_line(result, "data.parquet, row 80", "feature column 'f0' is null")
        assert not (tmp_path / f"out{workers}" / "_SUCCESS").exists()


@pytest.mark.parametrize(("value", "word"), [(float("nan"), "NaN"), (float("inf"), "Infinity"),
                                             (float("-inf"), "-Infinity")])
def test_non_finite_values_are_bad_records(onnx_model: Trained, tmp_path: Path, value: float, word: str) -> None:
    data = _one_file(tmp_path, 300, {(180, "f3"): value})
    result = run_cli("batch", "--model", onnx_model.path, *onnx_model.cli, "--input", data, "--output",
                     tmp_path / "out", "--batch-size", "100")
    _one_line(result, "row 180", f"feature column 'f3' is {word}", "--on-error")


def test_skip_and_null_apply_to_nan_as_to_null(onnx_model: Trained, tmp_path: Path) -> None:
    data = _one_file(tmp_path, 300, {(7, "f1"): float("nan"), (150, "f4"): None, (299, "f0"): float("inf")})
    skip = lakeinfer.batch(str(data), str(tmp_path / "skip"), model=str(onnx_model.path), features=FEATURES,
                           keep=["id"], on_error="skip")
    assert (skip.rows, skip.rows_skipped) == (297, 3)
    kept = read_output(tmp_path / "skip")
    assert sorted(set(range(300)) - set(kept["id"])) == [7, 150, 299]
    np.testing.assert_array_equal(kept["prediction"], np.delete(onnx_model.labels[:300], [7, 150, 299]))
    lakeinfer.batch(str(data), str(tmp_path / "null"), model=str(onnx_model.path), features=FEATURES,
                    keep=["id"], on_error="null")
    out = read_output(tmp_path / "null")
    assert out["prediction"].isna().tolist() == [i in (7, 150, 299) for i in range(300)]
    assert out["probability"].isna().tolist() == [i in (7, 150, 299) for i in range(300)]


def test_models_that_handle_missing_values_get_nan(xgboost_model: Trained, lightgbm_model: Trained,
                                                    tmp_path: Path) -> None:
    import lightgbm
    import xgboost

    data = _one_file(tmp_path, 300, {(3, "f0"): None, (4, "f1"): float("nan"), (5, "f2"): None})
    x = pq.read_table(data).select(FEATURES).to_pandas().to_numpy(np.float64)
    assert np.isnan(x[3, 0]) and np.isnan(x[4, 1])
    booster = xgboost.Booster(model_file=str(xgboost_model.path))
    expected = booster.predict(xgboost.DMatrix(x, missing=np.nan, feature_names=FEATURES))
    lakeinfer.batch(str(data), str(tmp_path / "xgb"), model=str(xgboost_model.path), keep=["id"])
    out = read_output(tmp_path / "xgb")
    np.testing.assert_allclose(np.stack(out["probability"].to_numpy()), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(out["prediction"], expected.argmax(axis=1))
    lgb = lightgbm.Booster(model_file=str(lightgbm_model.path))
    lakeinfer.batch(str(data), str(tmp_path / "lgb"), model=str(lightgbm_model.path), keep=["id"])
    out = read_output(tmp_path / "lgb")
    np.testing.assert_allclose(np.stack(out["probability"].to_numpy()), lgb.predict(x), rtol=0, atol=1e-9)
    # Infinity is not a missing value: a bad record for these models too
    (tmp_path / "inf").mkdir()
    inf = _one_file(tmp_path / "inf", 50, {(9, "f2"): float("inf")})
    with pytest.raises(lakeinfer.BadRecordError, match=r"row 9: feature column 'f2' is Infinity"):
        lakeinfer.batch(str(inf), str(tmp_path / "xgb-inf"), model=str(xgboost_model.path))


def test_assemble_does_not_fill_nulls(onnx_model: Trained, tmp_path: Path) -> None:
    # a null assembled into a vector is NaN there, and the model step judges the row
    data = _one_file(tmp_path, 120, {(42, "f2"): None})
    steps = [{"op": "assemble", "columns": FEATURES, "output": "x"}, "model"]
    with pytest.raises(lakeinfer.BadRecordError, match=r"row 42: feature column 'x' is NaN"):
        lakeinfer.batch(str(data), str(tmp_path / "out"), model=str(onnx_model.path), features=["x"],
                        steps=steps)


def test_two_jobs_on_two_threads_keep_their_own_models(onnx_model: Trained, onnx_zipmap_model: Trained,
                                                       tmp_path: Path) -> None:
    # in-process workers once shared one process-global pipeline: one job scored with the other's model
    data = _one_file(tmp_path, 900, {})
    results: dict[str, BaseException | None] = {}

    def job(name: str, model: Trained) -> None:
        try:
            lakeinfer.batch(str(data), str(tmp_path / name), model=str(model.path), features=FEATURES,
                            keep=["id"], workers=1, batch_size=50, unit_rows=100)
            results[name] = None
        except BaseException as exc:  # reported below
            results[name] = exc

    threads = [threading.Thread(target=job, args=("rf", onnx_model)),
               threading.Thread(target=job, args=("lr", onnx_zipmap_model))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {"rf": None, "lr": None}
    for name, model in (("rf", onnx_model), ("lr", onnx_zipmap_model)):
        out = read_output(tmp_path / name)
        np.testing.assert_array_equal(out["prediction"], model.labels)
        np.testing.assert_allclose(np.stack(out["probability"].to_numpy()), model.probability, atol=1e-6)


def test_a_resumed_job_names_the_row_in_the_file(xgboost_model: Trained, tmp_path: Path) -> None:
    # the rerun resumes at the third unit, whose first rows are the sample: the row is the file's
    data = _one_file(tmp_path, 300, {(203, "f1"): float("inf")})
    out = tmp_path / "out"
    for _ in range(2):
        with pytest.raises(lakeinfer.BadRecordError, match=r"data.parquet, row 203: feature column 'f1' is Infinity"):
            lakeinfer.batch(str(data), str(out), model=str(xgboost_model.path), workers=1, batch_size=50,
                            unit_rows=100)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == ["part-00000.parquet", "part-00001.parquet"]


def test_values_beyond_float32_are_bad_for_float32_models(onnx_model: Trained, tmp_path: Path) -> None:
    data = _one_file(tmp_path, 50, {(12, "f0"): 1e39})
    with pytest.raises(lakeinfer.BadRecordError, match=r"row 12: feature column 'f0' holds 1e\+39, beyond"):
        lakeinfer.batch(str(data), str(tmp_path / "out"), model=str(onnx_model.path), features=FEATURES)
