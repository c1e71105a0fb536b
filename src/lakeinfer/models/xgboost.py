"""XGBoost boosters saved in XGBoost's own JSON or UBJSON format."""

from __future__ import annotations

import json
from collections.abc import Sequence
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

    def _predict_array(self, x: Any, batch: pa.RecordBatch) -> dict[str, Any]:
        # a DataFrame's categories are mapped by value to those the booster stored
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
