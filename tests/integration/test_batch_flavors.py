"""Every flavor, every input format, through the CLI: predictions equal the framework's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lakeinfer.cli import main
from tests.conftest import FLAVOR_FIXTURES, Trained, read_output


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


def test_inspect_prints_the_signature(xgboost_model: Trained, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--model", str(xgboost_model.path)]) == 0
    text = capsys.readouterr().out
    assert "flavor:   xgboost" in text
    assert "features: f0, f1, f2, f3, f4" in text
    assert "classes:  [0, 1, 2]" in text
    assert "probability: float64[N, 3]" in text
