"""Pipelines of transformers over Arrow record batches, ending in (or wrapping) a model.

Every step appends or rewrites columns and keeps the rest, as Spark ML transformers do, so
id columns pass through and the same :class:`Pipeline` drives batch, serve and stream.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from typing import Any, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._spec_schema import OnError, validate_step
from .errors import BadRecordError, ConfigError, SchemaError
from .models import Model
from .schema import BadRows, column_or_error

__all__ = [
    "Transformer", "Pipeline", "ModelStep", "Select", "Rename", "Cast", "FillNull", "Assemble",
    "Threshold", "Argmax", "LabelMap", "ON_ERROR", "step_from_dict",
]

ON_ERROR: tuple[str, ...] = get_args(OnError)


class Transformer(abc.ABC):
    """``transform(batch) -> batch``; subclasses implement ``_transform``."""

    def transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return self._transform(batch)

    @abc.abstractmethod
    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch: ...

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def _set_column(batch: pa.RecordBatch, name: str, values: pa.Array) -> pa.RecordBatch:
    index = batch.schema.get_field_index(name)
    if index >= 0:
        return batch.set_column(index, name, values)
    return batch.append_column(name, values)


class Select(Transformer):
    """Keep only ``columns``, in that order."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for name in self.columns:
            column_or_error(batch, name)
        return batch.select(self.columns)


class Rename(Transformer):
    """Rename columns: ``{old: new}``."""

    def __init__(self, columns: Mapping[str, str]) -> None:
        self.columns = dict(columns)

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for old in self.columns:
            column_or_error(batch, old)
        return batch.rename_columns([self.columns.get(n, n) for n in batch.schema.names])


class Cast(Transformer):
    """Cast columns to Arrow types by name: ``{"age": "float64"}``."""

    def __init__(self, columns: Mapping[str, str]) -> None:
        self.columns = dict(columns)
        self._types = {}
        for name, type_name in self.columns.items():
            try:
                self._types[name] = pa.type_for_alias(type_name)
            except ValueError as exc:
                raise ConfigError(f"cast step: unknown type '{type_name}' for column '{name}'") from exc

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for name, target in self._types.items():
            try:
                batch = _set_column(batch, name, column_or_error(batch, name).cast(target))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"cannot cast column '{name}' to {target}: {exc}") from exc
        return batch


class FillNull(Transformer):
    """Replace nulls by a value per column: ``{"age": 0}``."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for name, value in self.values.items():
            column = column_or_error(batch, name)
            if column.null_count:
                try:
                    filled = column.fill_null(pa.scalar(value).cast(column.type))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaError(f"fill_null: {value!r} does not fit column '{name}' ({column.type})") from exc
                batch = _set_column(batch, name, filled)
        return batch


class Assemble(Transformer):
    """Pack numeric ``columns`` into one vector column ``output`` (Spark ML's VectorAssembler).

    A null becomes NaN in the vector (VectorAssembler's ``keep``), never a number: the model
    step then treats the row by the missing-value rule, as it would the columns themselves.
    """

    def __init__(self, columns: Sequence[str], output: str = "features") -> None:
        self.columns = list(columns)
        self.output = output

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        from .schema import assemble_features

        matrix = assemble_features(batch, self.columns, np.float64)
        values = pa.array(matrix.reshape(-1))
        vectors = pa.FixedSizeListArray.from_arrays(values, len(self.columns))
        return _set_column(batch, self.output, vectors)


class ModelStep(Transformer):
    """Runs the model on its input columns and appends its outputs.

    A row with a value the model cannot take (see :func:`lakeinfer.schema.invalid_rows`: null
    or NaN for a model that does not handle missing values, +-Infinity for any, a category an
    encoder refuses) is a bad record, and ``on_error`` says what it gets: ``fail`` raises a
    :class:`BadRecordError` naming the column and row, ``skip`` drops the row, ``null`` keeps
    it with null predictions.
    """

    def __init__(self, model: Model, *, on_error: str = "fail") -> None:
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, not '{on_error}'")
        self.model = model
        self.on_error = on_error
        self._known = model.kinds.closed_values()
        self._limit = _float_limit(getattr(model, "input_dtype", np.float64))
        self._outputs = tuple(model.output_names)

    def __repr__(self) -> str:
        return f"ModelStep({self.model.flavor} {self.model.path}, on_error={self.on_error!r})"

    def bad_rows(self, batch: pa.RecordBatch) -> BadRows | None:
        """The rows of ``batch`` the model cannot take, or None."""
        names = batch.schema.names
        for name in self._outputs:
            if name in names:
                raise SchemaError(f"the input already has a column '{name}', which the model writes")
        return self.model.check_rows(batch, known=self._known, limit=self._limit)

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        return self.apply(batch, self.bad_rows(batch))

    def apply(self, batch: pa.RecordBatch, bad: BadRows | None) -> pa.RecordBatch:
        """The outputs appended to ``batch``, whose bad rows (found by :meth:`bad_rows`) are ``bad``.

        Rows the model itself drops (``bad.dropped``) leave the output under ``fail`` and ``skip``,
        as the model's own framework drops them; ``null`` keeps them with null outputs.
        """
        if bad is None:
            return _append(batch, self.model.predict(batch))
        if self.on_error == "fail":
            failing = bad.mask if bad.dropped is None else bad.mask & ~bad.dropped
            if failing.any():
                row = int(np.argmax(failing))
                column, reason = bad.reason(row)
                raise BadRecordError(f"row {row}: {reason}", column=column, row=row, reason=reason)
        valid = pa.array(~bad.mask)
        good = batch.filter(valid)
        outputs = self.model.predict(good)
        if self.on_error in ("skip", "fail"):  # under fail, every bad row left is one the model drops
            return _append(good, outputs)
        # null: one output row per input row, null where the input was bad
        positions = np.cumsum(~bad.mask) - 1
        indices = pa.array(positions, mask=bad.mask)
        return _append(batch, outputs.take(indices))


def _float_limit(dtype: Any) -> float | None:
    """The largest finite value of a narrower float the model computes in (float32), else None."""
    kind = np.dtype(dtype)
    return float(np.finfo(kind).max) if kind.kind == "f" and kind.itemsize < 8 else None


def _append(batch: pa.RecordBatch, outputs: pa.RecordBatch) -> pa.RecordBatch:
    for name, column in zip(outputs.schema.names, outputs.columns, strict=True):
        batch = batch.append_column(name, column)
    return batch


class Threshold(Transformer):
    """``output`` = 1 where ``column``[index] (or the scalar ``column``) >= ``threshold``, else 0."""

    def __init__(self, threshold: float = 0.5, *, column: str = "probability", index: int = 1,
                 output: str = "prediction") -> None:
        self.threshold = float(threshold)
        self.column = column
        self.index = index
        self.output = output

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        column = column_or_error(batch, self.column)
        if pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type):
            column = pc.list_element(column, self.index)
        flags = pc.greater_equal(column, pa.scalar(self.threshold)).cast(pa.int64())
        return _set_column(batch, self.output, flags)


class Argmax(Transformer):
    """``output`` = the index of the largest value of the vector ``column``."""

    def __init__(self, *, column: str = "probability", output: str = "prediction") -> None:
        self.column = column
        self.output = output

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        column = column_or_error(batch, self.column)
        if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
            raise SchemaError(f"argmax needs a vector column; '{self.column}' is {column.type}")
        valid = column.is_valid().to_numpy(zero_copy_only=False)
        dense = column.filter(pa.array(valid)) if column.null_count else column
        width = len(dense[0]) if len(dense) else 0
        matrix = dense.flatten().to_numpy(zero_copy_only=False).reshape(len(dense), width)
        best = np.zeros(len(column), np.int64)
        best[valid] = np.argmax(matrix, axis=1) if len(dense) else []
        return _set_column(batch, self.output, pa.array(best, mask=~valid if column.null_count else None))


class LabelMap(Transformer):
    """Map class indices (a list) or values (a mapping) in ``column`` to labels."""

    def __init__(self, labels: Sequence[Any] | Mapping[Any, Any], *, column: str = "prediction",
                 output: str | None = None) -> None:
        self.labels = labels
        self.column = column
        self.output = output or column
        if isinstance(labels, Mapping):
            self._keys, self._values = list(labels), list(labels.values())
        else:
            self._keys, self._values = list(range(len(labels))), list(labels)

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        column = column_or_error(batch, self.column)
        keys = pa.array(self._keys)
        if keys.type != column.type:
            try:
                keys = keys.cast(column.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ConfigError(f"label_map keys do not match column '{self.column}' ({column.type})") from exc
        positions = pc.index_in(column, value_set=keys)
        missing = pc.and_(pc.is_null(positions), pc.is_valid(column))
        if pc.any(missing).as_py():
            value = column.filter(missing)[0].as_py()
            raise SchemaError(f"label_map has no label for {value!r} in column '{self.column}'")
        return _set_column(batch, self.output, pa.array(self._values).take(positions))


class Pipeline(Transformer):
    """Named steps run in order; a Pipeline is itself a transformer."""

    def __init__(self, steps: Sequence[tuple[str, Transformer] | Transformer]) -> None:
        named: list[tuple[str, Transformer]] = []
        for i, step in enumerate(steps):
            name, transformer = step if isinstance(step, tuple) else (f"{type(step).__name__.lower()}_{i}", step)
            if not isinstance(transformer, Transformer):
                raise ConfigError(f"pipeline step '{name}' is a {type(transformer).__name__}, not a Transformer")
            named.append((name, transformer))
        if len({n for n, _ in named}) != len(named):
            raise ConfigError("pipeline step names must be unique")
        self.steps = named

    def _transform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        for _, step in self.steps:
            batch = step.transform(batch)
        return batch

    def split_at_model(self) -> tuple[Pipeline, Pipeline]:
        """(the steps before the model step, the model step and the steps after it)."""
        for i, (_, step) in enumerate(self.steps):
            if isinstance(step, ModelStep):
                return Pipeline(self.steps[:i]), Pipeline(self.steps[i:])
        return Pipeline([]), Pipeline(self.steps)

    def outputs(self, batch: pa.RecordBatch) -> tuple[list[str], pa.RecordBatch]:
        """Transform ``batch``; also name the columns the model and the steps after it wrote."""
        before_model, rest = self.split_at_model()
        before = before_model.transform(batch)
        after = rest.transform(before)
        return self.written(before, after), after

    def written(self, before: pa.RecordBatch, after: pa.RecordBatch) -> list[str]:
        """The columns of ``after`` that the model and the steps after it wrote into ``before``."""
        model = self.model_step
        written = set(model.model.output_names) if model is not None else set()
        had = set(before.schema.names)
        return [n for n in after.schema.names if n not in had or n in written]

    @property
    def model_step(self) -> ModelStep | None:
        for _, step in self.steps:
            if isinstance(step, ModelStep):
                return step
            if isinstance(step, Pipeline) and step.model_step is not None:
                return step.model_step
        return None


# op -> its transformer; a step's keys are the constructor's parameters, whose defaults are the
# only ones (the spec's schema checks the keys and types, and leaves out what is not given)
_OPS: Mapping[str, type[Transformer]] = {
    "select": Select, "rename": Rename, "cast": Cast, "fill_null": FillNull, "assemble": Assemble,
    "threshold": Threshold, "argmax": Argmax, "label_map": LabelMap,
}


def step_from_dict(spec: Mapping[str, Any], *, index: int | None = None) -> Transformer:
    """One declarative step, e.g. ``{"op": "rename", "columns": {"a": "b"}}``.

    Options are checked against the step's schema (unknown keys and wrong types are a
    :class:`ConfigError`); ``index``, the step's place in its pipeline, goes into the message.
    """
    options = validate_step(spec, index=index)
    op = options["op"]
    if op not in _OPS:
        where = f"pipeline.steps[{index}]" if index is not None else "step"
        raise ConfigError(f"{where}: the '{op}' step is the model's place, not a transformer")
    return _OPS[op](**{k: v for k, v in options.items() if k != "op"})
