"""Spark ML PipelineModels without a JVM: the saved folder read, each stage's transform in numpy.

Spark's own ``transform`` is the reference: the same output columns (vectors as lists of
doubles), the same ``handleInvalid`` behaviour (``error``: a bad record naming the column and
row; ``skip``: the row dropped, as Spark drops it; ``keep``: Spark's value). The Spark engine
keeps running these models with Spark itself.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import BadRecordError, ModelLoadError
from ...schema import Signature, TensorSpec
from .._base import Model
from .._frame import STRING as TEXT
from .._frame import FeatureKinds
from . import buckets, features, linear, scalers, trees  # noqa: F401  (each registers its stages)
from ._reader import StageMeta, read_meta, stage_dirs
from ._stage import NUMBER, STRING, VECTOR, Frame, Stage, column_from_arrow, stage_class

__all__ = ["SparkMLModel", "load", "read_meta"]

_DTYPES = {NUMBER: "float64", STRING: "string", VECTOR: "float64"}


@dataclass(frozen=True)
class RowProblems:
    """The rows of a batch the pipeline cannot take (or drops, as Spark's ``handleInvalid='skip'``
    does), with each one's first problem: what :class:`~lakeinfer.pipeline.ModelStep` reads."""

    mask: np.ndarray
    found: dict[int, tuple[str, str]]
    dropped: np.ndarray

    @property
    def first(self) -> int:
        return int(np.argmax(self.mask))

    def reason(self, row: int) -> tuple[str, str]:
        return self.found[row]

    def reasons(self) -> list[str | None]:
        out: list[str | None] = [None] * len(self.mask)
        for row, (_, reason) in self.found.items():
            out[row] = reason
        return out


def _flatten(folder: str) -> list[StageMeta]:
    """The stages of the model in ``folder``: a PipelineModel's (nested ones flattened) or itself."""
    meta = read_meta(folder)
    if meta.short_class in ("PipelineModel", "Pipeline"):
        if meta.short_class == "Pipeline":
            raise ModelLoadError(f"{folder} is an unfitted Spark ML Pipeline; save the PipelineModel "
                                 "that Pipeline.fit returns")
        uids = meta.params.get("stageUids") or meta.raw.get("stageUids")
        if not isinstance(uids, list):
            raise ModelLoadError(f"{folder}: PipelineModel metadata has no stageUids")
        return [m for sub in stage_dirs(folder, uids) for m in _flatten(sub)]
    return [meta]


class SparkMLModel(Model):
    flavor = "spark"
    handles_missing = True  # each stage applies its own handleInvalid to nulls and NaN

    def __init__(self, path: str) -> None:
        metas = _flatten(path)
        self.stages: list[Stage] = [stage_class(m)(m) for m in metas]
        seen: dict[str, tuple[str, list[str] | None]] = {}  # raw input -> (kind, outputs if skippable)
        added: dict[str, str] = {}
        for stage in self.stages:
            skippable = stage.optional()
            for name, kind in stage.inputs().items():
                if name not in added and name not in seen:
                    seen[name] = (kind, skippable.get(name))
            added.update(stage.outputs())
        # only a label's indexer may be left out: its outputs are a later predictor's labelCol, which
        # no stage reads when scoring; any other skippable input is required like the rest
        labels = {s.param("labelCol") for s in self.stages if s.param("labelCol")}
        read = {n for s in self.stages for n in s.inputs()}
        optional = {n: (k, outs) for n, (k, outs) in seen.items()
                    if outs is not None and set(outs) <= labels and not set(outs) & read}
        inputs = {n: k for n, (k, _) in seen.items() if n not in optional}
        self._inputs = inputs
        self._optional = {n: kind for n, (kind, _) in optional.items()}
        skipped = {out for _, outs in optional.values() for out in outs or ()}
        self._added = added
        shown = {n: k for n, k in added.items() if n not in skipped}
        versions = sorted({m.spark_version for m in metas})
        last = self.stages[-1] if self.stages else None
        task = getattr(last, "task", "transform")
        signature = Signature(
            inputs=tuple(TensorSpec(n, _DTYPES[k or NUMBER], (None, None) if k == VECTOR else (None,))
                         for n, k in inputs.items()),
            outputs=tuple(TensorSpec(n, _DTYPES[k], (None, None) if k == VECTOR else (None,))
                          for n, k in shown.items()),
            features=tuple(inputs), task=task, classes=getattr(last, "classes", None),
            extra={"spark_version": ", ".join(versions),
                   "stages": [s.describe() for s in self.stages],
                   **({"notes": [n for s in self.stages for n in s.notes]}
                      if any(s.notes for s in self.stages) else {})},
        )
        super().__init__(path, signature)
        self.kinds = FeatureKinds(kinds={n: TEXT for n, k in inputs.items() if k == STRING})
        self._last = threading.local()  # the batch check_rows ran on, and its frame

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    def _run(self, batch: pa.RecordBatch) -> Frame:
        last = getattr(self._last, "value", None)
        if last is not None and last[0] is batch:
            return last[1]  # type: ignore[no-any-return]
        frame = Frame(batch.num_rows)
        names = batch.schema.names
        for name, kind in self._inputs.items():
            if name not in names:
                raise ModelLoadError(f"the input lacks column '{name}', which the Spark ML pipeline reads "
                                     f"(the input has: {', '.join(names)})")
            frame.cols[name] = column_from_arrow(batch.column(name), name, kind)
        for name, kind in self._optional.items():  # read when present, as Spark would
            if name in names:
                frame.cols[name] = column_from_arrow(batch.column(name), name, kind)
        for stage in self.stages:
            stage.transform(frame)
        self._last.value = (batch, frame)
        return frame

    def check_rows(self, batch: pa.RecordBatch, *, known: dict[str, pa.Array] | None = None,
                   limit: float | None = None) -> RowProblems | None:
        """The rows the pipeline cannot take or drops; the frame is kept for the ``predict`` that follows."""
        frame = self._run(batch)
        if not frame.reasons:
            return None
        return RowProblems(frame.bad, dict(frame.reasons), frame.dropped.copy())

    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        frame = self._run(batch)
        self._last.value = None
        if frame.reasons:
            row = min(frame.reasons)
            column, reason = frame.reasons[row]
            raise BadRecordError(f"row {row}: {reason}", column=column, row=row, reason=reason)
        return {name: frame.cols[name].to_arrow() for name in self._added if name in frame.cols}


def load(path: str, **_: Any) -> SparkMLModel:
    return SparkMLModel(path)
