"""Spark ML feature stages that index, encode and assemble columns."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ModelLoadError
from ._reader import StageMeta, read_meta, stage_dirs
from ._stage import NUMBER, STRING, VECTOR, Col, Frame, Stage, register

__all__ = ["IndexToString", "OneHotEncoderModel", "StringIndexerModel", "VectorAssembler", "choice", "columns"]

# The label Spark's StringIndexerModel puts last in its output column's metadata under
# handleInvalid='keep', so that an IndexToString downstream names the extra index.
UNKNOWN_LABEL = "__unknown"


def columns(stage: Stage, single: str, multi: str) -> list[str]:
    """A stage's inputCol/outputCol or inputCols/outputCols, whichever it set."""
    many = stage.param(multi)
    if many:
        return list(many)
    one = stage.param(single)
    return [one] if one else []


def choice(stage: Stage, param: str, allowed: tuple[str, ...]) -> str:
    """A string param that must be one of ``allowed`` (the first is Spark's default)."""
    value = str(stage.param(param, allowed[0]))
    if value not in allowed:
        raise ModelLoadError(f"{stage.name}: {param} = {value!r} is not one this reader knows "
                             f"({', '.join(allowed)}); score this model with --engine spark")
    return value


@register
class StringIndexerModel(Stage):
    """Labels to indices in the stored order (``labelsArray``; ``labels`` before Spark 3.0).

    Null or an unseen label: ``error`` fails the row, ``skip`` drops it, ``keep`` gives the index
    ``len(labels)``. A numeric input column is cast to a string first, as Spark casts it; under
    ``skip`` Spark's ``na.drop`` also drops a NaN in a floating input, even one seen in training.
    """

    spark_classes = ("StringIndexerModel",)
    reads = frozenset({"inputCol", "outputCol", "inputCols", "outputCols", "handleInvalid"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.ins = columns(self, "inputCol", "inputCols")
        self.outs = columns(self, "outputCol", "outputCols")
        data = meta.data().to_pylist()[0]
        labels = data.get("labelsArray") or ([data["labels"]] if "labels" in data else None)
        if labels is None or len(labels) != len(self.ins):
            raise ModelLoadError(f"{self.name}: stored labels do not match its {len(self.ins)} input columns")
        self.labels = [pa.array(list(ls), type=pa.string()) for ls in labels]
        self.handle = choice(self, "handleInvalid", ("error", "skip", "keep"))

    def inputs(self) -> dict[str, str]:
        return dict.fromkeys(self.ins, STRING)

    def outputs(self) -> dict[str, str]:
        return dict.fromkeys(self.outs, NUMBER)

    def output_labels(self, column: str) -> list[str] | None:
        """The labels Spark writes into the metadata of output ``column`` (None: not one of ours)."""
        if column not in self.outs:
            return None
        labels = self.labels[self.outs.index(column)].to_pylist()
        return [*labels, UNKNOWN_LABEL] if self.handle == "keep" else labels

    def optional(self) -> dict[str, list[str]]:
        # Spark skips a column absent at scoring time (the label's indexer in a fitted pipeline)
        return {name: [out] for name, out in zip(self.ins, self.outs, strict=True)}

    def transform(self, frame: Frame) -> None:
        for name, out, labels in zip(self.ins, self.outs, self.labels, strict=True):
            if name not in frame.cols:
                continue
            col = frame.col(name, self, STRING)
            array = pa.array(col.values, type=pa.string(), mask=col.null)
            # skip_nulls: Spark checks null before its label lookup, so a null never matches a null
            # label (pyspark's from_arrays_of_labels pads shorter label lists with null)
            index = pc.index_in(array, value_set=labels, skip_nulls=True)
            invalid = np.asarray(index.is_null())
            if self.handle == "skip" and col.origin is not None and pa.types.is_floating(col.origin):
                invalid |= np.asarray(pc.equal(array, "NaN").fill_null(False))
            values = np.asarray(index.fill_null(len(labels)).to_numpy(zero_copy_only=False), dtype=np.float64)
            if invalid.any() and self.handle != "keep":
                def reason(row: int, col: Col = col, name: str = name) -> str:
                    value = col.values[row]
                    what = ("null" if value is None else "NaN" if value == "NaN" and self.handle == "skip"
                            else f"{value!r}, a label it did not see in training")
                    return f"column '{name}' is {what} (StringIndexer handleInvalid='{self.handle}')"
                frame.flag(invalid, name, reason, drop=self.handle == "skip")
            frame.cols[out] = Col(NUMBER, values)


def _upstream_labels(meta: StageMeta, column: str) -> list[str] | None:
    """The labels Spark would find in ``column``'s metadata: those of the StringIndexerModel
    earlier in the same PipelineModel that wrote ``column`` (Spark keeps no copy in the stage)."""
    pipeline = os.path.dirname(os.path.dirname(meta.path))
    try:
        parent = read_meta(pipeline)
    except ModelLoadError:
        return None
    uids = parent.params.get("stageUids") or parent.raw.get("stageUids")
    if parent.short_class != "PipelineModel" or not isinstance(uids, list) or meta.uid not in uids:
        return None
    found = None
    for folder in stage_dirs(pipeline, uids)[:uids.index(meta.uid)]:
        earlier = read_meta(folder)
        if earlier.short_class == "StringIndexerModel":
            labels = StringIndexerModel(earlier).output_labels(column)
            found = labels if labels is not None else found
    return found


@register
class IndexToString(Stage):
    """Indices back to labels: the ``labels`` param, else the labels of the StringIndexerModel
    upstream that wrote the input column (Spark reads them from that column's metadata).

    As Spark 4 computes it (the index cast to an int in SQL, then looked up): a fraction is
    truncated toward zero (-0.5 names label 0); null, NaN, an infinity and an index outside the
    labels fail the row (Spark raises for each; this stage has no ``handleInvalid``).
    """

    spark_classes = ("IndexToString",)
    reads = frozenset({"inputCol", "outputCol", "labels"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.inp = str(self.param("inputCol"))
        self.out = str(self.param("outputCol"))
        labels = self.param("labels") or _upstream_labels(meta, self.inp)
        if not labels:
            raise ModelLoadError(
                f"{self.name} has no labels param and its input column '{self.inp}' was not written by a "
                "StringIndexerModel earlier in the pipeline, so its labels (Spark reads them from the "
                "column's metadata) are unknown; set labels on the stage or score with --engine spark")
        self.labels = np.asarray(list(labels), dtype=object)

    def inputs(self) -> dict[str, str]:
        return {self.inp: NUMBER}

    def outputs(self) -> dict[str, str]:
        return {self.out: STRING}

    def transform(self, frame: Frame) -> None:
        col = frame.col(self.inp, self, NUMBER)
        null, values = col.nulls(), col.values
        with np.errstate(invalid="ignore"):
            index = np.trunc(values)
            invalid = null | np.isnan(values) | ~((index >= 0) & (index < len(self.labels)))
        if invalid.any():
            frame.flag(invalid, self.inp, lambda row: (
                f"column '{self.inp}' is {'null' if null[row] else repr(values[row])}, not an index among "
                f"the {len(self.labels)} labels of IndexToString"))
        out = self.labels[np.where(invalid, 0, index).astype(np.int64)]
        out[invalid] = None
        frame.cols[self.out] = Col(STRING, out, invalid.copy() if invalid.any() else None)


@register
class OneHotEncoderModel(Stage):
    """Category indices to one-hot vectors of ``categorySizes`` (less the last under ``dropLast``).

    As Spark: an index in [0, size) picks ``int(index)``, so a fraction is truncated; a negative,
    too large or NaN index fails the row under ``error`` and under ``keep`` takes the extra last
    category (all zeros when ``dropLast`` drops it); null gives a null vector.
    """

    spark_classes = ("OneHotEncoderModel",)
    reads = frozenset({"inputCol", "outputCol", "inputCols", "outputCols", "dropLast", "handleInvalid"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.ins = columns(self, "inputCol", "inputCols")
        self.outs = columns(self, "outputCol", "outputCols")
        self.sizes = [int(s) for s in meta.data().to_pylist()[0]["categorySizes"]]
        if len(self.sizes) != len(self.ins):
            raise ModelLoadError(f"{self.name}: {len(self.sizes)} category sizes for {len(self.ins)} columns")
        self.keep = choice(self, "handleInvalid", ("error", "keep")) == "keep"
        drop_last = bool(self.param("dropLast", True))
        extra = (0 if drop_last else 1) if self.keep else (-1 if drop_last else 0)
        self.widths = [s + extra for s in self.sizes]

    def inputs(self) -> dict[str, str]:
        return dict.fromkeys(self.ins, NUMBER)

    def outputs(self) -> dict[str, str]:
        return dict.fromkeys(self.outs, VECTOR)

    def transform(self, frame: Frame) -> None:
        for name, out, size, width in zip(self.ins, self.outs, self.sizes, self.widths, strict=True):
            col = frame.col(name, self, NUMBER)
            null = col.nulls()
            label = col.values
            with np.errstate(invalid="ignore"):
                valid = (label >= 0) & (label < size)
            invalid = ~valid & ~null
            if invalid.any() and not self.keep:
                def reason(row: int, label: np.ndarray = label, name: str = name, size: int = size) -> str:
                    what = "negative" if label[row] < 0 else f"not a category index below {size}"
                    return (f"column '{name}' is {label[row]!r}, {what} "
                            "(OneHotEncoder handleInvalid='error')")
                frame.flag(invalid, name, reason)
            position = np.where(valid, label, float(size))
            hot = ~null & (position < width)
            matrix = np.zeros((frame.rows, width), dtype=np.float64)
            rows = np.flatnonzero(hot)
            matrix[rows, position[rows].astype(np.int64)] = 1.0
            frame.cols[out] = Col(VECTOR, matrix, null.copy() if null.any() else None)


@register
class VectorAssembler(Stage):
    """Numbers and vectors into one vector. A null, or a NaN number: ``error`` fails the row,
    ``skip`` drops it, ``keep`` assembles NaN (a null vector: as many NaN as its size). A NaN
    inside a vector is kept under every mode, as Spark keeps it."""

    spark_classes = ("VectorAssembler",)
    reads = frozenset({"inputCols", "outputCol", "handleInvalid"})

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.ins = list(self.param("inputCols") or [])
        self.out = str(self.param("outputCol"))
        self.handle = choice(self, "handleInvalid", ("error", "skip", "keep"))

    def inputs(self) -> dict[str, str]:
        return dict.fromkeys(self.ins, "")

    def outputs(self) -> dict[str, str]:
        return {self.out: VECTOR}

    def transform(self, frame: Frame) -> None:
        parts = []
        for name in self.ins:
            col = frame.col(name, self, NUMBER, VECTOR)
            values = col.values if col.kind == VECTOR else col.values[:, None]
            null = col.nulls()
            parts.append(np.where(null[:, None], np.nan, values) if null.any() else values)
            if self.handle == "keep":
                continue
            invalid = null | (np.isnan(col.values) if col.kind == NUMBER else False)
            if invalid.any():
                def reason(row: int, null: np.ndarray = null, name: str = name) -> str:
                    what = "null" if null[row] else "NaN"
                    return f"column '{name}' is {what} (VectorAssembler handleInvalid='{self.handle}')"
                frame.flag(invalid, name, reason, drop=self.handle == "skip")
        matrix = np.hstack(parts) if parts else np.zeros((frame.rows, 0))
        frame.cols[self.out] = Col(VECTOR, np.ascontiguousarray(matrix, dtype=np.float64))
