"""LightGBM boosters saved as LightGBM's text model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError, require
from ..schema import Signature, TensorSpec
from ._base import TabularModel, binary_probability, classifier_outputs, placeholder_names
from ._frame import CATEGORY, NUMBER, FeatureKinds, by_position
from ._native import native_message, native_stderr_captured


def _header(path: str) -> dict[str, str]:
    """The key=value lines before the first tree (objective, num_class, ...)."""
    header: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("Tree="):
                break
            key, sep, value = line.strip().partition("=")
            if sep:
                header[key] = value
    return header


class LightGBMModel(TabularModel):
    flavor = "lightgbm"
    handles_missing = True  # NaN follows the missing-value branch learned in training

    def __init__(self, path: str, *, features: Sequence[str] | None = None, threads: int | None = None) -> None:
        lgb = require("lightgbm", "lightgbm", "a LightGBM model")
        try:
            with native_stderr_captured():
                self.booster = lgb.Booster(model_file=path)
            header = _header(path)
        except Exception as exc:
            raise ModelLoadError(f"cannot load LightGBM model {path}: {native_message(exc)}") from exc
        self._predict_params = {"num_threads": threads} if threads else {}
        self.objective = header.get("objective", "regression").split()[0]
        num_class = int(header.get("num_class", "1"))
        self._binary = self.objective in ("binary", "cross_entropy") and num_class == 1
        self._multi = self.objective in ("multiclass", "softmax", "multiclassova", "multiclass_ova", "ova", "ovr")
        classification = self._binary or self._multi
        n_classes = 2 if self._binary else num_class
        names = self.booster.feature_name()
        outputs = [TensorSpec("prediction", "int64" if classification else "float64")]
        if classification:
            outputs.append(TensorSpec("probability", "float64", (None, n_classes)))
        signature = Signature(
            inputs=(TensorSpec("X", "float64", (None, self.booster.num_feature())),),
            outputs=tuple(outputs),
            features=None if placeholder_names(names) else tuple(names),
            task="classification" if classification else "regression",
            classes=tuple(range(n_classes)) if classification else None,
            extra={"objective": self.objective},
        )
        super().__init__(path, signature, features=features, width=self.booster.num_feature())
        self.kinds = _kinds(self.booster, None if placeholder_names(names) else names, self.features)

    def _predict_array(self, x: Any, batch: pa.RecordBatch) -> dict[str, Any]:
        # a DataFrame's categories are mapped by value to the model's pandas_categorical
        # a model file's booster ignores params given when loading: the thread count goes with each call
        raw = np.asarray(self.booster.predict(x, **self._predict_params))
        if self._binary:
            return classifier_outputs((raw > 0.5).astype(np.int64), binary_probability(raw))
        if self._multi:
            return classifier_outputs(np.argmax(raw, axis=1).astype(np.int64), raw.astype(np.float64))
        return {"prediction": raw.astype(np.float64)}


def _kinds(booster: Any, own: Sequence[str] | None, chosen: Sequence[str] | None) -> FeatureKinds:
    """Categorical features and their training categories (``pandas_categorical``, in order)."""
    indices = booster.params.get("categorical_feature") or []
    if isinstance(indices, str):
        indices = [int(i) for i in indices.split(",") if i.strip()]
    learned = list(booster.pandas_categorical or [])
    if not indices or not learned:  # categories given as integer codes: numbers to the model
        return FeatureKinds()
    width = booster.num_feature()
    kinds = [NUMBER] * width
    stored: list[tuple[Any, ...] | None] = [None] * width
    for position, index in enumerate(sorted(int(i) for i in indices)):
        kinds[index] = CATEGORY
        if position < len(learned):
            stored[index] = tuple(learned[position])
    return by_position(own, chosen, kinds, stored)


def load(path: str, *, features: Sequence[str] | None = None, threads: int | None = None, **_: Any) -> LightGBMModel:
    return LightGBMModel(path, features=features, threads=threads)
