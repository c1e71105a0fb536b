"""Every flavor, every input format, through the CLI: predictions equal the framework's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lakeinfer.cli import main
from tests.conftest import FLAVOR_FIXTURES, Trained, read_output, run_cli


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
    from lakeinfer.engines import local

    chosen: list[bool] = []
    monkeypatch.setattr(local, "overlap_io", lambda *_: chosen.append(overlap) or overlap)
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lakeinfer.models import available_cores

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
