"""An ONNX classifier's class labels, with and without the onnx package."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from lakeinfer.models import load_model


def _export(tmp_path: Path, *, zipmap: bool) -> tuple[list[str], Path]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 3)).astype(np.float32)
    y = np.where(x[:, 0] > 0.3, "yes", np.where(x[:, 0] < -0.3, "no", "maybe"))
    model = LogisticRegression(max_iter=200).fit(x, y)
    path = tmp_path / "lr.onnx"
    path.write_bytes(to_onnx(model, x[:1], options={"zipmap": zipmap}).SerializeToString())
    return model.classes_.tolist(), path


@pytest.mark.parametrize("zipmap", [True, False])
def test_classes_from_the_graph(zipmap: bool, tmp_path: Path) -> None:
    classes, path = _export(tmp_path, zipmap=zipmap)
    assert list(load_model(path, features=["a", "b", "c"]).signature.classes or ()) == classes


def test_without_onnx_zipmap_keys_give_the_classes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    classes, path = _export(tmp_path, zipmap=True)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx raises ImportError
    assert list(load_model(path, features=["a", "b", "c"]).signature.classes or ()) == classes


def test_without_onnx_and_without_zipmap_classes_are_unknown(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, path = _export(tmp_path, zipmap=False)
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert load_model(path, features=["a", "b", "c"]).signature.classes is None
