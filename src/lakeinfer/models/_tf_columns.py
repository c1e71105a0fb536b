"""Columns to a TensorFlow function's named inputs, and its outputs back to columns.

Each input is read from the column of its name: an input of shape [N] or [N, 1] from a scalar
column, [N, K] from a list column of K values per row (an Arrow list or fixed-size list, a v2
tensor of shape [N, K], a JSON list in a record), a string input from a string column. A model
of one [N, K] input may read K scalar columns named by ``features`` instead (or one column of
another name). A number column of another type is cast to the input's where every value is kept
exactly (int64 to float64, int32 to int64, whole floats to integers), and from any float to a
float (float64 to float32, as every neural-network flavor takes it); otherwise it is refused,
naming the column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, SchemaError
from ..schema import TensorSpec, assemble_features, column_or_error
from ._frame import STRING, FeatureKinds

__all__ = ["InputPlan", "output_arrays", "plan_inputs"]


def _width(spec: TensorSpec) -> int | None:
    """K of an [N, K] input (None: any), 1 for [N] and [N, 1]; a higher rank is refused."""
    if len(spec.shape) <= 1:
        return 1
    if len(spec.shape) > 2:
        raise ConfigError(f"input '{spec.name}' has shape {list(spec.shape)}: lakeinfer feeds inputs "
                          "of one value or one vector per row")
    return spec.shape[1]


@dataclass(frozen=True)
class InputPlan:
    """Which columns feed which input, and how."""

    inputs: tuple[TensorSpec, ...]
    columns: tuple[str, ...]
    #: one input read from K scalar columns (``features``), else None
    assembled: tuple[str, ...] | None = None

    @property
    def kinds(self) -> FeatureKinds:
        return FeatureKinds(kinds={c: STRING for c, t in zip(self.columns, self.inputs, strict=False)
                                   if t.dtype == "string" and self.assembled is None})

    def feeds(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        """One array per input, shaped and typed as the input takes it."""
        if self.assembled is not None:
            (spec,) = self.inputs
            return {spec.name: _checked_width(assemble_features(batch, self.assembled, spec.dtype), spec, spec.name)}
        return {spec.name: input_array(column_or_error(batch, column), spec, column)
                for spec, column in zip(self.inputs, self.columns, strict=True)}


def plan_inputs(inputs: tuple[TensorSpec, ...], features: Sequence[str] | None, *, where: str) -> InputPlan:
    """The plan for ``inputs``; ``features`` renames the one input's column, or names its K columns."""
    for spec in inputs:
        _width(spec)
    if not features:
        return InputPlan(inputs, tuple(spec.name for spec in inputs))
    if len(inputs) != 1:
        raise ConfigError(f"--features is for a model of one input; {where} reads a column per input "
                          f"({', '.join(spec.name for spec in inputs)})")
    (spec,) = inputs
    features = tuple(features)
    if len(features) == 1:
        return InputPlan(inputs, features)
    width = _width(spec)
    if spec.dtype == "string":
        raise ConfigError(f"--features names {len(features)} columns, but the input '{spec.name}' takes strings")
    if width is not None and width != len(features):
        raise ConfigError(f"the model's input '{spec.name}' takes {width} values per row but "
                          f"{len(features)} features were named: {', '.join(features)}")
    return InputPlan(inputs, features, assembled=features)


def _checked_width(array: np.ndarray, spec: TensorSpec, column: str) -> np.ndarray:
    width = _width(spec)
    if len(spec.shape) <= 1:
        return array.reshape(-1)
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    if width is not None and array.shape[1] != width:
        raise SchemaError(f"column '{column}' holds {array.shape[1]} values per row; the model's input "
                          f"'{spec.name}' takes {width}")
    return array


def input_array(column: pa.Array | pa.ChunkedArray, spec: TensorSpec, name: str) -> np.ndarray:
    """``column`` as the input ``spec`` takes it (see the module's docstring)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if spec.dtype == "string":
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise SchemaError(f"input column '{name}' has type {kind}; the model's input '{spec.name}' takes strings")
        return _checked_width(np.asarray(column.to_numpy(zero_copy_only=False), dtype=object), spec, name)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        values = _numbers(column.flatten(), spec, name)
        if pa.types.is_fixed_size_list(kind):
            width = kind.list_size
        else:
            lengths = np.unique(column.value_lengths().to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                raise SchemaError(f"input column '{name}' holds lists of different lengths {lengths.tolist()}; "
                                  f"the model's input '{spec.name}' takes {_width(spec)} values per row")
            width = int(lengths[0]) if len(lengths) else 0
        if len(spec.shape) <= 1 and width != 1:
            raise SchemaError(f"input column '{name}' holds lists; the model's input '{spec.name}' takes one "
                              "value per row")
        return _checked_width(values.reshape(len(column), width), spec, name)
    return _checked_width(_numbers(column, spec, name), spec, name)


def _numbers(column: pa.Array, spec: TensorSpec, name: str) -> np.ndarray:
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise SchemaError(f"input column '{name}' has type {kind}; the model's input '{spec.name}' takes "
                          f"{spec.dtype} numbers")
    values = column.to_numpy(zero_copy_only=False)
    target = np.dtype(spec.dtype)
    if values.dtype == target:
        return values
    cast = values.astype(target)
    if values.dtype.kind == "f" and target.kind == "f":
        return cast  # a float's precision: as every neural network takes float64 columns
    with np.errstate(invalid="ignore", over="ignore"):
        kept = np.array_equal(cast.astype(values.dtype), values) and (
            target.kind != "f" or np.array_equal(cast.astype(np.float64), values.astype(np.float64)))
    if not kept:
        lost = np.flatnonzero(cast.astype(values.dtype) != values)
        shown = values[lost[0]].item() if len(lost) else values[0].item()
        raise SchemaError(f"input column '{name}' has type {kind}: its value {shown!r} is not kept exactly as "
                          f"{target.name}, the type of the model's input '{spec.name}'; cast the column")
    return cast


def output_arrays(result: Mapping[str, Any], rows: int) -> dict[str, np.ndarray]:
    """The outputs as arrays of one row per input row: strings decoded, higher ranks flattened per row."""
    out: dict[str, np.ndarray] = {}
    for name, tensor in result.items():
        array = tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)
        if array.ndim == 0 or array.shape[0] != rows:
            raise SchemaError(f"model output '{name}' has shape {list(array.shape)} for {rows} input rows")
        if array.ndim > 2:
            array = array.reshape(rows, -1)
        if array.dtype == object:
            array = np.array([v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                              for v in array.reshape(-1)], dtype=object).reshape(array.shape)
        out[name] = array
    return out
