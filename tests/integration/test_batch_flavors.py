"""Every flavor, every input format, through the CLI: predictions equal the framework's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeinfer.cli import main
from tests.conftest import FEATURES, FLAVOR_FIXTURES, Trained, make_frame, read_output, run_cli


def _check(out: Path, trained: Trained) -> None:
    result = read_output(out)
    assert len(result) == len(trained.labels)
    assert result["id"].tolist() == list(range(len(trained.labels)))
    predictions = result["prediction"].to_numpy()
    if np.issubdtype(np.asarray(trained.labels).dtype, np.floating):
        np.testing.assert_allclose(predictions, trained.labels, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(predictions, trained.labels)
    if trained.probability is not None:
        probability = np.stack(result["probability"].to_numpy())
        np.testing.assert_allclose(probability, trained.probability, atol=1e-6)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
@pytest.mark.parametrize("flavor", FLAVOR_FIXTURES)
def test_cli_scores_like_the_framework(flavor: str, fmt: str, request: pytest.FixtureRequest,
                                       datasets: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    trained: Trained = request.getfixturevalue(flavor)
    out = tmp_path / "out"
    code = main(["batch", "--model", str(trained.path), "--input", str(datasets[fmt]), "--output", str(out),
                 "--keep", "id", "--workers", "1", "--batch-size", "128", *trained.cli])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "scored 900 rows (0 skipped)" in captured.out
    _check(out, trained)


@pytest.mark.parametrize("flavor", ["onnx_model", "xgboost_model", "torchscript_model"])
def test_worker_processes_give_the_same_answers(flavor: str, request: pytest.FixtureRequest,
                                                datasets: dict[str, Path], tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    trained: Trained = request.getfixturevalue(flavor)
    out = tmp_path / "out"
    code = main(["batch", "--model", str(trained.path), "--input", str(datasets["parquet"]), "--output", str(out),
                 "--keep", "id", "--workers", "2", "--json", *trained.cli])
    assert code == 0, capsys.readouterr().err
    _check(out, trained)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_command_ends_with_its_summary_and_every_part_written(workers: str, onnx_model: Trained,
                                                                   datasets: dict[str, Path], tmp_path: Path) -> None:
    # the command skips the interpreter's teardown after a batch job: what it printed to a pipe
    # and what it wrote must be whole all the same
    out = tmp_path / "out"
    result = run_cli("batch", "--model", onnx_model.path, "--input", datasets["parquet"], "--output", out,
                     "--keep", "id", "--workers", workers, "--json", *onnx_model.cli)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["workers"]) == (900, int(workers))
    assert (out / "_SUCCESS").exists()
    _check(out, onnx_model)
    failed = run_cli("batch", "--model", onnx_model.path, "--input", tmp_path / "absent", "--output", tmp_path / "o2",
                     *onnx_model.cli)
    assert failed.returncode == 1 and failed.stderr.startswith("lakeinfer: error: ")


@pytest.mark.parametrize("overlap", [True, False])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_reading_ahead_and_in_line_write_the_same_parts(overlap: bool, workers: str, onnx_model: Trained,
                                                        datasets: dict[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lakeinfer.engines import units

    chosen: list[bool] = []
    monkeypatch.setattr(units, "overlap_io", lambda *_: chosen.append(overlap) or overlap)
    out = tmp_path / "out"
    code = main(["batch", "--model", str(onnx_model.path), "--input", str(datasets["parquet"]), "--output", str(out),
                 "--keep", "id", "--workers", workers, "--batch-size", "100", *onnx_model.cli])
    assert code == 0, capsys.readouterr().err
    assert chosen == [overlap]
    _check(out, onnx_model)


def test_inspect_prints_the_signature(xgboost_model: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--model", str(xgboost_model.path)]) == 0
    text = capsys.readouterr().out
    assert "flavor:   xgboost" in text
    assert "features: f0, f1, f2, f3, f4" in text
    assert "classes:  [0, 1, 2]" in text
    assert "probability: float64[N, 3]" in text


def test_one_unit_and_many_score_bit_for_bit_alike(onnx_model: Trained, frame: pd.DataFrame, tmp_path: Path) -> None:
    # an ONNX tree ensemble's multi-threaded sums differ from its single-threaded ones in the last
    # bits (here on 479 of 900 rows): a job of one unit must not differ from a job of many

    from lakeinfer.cpu import available_cores

    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, tmp_path / "one.parquet")  # one unit
    (tmp_path / "many").mkdir()
    for i in range(15):  # 15 units
        pq.write_table(table.slice(60 * i, 60), tmp_path / "many" / f"part-{i:02d}.parquet")
    runs = {}
    for name, source in (("one", tmp_path / "one.parquet"), ("many", tmp_path / "many")):
        result = run_cli("batch", "--model", onnx_model.path, "--input", source,
                         "--output", tmp_path / f"out-{name}", "--keep", "id", "--batch-size", "128", "--json",
                         *onnx_model.cli)
        assert result.returncode == 0, result.stderr
        runs[name] = json.loads(result.stdout)
        _check(tmp_path / f"out-{name}", onnx_model)
    assert runs["one"]["parts"] == 1 and runs["many"]["parts"] == 15
    assert runs["one"]["threads"] == available_cores()  # one unit: its batches on every core
    assert min(15, available_cores()) <= runs["many"]["threads"] <= available_cores()
    one, many = read_output(tmp_path / "out-one"), read_output(tmp_path / "out-many")
    np.testing.assert_array_equal(np.stack(one["probability"]), np.stack(many["probability"]))


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


def _one_error_line(result) -> str:  # type: ignore[no-untyped-def]
    assert result.returncode == 1, result.stdout
    assert "Stack trace" not in result.stderr and "[bt]" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _string_label_onnx(frame, tmp_path: Path, *, zipmap: bool):  # type: ignore[no-untyped-def]
    from skl2onnx import to_onnx
    from sklearn.ensemble import RandomForestClassifier

    x = frame[FEATURES].to_numpy(np.float32)
    labels = np.array(["low", "mid", "high"])[frame["label"].to_numpy()]
    model = RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(x, labels)
    path = tmp_path / f"rf-{zipmap}.onnx"
    path.write_bytes(to_onnx(model, x[:1], options={"zipmap": zipmap}).SerializeToString())
    return model, path
