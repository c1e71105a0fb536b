"""Rows per model call: learnt from the first calls, the same outputs whatever the size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from lakeinfer.models import load_model
from lakeinfer.models._run_size import RunSizer


def test_each_size_that_fits_is_tried_then_the_fastest_is_kept() -> None:
    sizer = RunSizer(sizes=(10, 100), tries=2)
    seen = []
    for _ in range(4):
        size = sizer.size(1000)
        seen.append(size)
        # rows per second: size 10 at 1000/s, size 100 at 5000/s
        sizer.record(size, size, size / (1000 if size == 10 else 5000))
    assert sorted(seen) == [10, 10, 100, 100]
    assert sizer.size(1000) == 100
    assert sizer.size(50) == 10  # the fastest among the sizes that fit
    assert sizer.size(5) == 5  # smaller than every size: one call


def test_a_short_remainder_call_is_not_a_measurement() -> None:
    sizer = RunSizer(sizes=(10,), tries=1)
    sizer.record(10, 3, 1.0)
    assert sizer.size(100) == 10 and sizer._count[10] == 0


def test_outputs_are_joined_row_by_row() -> None:
    sizer = RunSizer(sizes=(4,), tries=1)
    x = np.arange(10.0).reshape(10, 1)
    labels, probability, maps = sizer.run(lambda rows: [rows[:, 0] * 2, np.hstack([rows, -rows]),
                                                        [{"a": float(r)} for r in rows[:, 0]]], x)
    assert labels.tolist() == (np.arange(10.0) * 2).tolist()
    assert probability.shape == (10, 2) and probability[:, 1].tolist() == (-np.arange(10.0)).tolist()
    assert [m["a"] for m in maps] == list(np.arange(10.0))


def test_an_onnx_classifier_gives_the_same_outputs_in_calls_of_any_size(tmp_path: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    model = MLPClassifier(hidden_layer_sizes=(8,), max_iter=50, random_state=0).fit(x, y)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(to_onnx(model, x[:1], options={"zipmap": False}).SerializeToString())
    batch = pa.RecordBatch.from_arrays([pa.array(x[:, j]) for j in range(4)], names=[f"f{j}" for j in range(4)])
    whole = load_model(str(path), features=[f"f{j}" for j in range(4)])
    split = load_model(str(path), features=[f"f{j}" for j in range(4)])
    assert isinstance(split._outputs.sizer, RunSizer)  # type: ignore[attr-defined]
    split._outputs.sizer = RunSizer(sizes=(1000,), tries=1)  # type: ignore[attr-defined]
    whole._outputs.sizer = None  # type: ignore[attr-defined]
    a, b = whole.predict(batch), split.predict(batch)
    assert a.column("prediction").equals(b.column("prediction"))
    np.testing.assert_allclose(np.stack(a.column("probability").to_numpy(zero_copy_only=False)),
                               np.stack(b.column("probability").to_numpy(zero_copy_only=False)), rtol=1e-6)
    assert np.array_equal(a.column("prediction").to_numpy(), model.predict(x))
