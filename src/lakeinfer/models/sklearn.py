"""scikit-learn estimators and Pipelines: joblib or pickle files (trusted only) and skops files."""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import ModelLoadError, UntrustedModelError, require
from ..schema import Signature, TensorSpec
from ._base import TabularModel, classifier_outputs
from ._frame import CATEGORY, NUMBER, STRING, FeatureKinds, by_position

PICKLE_HINT = (
    "it is a pickle, and loading a pickle runs code from the file. Load it only if you trust "
    "its source: pass --trust-model (API: trust=True), or save the model as ONNX or skops instead"
)


def _load_pickle(path: str) -> Any:
    require("sklearn", "sklearn", "a scikit-learn model")
    joblib = require("joblib", "sklearn", "a scikit-learn model")
    try:
        return joblib.load(path)
    except (pickle.UnpicklingError, KeyError, IndexError, EOFError, ValueError) as exc:
        raise ModelLoadError(f"cannot load {path} as a joblib/pickle model: {exc}") from exc


def _load_skops(path: str, trust: bool) -> Any:
    sio = require("skops.io", "sklearn", "a skops model file")
    try:
        unknown = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ModelLoadError(f"cannot read skops file {path}: {exc}") from exc
    if unknown and not trust:
        raise UntrustedModelError(
            f"skops file {path} holds types that are not trusted by default: {', '.join(unknown)}; "
            "pass --trust-model (API: trust=True) if you trust its source"
        )
    try:
        return sio.load(path, trusted=unknown)
    except Exception as exc:
        raise ModelLoadError(f"cannot load skops file {path}: {exc}") from exc


class SklearnModel(TabularModel):
    """A fitted scikit-learn estimator or Pipeline."""

    flavor = "sklearn"

    def __init__(self, path: str, estimator: Any, *, features: Sequence[str] | None = None) -> None:
        if not hasattr(estimator, "predict"):
            raise ModelLoadError(f"{path} holds a {type(estimator).__name__}, which has no predict method")
        self.estimator = estimator
        named = getattr(estimator, "feature_names_in_", None)
        self._by_name = named is not None
        width = getattr(estimator, "n_features_in_", None)
        classes = getattr(estimator, "classes_", None)
        self._proba = classes is not None and hasattr(estimator, "predict_proba")
        outputs = [TensorSpec("prediction", str(np.asarray(classes).dtype) if classes is not None else "float64")]
        if self._proba:
            outputs.append(TensorSpec("probability", "float64", (None, len(classes))))  # type: ignore[arg-type]
        signature = Signature(
            inputs=(TensorSpec("X", "float64", (None, width)),),
            outputs=tuple(outputs),
            features=tuple(str(n) for n in named) if named is not None else None,
            task="classification" if classes is not None else "regression",
            classes=tuple(classes) if classes is not None else None,
            extra={"estimator": type(estimator).__name__},
        )
        super().__init__(path, signature, features=features, width=width)
        self.handles_missing = _allows_nan(estimator)
        self.kinds = _kinds(estimator, self.features)
        # a DataFrame only for an estimator that may read its columns by name (a ColumnTransformer,
        # a FunctionTransformer, a foreign estimator): the others take the array by position
        self._frame = self._by_name and _reads_names(estimator)
        # the estimator that predicts (a Pipeline's last step) and the steps that transform for it
        self._steps, self._final = _split(estimator) if self._proba else ([], estimator)
        #: labels and probabilities from one estimator call, where its predict follows from them
        self._joint = _joint(self._final) if self._proba else None

    def _predict_array(self, x: Any, batch: pa.RecordBatch) -> dict[str, Any]:
        data: Any = x
        if self._by_name and (self._frame or not isinstance(x, np.ndarray)):
            import pandas as pd

            # Estimators fitted on a DataFrame select their columns by name (ColumnTransformer).
            own = list(self.signature.features or ())
            if isinstance(x, pd.DataFrame):
                data = x.set_axis(own, axis=1) if list(x.columns) != own else x
            else:
                data = pd.DataFrame(x, columns=own, copy=False)
        if not self._by_name or self._frame or not isinstance(data, np.ndarray):
            return self._outputs(data)
        # fitted on a DataFrame but reading by position: the array, without the warning about its names
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_NO_NAMES, category=UserWarning)
            return self._outputs(data)

    def _outputs(self, data: Any) -> dict[str, Any]:
        if not self._proba:
            return classifier_outputs(self.estimator.predict(data), None)
        # a Pipeline's predict and predict_proba would each run its transformers: run them once
        for step in self._steps:
            data = step.transform(data)
        if self._joint is not None:
            return classifier_outputs(*self._joint(data))
        return classifier_outputs(self._final.predict(data), self._final.predict_proba(data))


# scikit-learn's warning for an array given to an estimator fitted on a DataFrame
_NO_NAMES = "X does not have valid feature names"


def _split(estimator: Any) -> tuple[list[Any], Any]:
    """(the transformers, the estimator that predicts): a Pipeline's steps before its last and
    that last step, as Pipeline.predict and predict_proba run them; any other estimator alone."""
    from sklearn import get_config
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or get_config().get("enable_metadata_routing", False):
        return [], estimator
    final = estimator.steps[-1][1]
    if final is None or isinstance(final, str) or not hasattr(final, "predict_proba"):
        return [], estimator
    steps = [s for _, s in estimator.steps[:-1] if s is not None and not (isinstance(s, str) and s == "passthrough")]
    inner, last = _split(final)  # a Pipeline may end in a Pipeline
    return steps + inner, last


def _joint(final: Any) -> Callable[[Any], tuple[Any, np.ndarray]] | None:
    """(labels, probabilities) from one call of ``final``, exactly as its own predict and
    predict_proba give them, for the families whose predict follows from the same raw scores
    (scikit-learn's code: predict and predict_proba both start from decision_function /
    _raw_predict, or predict is the argmax of predict_proba); None for any other estimator."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        GradientBoostingClassifier,
        HistGradientBoostingClassifier,
        RandomForestClassifier,
    )
    from sklearn.linear_model import LogisticRegression

    kind = type(final)  # exactly these classes: a subclass may predict otherwise
    if getattr(final, "classes_", None) is None:
        return None
    if kind in (GradientBoostingClassifier, HistGradientBoostingClassifier) and not hasattr(final, "_loss"):
        return None  # a scikit-learn whose boosting computes probabilities otherwise
    if kind is GradientBoostingClassifier:
        width = getattr(final, "n_features_in_", None)

        def boosted(x: Any) -> tuple[Any, np.ndarray]:
            if isinstance(x, np.ndarray) and x.ndim == 2 and x.shape[1] == width:
                # decision_function is this array conversion, a check that _raw_predict's own
                # check of the trees' input repeats, and _raw_predict: the first check skipped
                raw = final._raw_predict(np.ascontiguousarray(x, dtype=np.float32))
                raw = raw.ravel() if raw.shape[1] == 1 else raw
            else:
                raw = final.decision_function(x)  # what predict and predict_proba each call
            encoded = (raw >= 0).astype(int) if raw.ndim == 1 else np.argmax(raw, axis=1)
            return final.classes_[encoded], final._loss.predict_proba(raw)
        return boosted
    if kind is HistGradientBoostingClassifier:
        def hist(x: Any) -> tuple[Any, np.ndarray]:
            raw = final._raw_predict(x)  # what predict and predict_proba each call
            encoded = (raw.ravel() > 0).astype(int) if raw.shape[1] == 1 else np.argmax(raw, axis=1)
            return final.classes_[encoded], final._loss.predict_proba(raw)
        return hist
    if kind is LogisticRegression:
        return _linear(final)
    if kind in (RandomForestClassifier, ExtraTreesClassifier) and getattr(final, "n_outputs_", 0) == 1:
        def forest(x: Any) -> tuple[Any, np.ndarray]:
            proba = final.predict_proba(x)  # predict is the argmax of these
            return final.classes_.take(np.argmax(proba, axis=1), axis=0), proba
        return forest
    return None


def _linear(final: Any) -> Callable[[Any], tuple[Any, np.ndarray]] | None:
    """A LogisticRegression's labels and probabilities from one decision_function call.

    predict is the class of the positive score (binary) or of the largest; predict_proba is the
    logistic of the score (binary), and for several classes a softmax or, where this scikit-learn
    version or the solver makes it one-vs-rest, the normalised logistics. Which one is asked of
    the estimator itself on probe rows: the rule is used only if it gives exactly its own answers.
    """
    from scipy.special import expit
    from sklearn.utils.extmath import softmax

    classes = final.classes_
    width = getattr(final, "n_features_in_", None)
    coef = getattr(final, "coef_", None)
    if width is None or not isinstance(coef, np.ndarray):
        return None

    def labels(scores: np.ndarray) -> Any:
        return classes.take((scores > 0).astype(int) if scores.ndim == 1 else np.argmax(scores, axis=1), axis=0)

    def one_vs_rest(scores: np.ndarray) -> np.ndarray:
        prob = expit(scores)
        if prob.ndim == 1:
            return np.stack([1 - prob, prob], axis=1)
        total = prob.sum(axis=1)
        zero = total == 0
        if zero.any():
            prob[zero, :] = 1
            total[zero] = prob.shape[1]
        return np.asarray(prob / total.reshape(-1, 1))

    def multinomial(scores: np.ndarray) -> np.ndarray:
        return np.asarray(softmax(scores))

    probe = np.random.default_rng(0).normal(scale=3.0, size=(16, width)).astype(coef.dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_NAMES, category=UserWarning)
        try:
            expected, own_labels = final.predict_proba(probe), final.predict(probe)
            scores = final.decision_function(probe)
        except Exception:  # an estimator that cannot take the probe: two calls, as before
            return None
    rules = [one_vs_rest] if scores.ndim == 1 else [one_vs_rest, multinomial]
    fitting = [r for r in rules if np.array_equal(r(np.array(scores)), expected)]
    if len(fitting) != 1 or not np.array_equal(labels(scores), own_labels):
        return None
    rule = fitting[0]

    def linear(x: Any) -> tuple[Any, np.ndarray]:
        scores = final.decision_function(x)
        return labels(scores), rule(np.array(scores))
    return linear


def _reads_names(estimator: Any) -> bool:
    """Whether ``estimator`` (or one inside it) may select its input columns by name: a
    ColumnTransformer, a FunctionTransformer (any function), or one scikit-learn does not define."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import FunctionTransformer

    try:
        inner = [v for v in estimator.get_params(deep=True).values() if hasattr(v, "get_params")]
    except Exception:  # parameters that cannot be read: by name, as before
        return True
    for part in (estimator, *inner):
        if isinstance(part, ColumnTransformer | FunctionTransformer) or not type(part).__module__.startswith("sklearn."):
            return True
    return False


def _kinds(estimator: Any, chosen: Sequence[str] | None) -> FeatureKinds:
    """String and categorical features of an estimator fitted on a DataFrame: the columns its
    encoders (OneHotEncoder, OrdinalEncoder in a ColumnTransformer) and HistGradientBoosting's
    categorical features read, with the categories they learned."""
    named = getattr(estimator, "feature_names_in_", None)
    names = [str(n) for n in named] if named is not None else []
    if not names:
        return FeatureKinds()  # fitted on an array: numbers only
    found: dict[str, tuple[str, tuple[Any, ...] | None, bool]] = {}
    try:
        _walk(estimator, names, found)
    except Exception:  # an estimator shaped unlike the ones known here: numbers, as before
        return FeatureKinds()
    entries = [found.get(n, (NUMBER, None, False)) for n in names]
    return by_position(names, chosen, [e[0] for e in entries], [e[1] for e in entries], [e[2] for e in entries])


def _walk(estimator: Any, names: list[str], found: dict[str, tuple[str, tuple[Any, ...] | None, bool]]) -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if isinstance(estimator, Pipeline):
        _walk(estimator.steps[0][1], names, found)  # the first step sees the input columns
        return
    if isinstance(estimator, ColumnTransformer):
        for _, transformer, columns in estimator.transformers_:
            if isinstance(transformer, str):  # "drop", "passthrough"
                continue
            steps = transformer.steps if isinstance(transformer, Pipeline) else [("", transformer)]
            position = next((i for i, (_, t) in enumerate(steps) if isinstance(t, OneHotEncoder | OrdinalEncoder)),
                            None)
            if position is None:
                continue
            encoder = steps[position][1]
            # an encoder that sees the raw values refuses the unknown ones itself: named bad records
            closed = position == 0 and encoder.handle_unknown == "error"
            for i, column in enumerate(_column_names(columns, names)):
                found[column] = (STRING, tuple(encoder.categories_[i]), closed)
        return
    mask = getattr(estimator, "is_categorical_", None)
    preprocessor = getattr(estimator, "_preprocessor", None)
    if mask is not None and preprocessor is not None:  # HistGradientBoosting, categorical_features
        encoder = preprocessor.named_transformers_["encoder"]
        categorical = [n for n, m in zip(names, mask, strict=True) if m]
        for column, categories in zip(categorical, encoder.categories_, strict=True):
            found[column] = (CATEGORY, tuple(categories), False)


def _column_names(columns: Any, names: list[str]) -> list[str]:
    """A ColumnTransformer's column selection as feature names."""
    if isinstance(columns, str):
        return [columns]
    if isinstance(columns, slice):
        return names[columns]
    selected = list(columns)
    if selected and isinstance(selected[0], bool | np.bool_):
        return [n for n, keep in zip(names, selected, strict=True) if keep]
    return [names[int(c)] if isinstance(c, int | np.integer) else str(c) for c in selected]


def _allows_nan(estimator: Any) -> bool:
    """scikit-learn's own tag: the estimator (HistGradientBoosting, a Pipeline starting with an
    imputer, ...) accepts NaN in its input."""
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(estimator).input_tags.allow_nan)
    except ImportError:  # scikit-learn < 1.6
        tags = getattr(estimator, "_get_tags", None)
        return bool(tags().get("allow_nan", False)) if tags is not None else False
    except Exception:  # an estimator whose tags cannot be read is taken as refusing NaN
        return False


def load(path: str, *, trust: bool = False, features: Sequence[str] | None = None,
         skops: bool | None = None, **_: Any) -> SklearnModel:
    if skops is None:
        skops = path.endswith(".skops")
    if skops:
        estimator = _load_skops(path, trust)
    else:
        if not trust:
            raise UntrustedModelError(f"refusing to load {path}: {PICKLE_HINT}")
        estimator = _load_pickle(path)
    return SklearnModel(path, estimator, features=features)
