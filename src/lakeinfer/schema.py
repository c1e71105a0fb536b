"""Model signatures and the conversions between Arrow columns and model tensors."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import SchemaError

__all__ = ["PACKED", "TensorSpec", "Signature", "InvalidRows", "invalid_rows", "assemble_features",
           "outputs_to_batch", "pack_features", "packed_width", "split_matrix", "to_arrow", "unpack_features"]

#: the one column of a batch that holds every feature, in the model's order, as a [N, K] matrix
#: (a FixedSizeList of K values per row): how the server passes on a request's one [N, K] tensor
#: instead of splitting it into K columns that the model would assemble back
PACKED = "__lakeinfer_features__"


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: its dtype (numpy name or 'string') and shape (None = any)."""

    name: str
    dtype: str
    shape: tuple[int | None, ...] = (None,)

    def describe(self) -> str:
        dims = ", ".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class Signature:
    """What a model takes and gives.

    ``features`` are the columns assembled, in order, into the model's tensor input;
    ``inputs`` are the model's own tensors; ``outputs`` the columns it adds.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    features: tuple[str, ...] | None = None
    task: str = "unknown"
    classes: tuple[Any, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "features": list(self.features) if self.features is not None else None,
            "classes": [_plain(c) for c in self.classes] if self.classes is not None else None,
            "inputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.inputs],
            "outputs": [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in self.outputs],
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def column_or_error(batch: pa.RecordBatch, name: str) -> pa.Array:
    """The column ``name`` of ``batch``, or a SchemaError that lists what is there."""
    index = batch.schema.get_field_index(name)
    if index < 0:
        have = ", ".join(batch.schema.names) or "no columns"
        raise SchemaError(f"missing feature column '{name}' (the input has: {have})")
    return batch.column(index)


def split_matrix(matrix: np.ndarray, names: Sequence[str]) -> list[pa.Array]:
    """The columns of an [N, K] matrix: one Arrow array, column-major, sliced (zero-copy)."""
    rows = matrix.shape[0]
    flat = pa.array(np.ascontiguousarray(matrix.T).reshape(-1))
    return [flat.slice(j * rows, rows) for j in range(len(names))]


def pack_features(matrix: np.ndarray) -> pa.RecordBatch:
    """An [N, K] matrix as a batch of one :data:`PACKED` column (no copy)."""
    rows, width = matrix.shape
    values = pa.array(np.ascontiguousarray(matrix).reshape(-1))
    return pa.RecordBatch.from_arrays([pa.FixedSizeListArray.from_arrays(values, width)], names=[PACKED])


def packed_width(batch: pa.RecordBatch) -> int | None:
    """K for a batch that is one :data:`PACKED` column of K numbers per row, else None."""
    if batch.num_columns != 1 or batch.schema.names[0] != PACKED:
        return None
    kind = batch.schema.types[0]
    if not pa.types.is_fixed_size_list(kind) or not _numeric(kind.value_type):
        return None
    return int(kind.list_size)


def _packed_matrix(batch: pa.RecordBatch) -> np.ndarray:
    column = batch.column(0)
    values = column.flatten()  # the rows of this batch (slice) only
    return values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


def unpack_features(batch: pa.RecordBatch, features: Sequence[str]) -> pa.RecordBatch:
    """A :data:`PACKED` batch as its feature columns (as though the tensor had been split)."""
    if batch.num_columns != 1 or batch.schema.names[0] != PACKED:
        return batch
    column = batch.column(0)
    width = column.type.list_size
    if width != len(features):
        raise SchemaError(f"the input tensor has {width} values per row; the model takes {len(features)} features")
    if column.null_count or column.flatten().null_count:
        return pa.RecordBatch.from_arrays([pc.list_element(column, j) for j in range(width)], names=list(features))
    return pa.RecordBatch.from_arrays(split_matrix(_packed_matrix(batch), features), names=list(features))


def assemble_features(batch: pa.RecordBatch, features: Sequence[str], dtype: Any) -> np.ndarray:
    """Stack ``features`` of ``batch`` column by column into a 2-D ``dtype`` array.

    A single list-typed feature column (an assembled vector) is taken as the whole tensor, and so
    is a :data:`PACKED` batch of as many values per row as there are features.
    """
    dtype = np.dtype(dtype)
    if packed_width(batch) == len(features) and batch.column(0).flatten().null_count == 0:
        return _packed_matrix(batch).astype(dtype, copy=False)
    if len(features) == 1:
        column = column_or_error(batch, features[0])
        if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
            return _vector_column(column, features[0], dtype)
    out = np.empty((batch.num_rows, len(features)), dtype=dtype)
    for j, name in enumerate(features):
        column = column_or_error(batch, name)
        if not _numeric(column.type):
            raise SchemaError(
                f"feature column '{name}' has type {column.type}; the model needs a number"
            )
        if column.null_count:
            # only a model that handles missing values gets here with nulls: they are NaN to it
            column = column.cast(pa.float64())
        out[:, j] = column.to_numpy(zero_copy_only=False)
    return out


def _vector_column(column: pa.Array, name: str, dtype: np.dtype) -> np.ndarray:
    if not _numeric(column.type.value_type):
        raise SchemaError(f"feature column '{name}' holds {column.type.value_type}; the model needs numbers")
    if pa.types.is_fixed_size_list(column.type):
        width = column.type.list_size
    else:
        lengths = np.unique(column.value_lengths().to_numpy(zero_copy_only=False))
        if len(lengths) > 1:
            raise SchemaError(f"feature column '{name}' holds vectors of different lengths {lengths.tolist()}")
        width = int(lengths[0]) if len(lengths) else 0
    values = column.flatten()
    if values.null_count:
        values = values.cast(pa.float64())
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(column), width)


# The one rule for missing and non-finite feature values, in every mode (see the README):
# null and NaN are missing values, which only models that handle them (XGBoost, LightGBM,
# HistGradientBoosting, ...) receive, as NaN; +-Infinity is a bad record for every model.
OK, NULL, NAN, POS_INF, NEG_INF, UNKNOWN, OVERFLOW, NO_VECTOR = range(8)
_WORDS = {NULL: "null", NAN: "NaN", POS_INF: "Infinity", NEG_INF: "-Infinity", NO_VECTOR: "null"}


class BadRows(Protocol):
    """Rows of a batch a model cannot take, each with its first problem; ``dropped`` marks the
    rows the model itself drops (a Spark ML stage with ``handleInvalid='skip'``), or is None."""

    @property
    def mask(self) -> np.ndarray: ...

    @property
    def dropped(self) -> np.ndarray | None: ...

    @property
    def first(self) -> int: ...

    def reason(self, row: int) -> tuple[str, str]: ...

    def reasons(self) -> list[str | None]: ...


@dataclass(frozen=True)
class InvalidRows:
    """The rows of a batch a model cannot take: per row, the first bad column and its value."""


    mask: np.ndarray  # bool, one per row
    columns: tuple[str, ...]
    codes: np.ndarray  # int8 (rows, columns): OK, NULL, NAN, POS_INF, NEG_INF or UNKNOWN
    values: Mapping[str, pa.Array] = field(default_factory=dict)  # columns with UNKNOWN codes

    @property
    def dropped(self) -> np.ndarray | None:
        return None  # rows the model itself drops: none here

    def reason(self, row: int) -> tuple[str, str]:
        """(column, reason) for a bad ``row``."""
        j = int(np.flatnonzero(self.codes[row])[0])
        column = self.columns[j]
        code = int(self.codes[row, j])
        if code == UNKNOWN:
            value = self.values[column][row].as_py()
            return column, f"feature column '{column}' holds {value!r}, a category the model does not know"
        if code == OVERFLOW:
            value = self.values[column][row].as_py()
            return column, f"feature column '{column}' holds {value!r}, beyond the model's float32 range"
        return column, f"feature column '{column}' is {_WORDS[code]}"

    @property
    def first(self) -> int:
        return int(np.argmax(self.mask))

    def reasons(self) -> list[str | None]:
        """One entry per row: the reason, or None for a good row."""
        out: list[str | None] = [None] * len(self.mask)
        for row in np.flatnonzero(self.mask):
            out[int(row)] = self.reason(int(row))[1]
        return out


def invalid_rows(batch: pa.RecordBatch, columns: Sequence[str], *, missing_ok: bool,
                 known: Mapping[str, pa.Array] | None = None, limit: float | None = None) -> InvalidRows | None:
    """The rows with a value the model cannot take in one of ``columns``, or None when all are good.

    ``known``: for features whose unknown categories the model refuses, the categories it knows;
    ``limit``: the largest magnitude the model's number type holds (a float32 model's), beyond
    which a finite value would reach it as Infinity.
    """
    if packed_width(batch) is not None:
        if not known and _packed_fine(batch, limit):
            return None  # the common case, checked on the matrix at once
        batch = unpack_features(batch, columns)  # else per column, for the exact reasons
    codes: list[np.ndarray] = []
    values: dict[str, pa.Array] = {}
    bad = False
    for name in columns:
        column = column_or_error(batch, name)
        code = _value_codes(column, limit)
        if code is not None and limit is not None and (code == OVERFLOW).any():
            values[name] = column
        if code is not None and missing_ok:
            code = np.where((code == NULL) | (code == NAN), OK, code).astype(np.int8)
        if known and name in known:
            unknown = _unknown(column, known[name])
            if unknown is not None:
                code = code if code is not None else np.zeros(len(column), np.int8)
                code = np.where((code == OK) & unknown, UNKNOWN, code).astype(np.int8)
                values[name] = column
        if code is not None:
            bad = bad or bool(code.any())
        codes.append(code if code is not None else np.zeros(0, np.int8))
    if not bad:
        return None
    rows = batch.num_rows
    matrix = np.zeros((rows, len(codes)), np.int8)
    for j, code in enumerate(codes):
        if len(code):
            matrix[:, j] = code
    return InvalidRows(np.asarray(matrix.any(axis=1)), tuple(columns), matrix, values)


def _packed_fine(batch: pa.RecordBatch, limit: float | None) -> bool:
    """Every value of a PACKED batch is a finite number (within ``limit``): nothing to report."""
    column = batch.column(0)
    values = column.flatten()
    if column.null_count or values.null_count:
        return False
    if not pa.types.is_floating(values.type):
        return True
    array = values.to_numpy(zero_copy_only=False)
    if limit is not None:
        return bool(np.abs(array).max(initial=0.0) <= limit)  # NaN is not <= limit
    return bool(np.isfinite(array).all())


def _unknown(column: pa.Array, known: pa.Array) -> np.ndarray | None:
    """Per row: a value (not null) outside ``known``; None when every value is known."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    try:
        found = pc.is_in(column, value_set=known.cast(column.type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None  # values of another type: the frame builder names that mistake
    outside = pc.and_(pc.invert(found), pc.is_valid(column))
    if not pc.any(outside).as_py():
        return None
    return np.asarray(outside.to_numpy(zero_copy_only=False), dtype=bool)


def _value_codes(column: pa.Array, limit: float | None = None) -> np.ndarray | None:
    """Per value: OK, NULL, NAN, POS_INF, NEG_INF or OVERFLOW (past ``limit``); None when every
    value is fine (the fast path)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        values = column.flatten()
        inner = _value_codes(values, limit)
        if inner is None and not column.null_count:
            return None
        rows = np.zeros(len(column), np.int8)
        if inner is not None:
            parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
            np.maximum.at(rows, parents, inner)
        if column.null_count:  # no vector at all: a bad record even for models that take NaN
            rows[column.is_null().to_numpy(zero_copy_only=False)] = NO_VECTOR
        return rows
    floating = pa.types.is_floating(kind) and not pa.types.is_dictionary(column.type)
    if not column.null_count and not floating:
        return None
    values = column.to_numpy(zero_copy_only=False) if floating else None
    if values is not None and not column.null_count and np.isfinite(values).all() and (
            limit is None or not (np.abs(values) > limit).any()):
        return None
    code = np.zeros(len(column), np.int8)
    if values is not None:
        if limit is not None:
            with np.errstate(invalid="ignore"):
                code[np.abs(values) > limit] = OVERFLOW
        code[np.isnan(values)] = NAN
        code[np.isposinf(values)] = POS_INF
        code[np.isneginf(values)] = NEG_INF
    if column.null_count:
        code[column.is_null().to_numpy(zero_copy_only=False)] = NULL
    return code if code.any() else None


def to_arrow(values: Any) -> pa.Array:
    """A model output (numpy array, list, pandas object) as an Arrow column.

    2-D outputs become list<double> (or list<value>) columns, one list per row; an (N, 1)
    output is squeezed to a plain column.
    """
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if hasattr(values, "to_numpy"):
        values = values.to_numpy()
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 1:
        if array.dtype == object:
            return pa.array(array.tolist())
        return pa.array(array)
    if array.ndim == 2:
        rows, width = array.shape
        flat = np.ascontiguousarray(array).reshape(-1)
        if np.issubdtype(flat.dtype, np.floating):
            flat = flat.astype(np.float64, copy=False)
        offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
        return pa.ListArray.from_arrays(offsets, pa.array(flat))
    raise SchemaError(f"model output of shape {array.shape} cannot be a column (at most 2 dimensions)")


def outputs_to_batch(outputs: Mapping[str, Any], num_rows: int) -> pa.RecordBatch:
    """Named model outputs as one RecordBatch, checking that each has one value per row."""
    arrays = []
    for name, values in outputs.items():
        array = to_arrow(values)
        if len(array) != num_rows:
            raise SchemaError(f"model output '{name}' has {len(array)} rows for {num_rows} input rows")
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, names=list(outputs))
