"""The model contract: ``predict(RecordBatch) -> RecordBatch`` plus a :class:`Signature`."""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from ..errors import ConfigError, LakeinferError, PredictionError, SchemaError
from ..schema import BadRows, Signature, assemble_features, invalid_rows, outputs_to_batch
from ._frame import FeatureKinds, feature_frame

__all__ = ["Model", "TabularModel", "classifier_outputs", "placeholder_names"]

# LightGBM names the features of a bare array Column_0, Column_1, ...: not real column names.
_PLACEHOLDER = re.compile(r"^Column_\d+$")


def placeholder_names(names: Sequence[str] | None) -> bool:
    """True when ``names`` are generated placeholders rather than the training columns."""
    return bool(names) and all(_PLACEHOLDER.match(str(n)) for n in names or ())


class Model(abc.ABC):
    """A loaded model of one flavor.

    ``predict`` is the template method: it checks the batch, calls the flavor's
    ``_predict`` and wraps any framework error into a :class:`PredictionError` that
    says which model failed and why.
    """

    flavor: ClassVar[str] = ""
    #: the model takes missing values (null, NaN) as NaN itself; for other models they are bad records
    handles_missing: bool = False
    #: what each feature is to the model (number, category, string) and its learned categories
    kinds: FeatureKinds = FeatureKinds()

    def __init__(self, path: str, signature: Signature) -> None:
        self.path = path
        self.signature = signature

    @property
    @abc.abstractmethod
    def input_columns(self) -> tuple[str, ...]:
        """The batch columns ``predict`` reads."""

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.signature.outputs)

    def check_rows(self, batch: pa.RecordBatch, *, known: dict[str, pa.Array],
                   limit: float | None) -> BadRows | None:
        """The rows of ``batch`` the model cannot take (see :func:`lakeinfer.schema.invalid_rows`), or None."""
        return invalid_rows(batch, self.input_columns, missing_ok=self.handles_missing, known=known, limit=limit)

    def predict(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """The model's outputs for every row of ``batch``, one column per output."""
        if batch.num_rows == 0:
            return self._empty_outputs()
        try:
            outputs = self._predict(batch)
        except LakeinferError:
            raise
        except Exception as exc:  # the framework's own error, with its message kept
            raise PredictionError(
                f"{self.flavor} model {self.path} failed on a batch of {batch.num_rows} rows: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        return outputs_to_batch(outputs, batch.num_rows)

    @abc.abstractmethod
    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        """Named outputs (arrays of one value or one vector per row)."""

    def _empty_outputs(self) -> pa.RecordBatch:
        fields = [pa.field(t.name, _arrow_type(t.dtype, len(t.shape))) for t in self.signature.outputs]
        return pa.RecordBatch.from_pylist([], schema=pa.schema(fields))

    def describe(self) -> dict[str, Any]:
        info = {"flavor": self.flavor, "path": self.path, **self.signature.to_dict()}
        try:
            info["feature_types"] = self.kinds.describe(self.input_columns)
        except ConfigError:  # features not named yet: inspect says so on its own
            pass
        return info


def _arrow_type(dtype: str, rank: int) -> pa.DataType:
    base = pa.string() if dtype in ("string", "object") else pa.from_numpy_dtype(np.dtype(dtype))
    if rank >= 2:
        return pa.list_(pa.float64() if pa.types.is_floating(base) else base)
    return base


class TabularModel(Model):
    """A model whose input is one 2-D tensor assembled from feature columns."""

    input_dtype: Any = np.float64

    def __init__(self, path: str, signature: Signature, *, features: Sequence[str] | None,
                 width: int | None) -> None:
        super().__init__(path, signature)
        chosen = tuple(features) if features else signature.features
        if chosen is not None and width is not None and len(chosen) != width and len(chosen) != 1:
            raise ConfigError(
                f"the model takes {width} features but {len(chosen)} were named: {', '.join(chosen)}"
            )
        self.features = chosen
        self.width = width
        #: (name, width) of the one [N, K] tensor fed to a model that names no features, once
        #: :meth:`name_tensor_columns` has named its columns after it (the server does)
        self.tensor_input: tuple[str, int] | None = None

    def name_tensor_columns(self) -> bool:
        """Name the columns of a model that names none after its input tensor: ``X[0]``, ``X[1]``, ...

        The server takes such a model's input as the one [N, K] tensor of its own name (as Triton
        and MLServer do) and splits it into these columns. True when the columns were named so;
        False for a model that names its features, or whose width is unknown.
        """
        if self.features is not None or self.width is None or self.kinds.any_text:
            return False
        name = self.signature.inputs[0].name if self.signature.inputs else "input"
        self.features = tuple(f"{name}[{j}]" for j in range(self.width))
        self.tensor_input = (name, self.width)
        return True

    @property
    def input_columns(self) -> tuple[str, ...]:
        if self.features is None:
            raise ConfigError(
                f"the {self.flavor} model {self.path} does not name its input features; "
                "pass --features COL1,COL2,... (in the order the model was trained on)"
            )
        return self.features

    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        if self.kinds.any_text:  # categorical or string features: the DataFrame the model was fitted on
            return self._predict_array(feature_frame(batch, self.input_columns, self.kinds), batch)
        x = assemble_features(batch, self.input_columns, self.input_dtype)
        if self.width is not None and x.shape[1] != self.width:
            raise SchemaError(
                f"feature vector has {x.shape[1]} values; the model takes {self.width}"
            )
        return self._predict_array(x, batch)

    @abc.abstractmethod
    def _predict_array(self, x: Any, batch: pa.RecordBatch) -> dict[str, Any]:
        """Outputs for the assembled input ``x``: a 2-D array, or a DataFrame where ``kinds`` has text."""


def classifier_outputs(labels: Any, probability: np.ndarray | None) -> dict[str, Any]:
    """Spark ML's names: ``prediction`` (the label) and ``probability`` (one per class)."""
    out: dict[str, Any] = {"prediction": labels}
    if probability is not None:
        out["probability"] = probability
    return out


def binary_probability(p: np.ndarray) -> np.ndarray:
    """[1 - p, p] per row from the positive-class probability ``p``."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    return np.column_stack([1.0 - p, p])
