"""The pieces every Spark ML stage shares: the columns a pipeline passes along, per-row problems,
the stage base class and the registry of Spark classes the reader knows."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ModelLoadError, SchemaError
from ._reader import StageMeta

__all__ = ["NUMBER", "STRING", "VECTOR", "Col", "Frame", "Stage", "StageError", "register", "stage_class"]

NUMBER, STRING, VECTOR = "number", "string", "vector"

# Params that shape training only: a model's stored data already holds their effect.
TRAINING_ONLY = frozenset({
    "labelCol", "weightCol", "seed", "maxIter", "tol", "regParam", "elasticNetParam", "fitIntercept",
    "standardization", "aggregationDepth", "maxBlockSizeInMB", "checkpointInterval", "cacheNodeIds",
    "maxMemoryInMB", "maxBins", "minInfoGain", "minInstancesPerNode", "minWeightFractionPerNode",
    "impurity", "subsamplingRate", "featureSubsetStrategy", "bootstrap", "lossType", "stepSize",
    "validationIndicatorCol", "validationTol", "numTrees", "maxDepth", "family", "solver", "loss",
    "epsilon", "smoothing", "lowerBoundsOnCoefficients", "upperBoundsOnCoefficients",
    "lowerBoundsOnIntercepts", "upperBoundsOnIntercepts", "stringOrderType", "relativeError",
    "numBuckets", "numBucketsArray", "strategy", "k", "variancePower", "linkPower", "inputCols_",
})


class StageError(SchemaError):
    """A batch a stage cannot transform as a whole (a missing or mistyped column)."""


@dataclass
class Col:
    """One column as the pipeline passes it: numbers (float64, shape (n,)), vectors (float64,
    shape (n, k)) or strings (object, shape (n,)); ``null`` marks the rows that hold null."""

    kind: str
    values: np.ndarray
    null: np.ndarray | None = None
    # The Arrow type of the input column a number (or a number cast to a string) came from: some
    # stages give back the input's own type (Imputer) or drop NaN only in floating columns.
    origin: pa.DataType | None = None

    @property
    def width(self) -> int:
        return int(self.values.shape[1]) if self.kind == VECTOR else 1

    def nulls(self) -> np.ndarray:
        return self.null if self.null is not None else np.zeros(len(self.values), dtype=bool)

    def to_arrow(self) -> pa.Array:
        mask = self.null if self.null is not None and self.null.any() else None
        if self.kind == VECTOR:
            rows, width = self.values.shape
            offsets = pa.array(np.arange(0, rows * width + 1, width, dtype=np.int32))
            flat = pa.array(np.ascontiguousarray(self.values, dtype=np.float64).reshape(-1))
            lists = pa.ListArray.from_arrays(offsets, flat, mask=pa.array(mask) if mask is not None else None)
            return lists
        if self.kind == STRING:
            return pa.array(self.values, type=pa.string(), mask=mask)
        return pa.array(self.values, type=pa.float64(), mask=mask)


class Frame:
    """The columns of one batch as the stages see them, and each row's first problem.

    A row a stage cannot take (Spark's ``handleInvalid='error'``) gets a reason; one the stage
    drops (``'skip'``) gets a reason and a drop mark. Later stages still compute over such rows,
    with whatever values they hold, so every array keeps one entry per input row; only a row's
    first problem counts, as in Spark, where a row dropped by one stage never reaches the next.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.cols: dict[str, Col] = {}
        self.reasons: dict[int, tuple[str, str]] = {}  # row -> (column, reason)
        self.dropped = np.zeros(rows, dtype=bool)

    def col(self, name: str, stage: Stage, *kinds: str) -> Col:
        try:
            col = self.cols[name]
        except KeyError:
            raise StageError(f"{stage.name} reads column '{name}', which the input lacks "
                             f"(it has: {', '.join(self.cols)})") from None
        if kinds and col.kind not in kinds:
            raise StageError(f"{stage.name} needs column '{name}' to hold {' or '.join(kinds)}s, "
                             f"not {col.kind}s")
        return col

    def flag(self, mask: np.ndarray, column: str, reason: Callable[[int], str], *, drop: bool = False) -> None:
        """Rows of ``mask`` have a value the stage cannot take; ``drop``: the stage skips them."""
        for found in np.flatnonzero(mask):
            row = int(found)
            if row not in self.reasons:
                self.reasons[row] = (column, reason(row))
                if drop:
                    self.dropped[row] = True

    @property
    def bad(self) -> np.ndarray:
        mask = np.zeros(self.rows, dtype=bool)
        if self.reasons:
            mask[list(self.reasons)] = True
        return mask


class Stage(abc.ABC):
    """One fitted Spark ML stage over a :class:`Frame`.

    ``reads`` are the params the stage's transform depends on; together with the training-only
    params they are every param the reader knows. A param it does not know (a newer Spark's) is
    ignored with a note when it holds its default, and refused when it was set, since it may
    change what the stage computes.
    """

    spark_classes: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, meta: StageMeta) -> None:
        self.meta = meta
        self.notes: list[str] = []
        known = self.reads | TRAINING_ONLY
        for param in sorted(set(meta.params) - known):
            where = f"{meta.short_class} {meta.uid} (saved by Spark {meta.spark_version})"
            if param in meta.explicit and not self.harmless(param, meta.params[param]):
                raise ModelLoadError(
                    f"{where} sets param '{param}' = {meta.params[param]!r}, which this reader does not know "
                    "and which may change predictions; score this model with --engine spark")
            self.notes.append(f"{where}: param '{param}' not known to this reader, ignored (training only "
                              "or at its default)")

    def harmless(self, param: str, value: Any) -> bool:
        """A set param the reader does not know that cannot change the transform (a stage may say)."""
        return False

    @property
    def name(self) -> str:
        return f"{self.meta.short_class} {self.meta.uid}"

    def param(self, name: str, default: Any = None) -> Any:
        return self.meta.get(name, default)

    @abc.abstractmethod
    def inputs(self) -> dict[str, str]:
        """The columns the stage reads and the kind each must hold (NUMBER, STRING, VECTOR or '' for any)."""

    @abc.abstractmethod
    def outputs(self) -> dict[str, str]:
        """The columns the stage adds, in order, and the kind each holds."""

    def optional(self) -> dict[str, list[str]]:
        """Inputs the stage skips when the batch lacks them (as Spark's StringIndexer skips a
        label column absent at scoring time), each with the outputs it then does not write."""
        return {}

    @abc.abstractmethod
    def transform(self, frame: Frame) -> None:
        """Add the stage's outputs to ``frame`` (one value per row, flagging rows it cannot take)."""

    def describe(self) -> dict[str, Any]:
        return {"class": self.meta.short_class, "uid": self.meta.uid, "inputs": list(self.inputs()),
                "outputs": list(self.outputs())}


_REGISTRY: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    for name in cls.spark_classes:
        _REGISTRY[name] = cls
    return cls


def stage_class(meta: StageMeta) -> type[Stage]:
    found = _REGISTRY.get(meta.short_class)
    if found is None:
        raise ModelLoadError(
            f"Spark ML stage {meta.spark_class} ({meta.uid}) is not supported without a JVM; "
            "score this model with --engine spark")
    return found


def column_from_arrow(array: pa.Array, name: str, want: str) -> Col:
    """A batch column as the kind a stage reads (Spark's own casts: numbers to strings for a
    StringIndexer, integers to doubles)."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    null = np.asarray(array.is_null()) if array.null_count else None
    kind = array.type
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        if want not in (VECTOR, ""):
            raise StageError(f"column '{name}' holds vectors; a number or string is needed")
        return Col(VECTOR, _matrix(array, name), null)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if want in (NUMBER, VECTOR):
            raise StageError(f"column '{name}' holds strings; the pipeline needs a {want} there")
        return Col(STRING, np.asarray(array.to_numpy(zero_copy_only=False), dtype=object), null)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        if want == STRING:  # Spark casts a number to its string form before indexing it
            return Col(STRING, _spark_strings(array), null, kind)
        if want == VECTOR:
            raise StageError(f"column '{name}' holds numbers; the pipeline needs a vector there")
        values = pc.fill_null(array.cast(pa.float64()), np.nan) if array.null_count else array.cast(pa.float64())
        return Col(NUMBER, np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64), null, kind)
    raise StageError(f"column '{name}' has type {kind}, which no Spark ML stage here reads")


def _matrix(array: pa.Array, name: str) -> np.ndarray:
    rows = len(array)
    if rows == 0:
        return np.zeros((0, 0))
    filled = array
    lengths = np.asarray(pc.list_value_length(array).fill_null(-1))
    sizes = set(np.unique(lengths[lengths >= 0]).tolist())
    if len(sizes) > 1:
        raise StageError(f"column '{name}' holds vectors of different sizes ({sorted(sizes)[:5]})")
    width = sizes.pop() if sizes else 0
    if array.null_count:
        empty = pa.array([[np.nan] * width], type=pa.list_(pa.float64()))[0]
        filled = pc.if_else(array.is_null(), empty, array.cast(pa.list_(pa.float64())))
    flat = pc.list_flatten(filled).cast(pa.float64())
    values = np.asarray(pc.fill_null(flat, np.nan).to_numpy(zero_copy_only=False), dtype=np.float64)
    return values.reshape(rows, width)


def _spark_strings(array: pa.Array) -> np.ndarray:
    """Numbers as Spark's CAST(... AS STRING) writes them: integers plainly, doubles and floats as
    Java's Double/Float.toString (with '.0', 1.0E7). Each distinct value is formatted once."""
    if pa.types.is_integer(array.type) or pa.types.is_boolean(array.type):  # Arrow writes 12, true
        return np.asarray(array.cast(pa.string()).to_numpy(zero_copy_only=False), dtype=object)
    single = pa.types.is_float32(array.type)
    values = np.asarray(pc.fill_null(array.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False),
                        dtype=np.float64)
    # distinct bit patterns, not values: -0.0 and 0.0 are written apart
    bits, inverse = np.unique(values.view(np.int64), return_inverse=True)
    texts = np.asarray([_java_string(float(v), single=single) for v in bits.view(np.float64)], dtype=object)
    out = texts[inverse.reshape(-1)]
    if array.null_count:
        out[np.asarray(array.is_null())] = None
    return out


def _java_string(value: float, *, single: bool = False) -> str:
    """Java's Double.toString (Float.toString for a float column): the shortest digits that
    read back to the value, plain between 1e-3 and 1e7, else scientific (1.0E7, 5.0E-4)."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    shortest = str(np.float32(value)) if single else repr(value)
    if value == 0 or 1e-3 <= abs(value) < 1e7:
        return shortest  # Python's and numpy's shortest forms are plain in this range too
    sign, digits, exponent = Decimal(shortest).normalize().as_tuple()
    text = "".join(map(str, digits))
    power = int(exponent) + len(text) - 1
    return f"{'-' if sign else ''}{text[0]}.{text[1:] or '0'}E{power}"
