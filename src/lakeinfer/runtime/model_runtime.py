"""ModelRuntime: one recipe's pipeline, built once per worker, and the one object every mode calls.

The local engine (in-process and in worker processes), the Spark engine, the server's data plane
and the Kafka scorer all go through it, so feature checks, the missing-value rule, output schemas
and bad-record isolation exist once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import BadRecordError, LakeinferError, SchemaError
from ..models import NUMBER, Model, TabularModel
from ..pipeline import ModelStep, Pipeline
from ..schema import PACKED, packed_width, unpack_features
from .recipe import PipelineRecipe
from .records import records_to_batch

__all__ = ["ModelRuntime", "Scored"]


@dataclass(frozen=True)
class Scored:
    """The outputs of every row (null where the row was bad) and each bad row's reason."""

    outputs: pa.RecordBatch
    errors: list[str | None] | None  # None: every row was good

    @property
    def bad_rows(self) -> list[int]:
        return [] if self.errors is None else [i for i, e in enumerate(self.errors) if e is not None]

    def slice(self, offset: int, length: int) -> Scored:
        errors = None if self.errors is None else self.errors[offset: offset + length]
        if errors is not None and not any(e is not None for e in errors):
            errors = None
        return Scored(self.outputs.slice(offset, length), errors)

    def raise_bad(self, row_name: str = "row {row}") -> None:
        """Raise a :class:`BadRecordError` for the first bad row, if any (``row_name``: how rows are named)."""
        rows = self.bad_rows
        if rows:
            row, reason = rows[0], str(self.errors[rows[0]])  # type: ignore[index]
            more = f" (and {len(rows) - 1} more bad rows)" if len(rows) > 1 else ""
            column = reason.split("'")[1] if "'" in reason else ""
            raise BadRecordError(f"{row_name.format(row=row)}: {reason}{more}", column=column, row=row,
                                 reason=reason)


class ModelRuntime:
    """The pipeline of ``recipe``: built (the model loaded) once, at construction.

    ``transform`` applies the recipe's ``on_error``; ``score`` isolates bad rows instead, for
    callers that answer per record (the server, the stream).

    ``tensor_input`` (the server's): a model that names no features, whose input is one [N, K]
    tensor, gets internal column names after that tensor (see ``TabularModel.name_tensor_columns``)
    instead of failing for want of ``--features``; ``self.tensor_input`` is then (name, K).
    """

    def __init__(self, recipe: PipelineRecipe, *, threads: int | None = None, model: Model | None = None,
                 tensor_input: bool = False) -> None:
        self.recipe = recipe
        if tensor_input:
            model = model or recipe.load_model(threads=threads)
            if isinstance(model, TabularModel):
                model.name_tensor_columns()
        self.pipeline: Pipeline = recipe.build(threads=threads, model=model)
        step = self.pipeline.model_step
        if step is None:  # a recipe always places the model; guard against hand-made pipelines
            raise SchemaError("the pipeline has no model step")
        self.model: Model = step.model
        # score(): the steps before the model, the model keeping bad rows (null outputs), the rest
        before, rest = self.pipeline.split_at_model()
        self._before = before
        self._step = step
        self._keeping = ModelStep(self.model, on_error="null")
        self._after = Pipeline(rest.steps[1:])
        # a batch of one PACKED [N, K] column (the server's one-tensor request) goes to the model as
        # it is when the pipeline is the model alone and the model takes a matrix of numbers
        self._packed_ok = (not before.steps and not self._after.steps and isinstance(self.model, TabularModel)
                           and not self.model.kinds.any_text)

    # -- what the pipeline reads and writes ----------------------------------------------------
    @property
    def input_columns(self) -> tuple[str, ...]:
        """The model's feature columns."""
        return self.model.input_columns

    @property
    def tensor_input(self) -> tuple[str, int] | None:
        """(name, K) when the model's columns are named after its one [N, K] input tensor."""
        return self.model.tensor_input if isinstance(self.model, TabularModel) else None

    @property
    def model_only(self) -> bool:
        return self.recipe.model_only

    def read_columns(self, keep: Sequence[str] = ()) -> tuple[str, ...] | None:
        """The input columns to read (None: all of them, since steps before the model may read any)."""
        return tuple(dict.fromkeys([*self.input_columns, *keep])) if self.model_only else None

    def output_schema(self, sample: pa.RecordBatch, keep: Sequence[str] = ()) -> pa.Schema:
        """The ``keep`` columns, then what the model and the steps after it write, for rows like ``sample``."""
        names, scored = self.pipeline.outputs(sample)
        for name in keep:
            if name not in scored.schema.names:
                raise SchemaError(f"--keep column '{name}' is not in the input or a pipeline step dropped it "
                                  f"(the input has: {', '.join(sample.schema.names)})")
        return pa.schema([scored.schema.field(n) for n in dict.fromkeys([*keep, *names])])

    def input_schema(self) -> pa.Schema:
        """The feature columns with the type the model takes: strings for categorical and string
        features, the model's number type for the others."""
        own = {t.name: t.dtype for t in self.model.signature.inputs}
        default = next(iter(own.values()), "float64")
        # an input of K > 1 values per row read from the column of its name: a list column
        vectors = {t.name for t in self.model.signature.inputs if len(t.shape) == 2 and t.shape[1] != 1}
        kinds = self.model.kinds
        fields = []
        for name in self.input_columns:
            dtype = own.get(name, default)  # a graph input of that name, else the one tensor's type
            if kinds.kind(name) != NUMBER or dtype in ("string", "object"):
                fields.append(pa.field(name, pa.string()))
            else:
                kind = pa.from_numpy_dtype(np.dtype(dtype))
                fields.append(pa.field(name, pa.list_(kind) if name in vectors else kind))
        return pa.schema(fields)

    def records(self, records: Sequence[Any], *, where: str = "records", keep: Sequence[str] = ()) -> pa.RecordBatch:
        """JSON records as a batch, the same whoever sends them (the server, the stream): the
        features typed as numbers or strings as the model takes them, a missing one null; a
        pipeline that is the model alone gets its features (and ``keep``) only."""
        schema = self.input_schema()
        types = {f.name: pa.string() if pa.types.is_string(f.type) else
                 pa.list_(pa.float64()) if pa.types.is_list(f.type) else pa.float64() for f in schema}
        only = [*schema.names, *keep] if self.model_only else None
        return records_to_batch(records, where=where, types=types, only=only)

    def describe_outputs(self) -> pa.Schema:
        """The output columns, from a zero-row probe; the model's own outputs where steps need other columns."""
        probe = self.input_schema().empty_table().to_batches()
        batch = probe[0] if probe else pa.RecordBatch.from_pylist([], schema=self.input_schema())
        try:
            names, out = self.pipeline.outputs(batch)
            return pa.schema([out.schema.field(n) for n in names])
        except LakeinferError:
            return self.model.predict(batch.slice(0, 0)).schema

    # -- scoring -------------------------------------------------------------------------------
    def _unpacked(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """``batch`` as the model takes it: a PACKED batch split into the feature columns unless
        the model takes it whole (see ``schema.PACKED``)."""
        width = packed_width(batch)
        if width is None and batch.num_columns == 1 and batch.schema.names[0] == PACKED:
            width = -1  # not numbers: split, for the model's own message about the column
        if width is None or (self._packed_ok and width == len(self.input_columns)):
            return batch
        return unpack_features(batch, self.input_columns)

    def transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Every column of ``batch`` plus the outputs; bad rows as ``on_error`` says."""
        return self.pipeline.transform(self._unpacked(batch))

    def score(self, batch: pa.RecordBatch) -> Scored:
        """Only the output columns, one row per input row; bad rows get nulls and a reason.

        The reasons are found at the model step and never pass through the steps after it.
        """
        if self._packed_ok and packed_width(batch) == len(self.input_columns):
            # the server's one [N, K] tensor to a pipeline that is the model alone: its outputs are
            # what the general path below selects, without building the batch it selects them from
            bad = self._step.bad_rows(batch)
            if bad is None:
                return Scored(self.model.predict(batch), None)
        before = self._before.transform(self._unpacked(batch))
        bad = self._step.bad_rows(before)
        after = self._after.transform(self._keeping.apply(before, bad))
        outputs = after.select(self.pipeline.written(before, after))
        return Scored(outputs, bad.reasons() if bad is not None else None)
