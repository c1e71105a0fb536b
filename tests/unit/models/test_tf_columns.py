"""Columns to a TensorFlow signature's inputs and its outputs back (no TensorFlow needed), and
the flavors' detection and trust check, which happen before TensorFlow is imported."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from lakeinfer.errors import ConfigError, SchemaError, UntrustedModelError
from lakeinfer.models import detect_flavor, load_model
from lakeinfer.models._tf_columns import input_array, output_arrays, plan_inputs
from lakeinfer.schema import TensorSpec

SCALAR = TensorSpec("a", "float32", (None,))
COLUMN = TensorSpec("c", "int64", (None, 1))
VECTOR = TensorSpec("v", "float32", (None, 3))


def test_scalar_and_n_by_one_inputs_from_number_columns() -> None:
    got = input_array(pa.array([1.5, 2.5]), SCALAR, "a")
    assert got.dtype == np.float32 and got.shape == (2,)
    ints = input_array(pa.array([1, 2], pa.int32()), COLUMN, "c")
    assert ints.dtype == np.int64 and ints.shape == (2, 1) and ints[:, 0].tolist() == [1, 2]
    whole = input_array(pa.array([3.0, -4.0]), COLUMN, "c")  # whole floats keep their values as integers
    assert whole[:, 0].tolist() == [3, -4]


@pytest.mark.parametrize("column", [
    pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]),
    pa.FixedSizeListArray.from_arrays(pa.array([1, 2, 3, 4, 5, 6], pa.int16()), 3),
    pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], pa.large_list(pa.float64())),
])
def test_vector_inputs_from_list_columns(column: pa.Array) -> None:
    got = input_array(column, VECTOR, "v")
    assert got.dtype == np.float32 and got.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_values_not_kept_exactly_are_refused_naming_the_column() -> None:
    with pytest.raises(SchemaError, match="column 'a'.*16777217.*float32"):
        input_array(pa.array([1, 2**24 + 1]), SCALAR, "a")
    with pytest.raises(SchemaError, match="column 'c'.*1.5.*int64"):
        input_array(pa.array([1.0, 1.5]), COLUMN, "c")
    with pytest.raises(SchemaError, match="column 'v' holds 2 values per row.*takes 3"):
        input_array(pa.array([[1.0, 2.0], [3.0, 4.0]]), VECTOR, "v")
    with pytest.raises(SchemaError, match="column 'v' holds lists of different lengths"):
        input_array(pa.array([[1.0, 2.0, 3.0], [3.0, 4.0]]), VECTOR, "v")
    with pytest.raises(SchemaError, match="column 'a' has type string.*float32 numbers"):
        input_array(pa.array(["x"]), SCALAR, "a")
    with pytest.raises(SchemaError, match="column 's' has type int64.*takes strings"):
        input_array(pa.array([1]), TensorSpec("s", "string"), "s")


def test_string_inputs_from_string_columns() -> None:
    got = input_array(pa.array(["ab", "c"]).dictionary_encode(), TensorSpec("s", "string"), "s")
    assert got.dtype == object and got.tolist() == ["ab", "c"]


def test_features_read_one_vector_input_from_scalar_columns() -> None:
    plan = plan_inputs((VECTOR,), ["x", "y", "z"], where="the model")
    assert plan.columns == ("x", "y", "z")
    batch = pa.RecordBatch.from_pydict({"x": [1.0, 4.0], "y": [2.0, 5.0], "z": [3.0, 6.0]})
    assert plan.feeds(batch)["v"].tolist() == [[1, 2, 3], [4, 5, 6]]
    renamed = plan_inputs((VECTOR,), ["vectors"], where="the model")
    assert renamed.feeds(pa.RecordBatch.from_pydict({"vectors": [[1.0, 2.0, 3.0]]}))["v"].shape == (1, 3)
    with pytest.raises(ConfigError, match="takes 3 values per row but 2 features were named"):
        plan_inputs((VECTOR,), ["x", "y"], where="the model")
    with pytest.raises(ConfigError, match="--features is for a model of one input"):
        plan_inputs((VECTOR, SCALAR), ["x", "y", "z"], where="the model")
    with pytest.raises(ConfigError, match="shape \\[None, 2, 2\\]"):
        plan_inputs((TensorSpec("img", "float32", (None, 2, 2)),), None, where="the model")


def test_outputs_are_one_row_per_input_row() -> None:
    got = output_arrays({"p": np.zeros((2, 3)), "s": np.array([b"a", b"bc"], dtype=object),
                         "img": np.zeros((2, 2, 2))}, 2)
    assert got["p"].shape == (2, 3) and got["s"].tolist() == ["a", "bc"] and got["img"].shape == (2, 4)
    with pytest.raises(SchemaError, match="output 'p' has shape \\[3\\] for 2 input rows"):
        output_arrays({"p": np.zeros(3)}, 2)


def test_detection_and_trust_come_before_tensorflow(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    keras_file = tmp_path / "m.keras"
    keras_file.write_bytes(b"PK")
    assert detect_flavor(str(saved)) == "tensorflow" and detect_flavor(str(keras_file)) == "keras"
    with pytest.raises(UntrustedModelError, match="--trust-model"):
        load_model(saved)
    # in a fresh process: refused without TensorFlow imported
    code = ("import sys; from lakeinfer.models import load_model\n"
            f"try:\n    load_model({str(keras_file)!r})\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["UntrustedModelError", "False", "False"], done.stderr
