"""MLflow model directories (an MLmodel file), run through their python_function flavor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError, UntrustedModelError, require
from ..schema import Signature, TensorSpec
from ._base import TabularModel


class MLflowModel(TabularModel):
    flavor = "mlflow"

    def __init__(self, path: str, pyfunc_model: Any, *, features: Sequence[str] | None = None) -> None:
        self.pyfunc = pyfunc_model
        schema = pyfunc_model.metadata.get_input_schema()
        named = None
        self._dtypes: list[Any] | None = None
        if schema is not None and not schema.is_tensor_spec() and schema.has_input_names():
            named = tuple(schema.input_names())
            self._dtypes = list(schema.numpy_types())
        flavors = sorted(pyfunc_model.metadata.flavors)
        signature = Signature(
            inputs=(TensorSpec("X", "float64", (None, len(named) if named else None)),),
            outputs=(TensorSpec("prediction", "float64"),),
            features=named,
            extra={"flavors": flavors},
        )
        super().__init__(path, signature, features=features, width=len(named) if named else None)

    def _predict_array(self, x: np.ndarray, batch: pa.RecordBatch) -> dict[str, Any]:
        import pandas as pd

        names = list(self.signature.features or self.input_columns)
        frame = pd.DataFrame(x, columns=names, copy=False)
        if self._dtypes is not None:  # the model's signature enforces its own column types
            frame = frame.astype(dict(zip(names, self._dtypes, strict=True)))
        result = self.pyfunc.predict(frame)
        if isinstance(result, pd.DataFrame):
            if result.shape[1] == 1:
                return {"prediction": result.iloc[:, 0].to_numpy()}
            return {str(c): result[c].to_numpy() for c in result.columns}
        return {"prediction": np.asarray(result)}


def load(path: str, *, trust: bool = False, features: Sequence[str] | None = None, **_: Any) -> MLflowModel:
    if not trust:
        raise UntrustedModelError(
            f"refusing to load MLflow model {path}: its python_function flavor unpickles objects and "
            "imports code from the model directory. Pass --trust-model (API: trust=True) if you trust "
            "its source, or export the model to ONNX"
        )
    pyfunc = require("mlflow.pyfunc", "mlflow", "an MLflow model")
    try:
        model = pyfunc.load_model(path)
    except Exception as exc:
        raise ModelLoadError(f"cannot load MLflow model {path}: {exc}") from exc
    return MLflowModel(path, model, features=features)
