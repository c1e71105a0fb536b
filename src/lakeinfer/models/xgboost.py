"""XGBoost boosters saved in XGBoost's own JSON or UBJSON format."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError, require
from ..schema import Signature, TensorSpec
from ._base import TabularModel, binary_probability, classifier_outputs
from ._frame import CATEGORY, NUMBER, FeatureKinds, by_position
from ._native import native_message


class XGBoostModel(TabularModel):
    flavor = "xgboost"
    handles_missing = True  # NaN follows the default branch learned in training
    input_dtype = np.float32

    def __init__(self, path: str, *, features: Sequence[str] | None = None, threads: int | None = None) -> None:
        xgb = require("xgboost", "xgboost", "an XGBoost model")
        booster = xgb.Booster()
        try:
            booster.load_model(path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load XGBoost model {path}: {native_message(exc)}") from exc
        if threads:
            booster.set_param({"nthread": threads})
        self.booster = booster
        learner = json.loads(booster.save_config())["learner"]
        self.objective = learner["objective"]["name"]
        num_class = int(learner["learner_model_param"].get("num_class", "0") or 0)
        classification = self.objective.startswith(("binary:", "multi:"))
        n_classes = num_class if num_class > 1 else 2
        outputs = [TensorSpec("prediction", "int64" if classification else "float64")]
        if self.objective in ("binary:logistic", "multi:softprob"):
            outputs.append(TensorSpec("probability", "float64", (None, n_classes)))
        signature = Signature(
            inputs=(TensorSpec("X", "float32", (None, booster.num_features())),),
            outputs=tuple(outputs),
            features=tuple(booster.feature_names) if booster.feature_names else None,
            task="classification" if classification else "regression",
            classes=tuple(range(n_classes)) if classification else None,
            extra={"objective": self.objective},
        )
        super().__init__(path, signature, features=features, width=booster.num_features())
        self.kinds = _kinds(booster, self.features)
        self._dense = _dense_predictor(booster)

    def _predict_array(self, x: Any, batch: pa.RecordBatch) -> dict[str, Any]:
        if self._dense is not None and isinstance(x, np.ndarray) and x.dtype == np.float32 and x.ndim == 2 \
                and x.flags.c_contiguous:
            raw = self._dense(x)
        else:  # a DataFrame's categories are mapped by value to those the booster stored
            raw = np.asarray(self.booster.inplace_predict(x, validate_features=False))
        if self.objective == "binary:logistic":
            # XGBClassifier.predict: class 1 where p > 0.5
            return classifier_outputs((raw > 0.5).astype(np.int64), binary_probability(raw))
        if self.objective == "multi:softprob":
            return classifier_outputs(np.argmax(raw, axis=1).astype(np.int64), raw.astype(np.float64))
        if self.objective == "multi:softmax":
            return {"prediction": raw.astype(np.int64)}
        if self.objective in ("binary:logitraw", "binary:hinge"):
            return {"prediction": (raw > 0).astype(np.int64)}
        return {"prediction": raw.astype(np.float64)}


# inplace_predict's settings for a plain prediction over every tree, NaN as missing, as JSON once
_DENSE_ARGS = json.dumps({"type": 0, "training": False, "iteration_begin": 0, "iteration_end": 0,
                          "missing": float("nan"), "strict_shape": False, "cache_id": 0}).encode()


def _dense_predictor(booster: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """XGBoost's C prediction over a dense float32 array, called as ``inplace_predict`` calls it.

    ``inplace_predict`` spends more time in Python (dispatch on the input's type, the settings as
    JSON, result objects) than its C call takes on a row or a few: on a one-row request that is
    most of the model's time. This calls the same C function (``XGBoosterPredictFromDense``, in
    XGBoost's C API since 1.4) with the same settings, so the answers are the same bits. None
    (use ``inplace_predict``) where the installed XGBoost does not expose it.
    """
    from xgboost import core

    lib = getattr(core, "_LIB", None)
    function = getattr(lib, "XGBoosterPredictFromDense", None)
    if function is None or not hasattr(core, "_check_call") or not hasattr(booster, "handle"):
        return None
    check = core._check_call
    handle = booster.handle
    null = ctypes.c_void_p()

    def predict(x: np.ndarray) -> np.ndarray:
        rows, width = x.shape
        interface = (f'{{"data":[{x.__array_interface__["data"][0]},true],"shape":[{rows},{width}],'
                     f'"strides":null,"typestr":"<f4","version":3}}').encode()
        shape = ctypes.POINTER(ctypes.c_uint64)()
        dims = ctypes.c_uint64()
        values = ctypes.POINTER(ctypes.c_float)()
        check(function(handle, interface, _DENSE_ARGS, null, ctypes.byref(shape), ctypes.byref(dims),
                       ctypes.byref(values)))
        size = [shape[i] for i in range(dims.value)]
        count = 1
        for extent in size:
            count *= extent
        # the values live in XGBoost's buffer for this thread until its next call: copied out
        return np.ctypeslib.as_array(values, shape=(count,)).reshape(size).copy()

    return predict


def _kinds(booster: Any, chosen: Sequence[str] | None) -> FeatureKinds:
    """Categorical features (``enable_categorical``) and the categories the booster stored."""
    types = list(booster.feature_types or [])
    if "c" not in types:
        return FeatureKinds()
    stored: list[tuple[Any, ...] | None] = [None] * len(types)
    try:
        exported = booster.get_categories(export_to_arrow=True).to_arrow()
        stored = [tuple(values.to_pylist()) if values is not None else None for _, values in exported]
    except (AttributeError, TypeError, ValueError):  # an XGBoost that does not keep them
        pass
    # without stored categories (an older model) the values are the category codes: numbers
    kinds = [CATEGORY if t == "c" and c is not None else NUMBER for t, c in zip(types, stored, strict=True)]
    return by_position(booster.feature_names, chosen, kinds, stored)


def load(path: str, *, features: Sequence[str] | None = None, threads: int | None = None, **_: Any) -> XGBoostModel:
    return XGBoostModel(path, features=features, threads=threads)
