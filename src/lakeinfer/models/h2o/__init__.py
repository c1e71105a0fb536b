"""H2O-3 MOJO zips scored in numpy, without a JVM: GBM, DRF (and XRT) and GLM models.

The MOJO is read as h2o-genmodel reads it (``model.ini``, the domain files, the compressed trees)
and scored with the same arithmetic, so the answers are H2O's own: ``prediction`` is the label
H2O's ``predict`` gives (for a binomial model by the MOJO's ``default_threshold``, for ties
between classes by H2O's seeded draw) or the value of a regression; ``probability`` lists the
class probabilities in the order of the response's domain.

Columns are matched by the names the model was trained on. A categorical (enum) column comes as
strings (or integers, for levels that are numbers) in any Arrow string or dictionary type and is
matched to the training levels by value; a missing value and a level unseen in training are NA
to the model, which sends them where H2O does (each tree node's NA direction; a GLM's means and
modes). A MOJO is data, not code: no ``--trust-model`` is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import ModelLoadError, SchemaError
from ...schema import Signature, TensorSpec, column_or_error
from .._base import Model
from .._frame import CATEGORY, FeatureKinds
from ._mojo import Mojo, Unsupported, read_mojo
from ._score import Scorer, correct_probabilities, labels_of, make_scorer

__all__ = ["H2OMojoModel", "load", "SUPPORTED"]

#: the algorithms scored here (``algo`` in model.ini)
SUPPORTED = ("gbm", "drf", "glm")
_ENCODINGS = ("AUTO", "Enum", "SortByResponse")
FEW_ROWS = 64  # up to this many rows a column's levels are coded with a dict, past it with Arrow's kernels


class H2OMojoModel(Model):
    flavor = "h2o"

    def __init__(self, path: str, *, features: Sequence[str] | None = None, mojo: Mojo | None = None) -> None:
        mojo = mojo or read_mojo(path)
        algo = mojo.text("algo", "?").lower()
        name = mojo.text("algorithm", algo)
        if algo not in SUPPORTED:
            raise Unsupported(f"H2O MOJO {path}: algorithm '{algo}' is not supported")
        _refuse_unsupported(mojo, path)
        supervised = mojo.flag("supervised", True)
        count = mojo.integer("n_features", len(mojo.columns) - (1 if supervised else 0))
        own = tuple(mojo.columns[:count])
        if features and len(features) != count:
            raise ModelLoadError(f"the H2O model takes {count} features ({', '.join(own)}); "
                                 f"{len(features)} were named")
        self.columns = tuple(features) if features else own
        self.domains = tuple(mojo.domains[:count])
        self.scorer: Scorer = make_scorer(mojo, algo, count)
        self.algo = algo
        response = mojo.columns[-1] if supervised else None
        classes = self.scorer.classes
        domain = mojo.domains[-1] if supervised else None
        self.classes: tuple[str, ...] | None = None
        if classes > 1:
            self.classes = tuple(domain) if domain is not None and len(domain) == classes else tuple(
                str(i) for i in range(classes))
        self.threshold = mojo.number("default_threshold", 0.5)
        self.priors = _array(mojo.numbers("prior_class_distrib"))
        self.model_dist = _array(mojo.numbers("model_class_distrib"))
        # trees undo the class balancing of training (h2o-genmodel's GLM scorers do not)
        self.balanced = (algo != "glm" and mojo.flag("balance_classes") and self.priors is not None
                         and self.model_dist is not None)
        # a GLM without mean imputation cannot take a missing value or an unseen level
        glm_skips = algo == "glm" and not getattr(self.scorer, "impute", True)
        self.handles_missing = not glm_skips
        self.kinds = FeatureKinds(
            kinds={c: CATEGORY for c, d in zip(self.columns, self.domains, strict=True) if d is not None},
            categories={c: d for c, d in zip(self.columns, self.domains, strict=True) if d is not None},
            closed=frozenset(c for c, d in zip(self.columns, self.domains, strict=True)
                             if d is not None and glm_skips))
        self._labels = pa.array(self.classes or (), pa.string())
        self._domain_arrays = [pa.array(d, pa.string()) if d is not None else None for d in self.domains]
        # the same domains as dicts (level -> code), for batches small enough that a dict beats Arrow's kernels
        self._domain_index = [{level: i for i, level in enumerate(d)} if d is not None else None
                              for d in self.domains]
        outputs = [TensorSpec("prediction", "string" if self.classes else "float64")]
        if self.classes:
            outputs.append(TensorSpec("probability", "float64", (None, len(self.classes))))
        version = mojo.text("mojo_version", "?")
        notes = [f"H2O {name} (algo {algo}), MOJO version {version}, saved by H2O {mojo.text('h2o_version', '?')}"]
        if response is not None:
            notes.append(f"response: {response}" + (f" {list(self.classes)}" if self.classes else ""))
        if self.classes and len(self.classes) == 2:
            notes.append(f"binomial label: '{self.classes[1]}' where its probability >= {self.threshold!r} "
                         "(the model's default threshold)")
        if mojo.has("calib_method"):
            notes.append("the model's calibrated probabilities (cal_p*) are not output")
        signature = Signature(
            inputs=tuple(TensorSpec(c, "string" if d is not None else "float64")
                         for c, d in zip(self.columns, self.domains, strict=True)),
            outputs=tuple(outputs), features=self.columns,
            task="classification" if self.classes else "regression", classes=self.classes,
            extra={"algorithm": algo, "algorithm_name": name, "mojo_version": version,
                   "h2o_version": mojo.text("h2o_version", "unknown"), "response": response,
                   "response_domain": list(self.classes) if self.classes else None,
                   "default_threshold": self.threshold if self.classes and len(self.classes) == 2 else None,
                   "columns": [{"name": c, "domain": list(d) if d is not None else None}
                               for c, d in zip(self.columns, self.domains, strict=True)],
                   "notes": notes})
        super().__init__(path, signature)

    @property
    def input_columns(self) -> tuple[str, ...]:
        return self.columns

    def features(self, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray]:
        """The batch as H2O's rows: float64, categories as training-domain codes, NaN for NA and
        for unseen levels; and the rows as H2O's in-cluster predict holds them for its tie-break
        (an unseen level numbered past the training domain, in the sorted order of the unseen
        levels present, as H2O adapts a scored frame to the model)."""
        x = np.empty((batch.num_rows, len(self.columns)), dtype=np.float64)
        numbered: dict[int, np.ndarray] = {}
        for j, name in enumerate(self.columns):
            column = column_or_error(batch, name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            known = self._domain_arrays[j]
            if known is None:
                x[:, j] = _number(column, name)
                continue
            index = self._domain_index[j]
            assert index is not None
            x[:, j], unseen = (_codes_few(column, name, index) if len(column) <= FEW_ROWS
                               else _codes(column, name, known))
            if unseen is not None:
                numbered[j] = unseen
        if not numbered:
            return x, x
        hashed = x.copy()
        for j, unseen in numbered.items():
            hashed[:, j] = np.where(np.isnan(unseen), x[:, j], unseen)
        return x, hashed

    def _predict(self, batch: pa.RecordBatch) -> dict[str, Any]:
        x, hashed = self.features(batch)
        scored = self.scorer.score(x)
        if not self.classes:
            return {"prediction": scored}
        if self.balanced:
            assert self.priors is not None and self.model_dist is not None
            scored = correct_probabilities(scored, self.priors, self.model_dist)
        index = labels_of(scored, hashed, threshold=self.threshold,
                          priors=self.priors if self.scorer.ties_by_priors else None,
                          first_max=not self.scorer.ties_by_priors)
        labels = self._labels.take(pa.array(index, pa.int64()))
        return {"prediction": labels, "probability": scored}


def _array(values: list[float] | None) -> np.ndarray | None:
    return np.asarray(values, dtype=np.float64) if values is not None else None


def _refuse_unsupported(mojo: Mojo, path: str) -> None:
    encoding = mojo.text("_genmodel_encoding", "AUTO")
    if encoding not in _ENCODINGS:
        raise Unsupported(f"H2O MOJO {path}: categorical_encoding '{encoding}' is not supported "
                          f"(lakeinfer scores {', '.join(_ENCODINGS)})")
    for key in ("offset_column", "treatment_column"):
        if mojo.has(key):
            raise ModelLoadError(f"H2O MOJO {path}: models with an {key.replace('_', ' ')} "
                                 f"('{mojo.text(key)}') are not supported")


def _number(column: pa.Array, name: str) -> np.ndarray:
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
        raise SchemaError(f"feature column '{name}' has type {column.type}; the model needs a number")
    if pa.types.is_dictionary(column.type):
        column = column.cast(kind)
    if not pa.types.is_float64(kind):
        column = column.cast(pa.float64())
    # a null becomes NaN
    return column.to_numpy(zero_copy_only=False)  # type: ignore[no-any-return]


def _level_kind(column: pa.Array, name: str, known: pa.Array | dict[str, int]) -> pa.DataType:
    """The type of the column's levels, refused unless strings or integers (matched by their text)."""
    kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        domain = known.to_pylist() if isinstance(known, pa.Array) else list(known)
        shown = ", ".join(repr(v) for v in list(domain)[:5]) + (", ..." if len(domain) > 5 else "")
        raise SchemaError(f"feature column '{name}' has type {column.type}; the model expects a category "
                          f"(one of {shown})")
    return kind


def _codes_few(column: pa.Array, name: str, index: dict[str, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_codes` for a few rows (a served request), with a dict: the same codes and numbers."""
    numbers = pa.types.is_integer(_level_kind(column, name, index))
    levels = [v if v is None or not numbers else str(v) for v in column.to_pylist()]
    codes = np.array([index.get(v, np.nan) if v is not None else np.nan for v in levels], dtype=np.float64)
    fresh = sorted({v for v in levels if v is not None and v not in index})
    if not fresh:
        return codes, None
    number = {level: float(len(index) + i) for i, level in enumerate(fresh)}
    return codes, np.array([number.get(v, np.nan) if v is not None else np.nan for v in levels], dtype=np.float64)


def _codes(column: pa.Array, name: str, known: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Per row, the level's index in the training domain, NaN for null and unseen levels; and,
    where there are unseen levels, per row the number in-cluster H2O gives an unseen level
    (NaN elsewhere), else None."""
    values = column.dictionary if pa.types.is_dictionary(column.type) else column
    if pa.types.is_integer(_level_kind(column, name, known)):  # levels that are numbers,
        values = values.cast(pa.string())  # matched by their text as H2O does
    found = pc.index_in(values, value_set=known.cast(values.type))
    fresh = found.null_count > values.null_count  # levels the model has not seen
    if pa.types.is_dictionary(column.type):
        found = pc.take(found, column.indices)
        if fresh:
            values = pc.take(values, column.indices)
            fresh = found.null_count > values.null_count  # and rows that hold them
    unseen = None
    if fresh:
        extra = pc.and_(pc.is_null(found), pc.is_valid(values))
        levels = sorted(set(pc.filter(values, extra).to_pylist()))
        number = pc.index_in(values, value_set=pa.array(levels, values.type))
        unseen = pc.add(number.cast(pa.float64()), float(len(known))).to_numpy(zero_copy_only=False)
    return found.cast(pa.float64()).to_numpy(zero_copy_only=False), unseen  # null: NaN


def load(path: str, *, features: Sequence[str] | None = None, **_: Any) -> Model:
    """The MOJO at ``path``: scored in numpy where lakeinfer can, else by h2o-genmodel on the JVM
    tier, else refused in one line naming the algorithm."""
    mojo = read_mojo(path)
    try:
        return H2OMojoModel(path, features=features, mojo=mojo)
    except Unsupported as exc:
        reason = str(exc).removeprefix(f"H2O MOJO {path}: ")
    from ._jvm import H2OJvmModel, jvm_refusal

    algo = mojo.text("algo", "?").lower()
    name = mojo.text("algorithm", algo)
    refusal = jvm_refusal(mojo)
    if refusal is not None:
        extra = "" if reason.startswith("algorithm ") else f" ({reason})"
        raise ModelLoadError(f"H2O MOJO {path} holds a {name} model (algo '{algo}'), which lakeinfer cannot "
                             f"score without a JVM{extra}; nor on its JVM tier: {refusal}")
    return H2OJvmModel(mojo, name, algo, features=features)
