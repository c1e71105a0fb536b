"""GBM, DRF (and XRT) and GLM scoring as h2o-genmodel does it, on whole batches.

Each scorer turns the feature matrix (float64; categories as codes in the training domain, NaN
for a missing value or an unseen level) into H2O's ``preds`` without its first column: the class
probabilities (rows, classes) of a classifier, the value (rows,) of a regression. The sources:
``GbmMojoModel.unifyPreds``, ``DrfMojoModel.unifyPreds``, ``GlmMojoModel.glmScore0``,
``GlmMultinomialMojoModel.glmScore0``; the labels: ``GenModel.getPrediction``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ...errors import ModelLoadError
from ._mojo import Mojo, Unsupported
from ._trees import Forest, TreeFormatError, build_forest, parse_tree

__all__ = ["Scorer", "make_scorer", "labels_of"]

_MASK48 = (1 << 48) - 1
_MULTIPLIER = 0x5DEECE66D
_JAVA_NAN = 0x7FF8000000000000  # Double.NaN's bits: every missing value H2O scores


class Scorer:
    """Scores a feature matrix; ``classes`` is the number of classes (1: regression)."""

    classes: int = 1
    #: the tie-break between equal class probabilities uses the training class priors (trees)
    ties_by_priors: bool = True

    #: the binomial threshold: probabilities this close to it are computed again row by row with
    #: the C library's exp (as Java's), since numpy's vectorised exp may differ in the last bit
    threshold: float = 0.5

    def score(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


_NEAR = 1e-9


def _settle(p1: np.ndarray, threshold: float, exact: Callable[[int], float]) -> None:
    """Recompute, in place, the positive-class probabilities within _NEAR of the threshold."""
    for i in np.flatnonzero(np.abs(p1 - threshold) <= _NEAR):
        try:
            p1[i] = exact(int(i))
        except OverflowError:
            pass


def _exp(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.exp(x)


class TreeScorer(Scorer):
    """GBM and DRF: every tree in one :class:`Forest`, per-class sums, then the algorithm's rule."""

    def __init__(self, mojo: Mojo, features: int, algo: str) -> None:
        self.algo = algo
        self.threshold = mojo.number("default_threshold", 0.5)
        self.classes = mojo.integer("n_classes", 1)
        groups = mojo.integer("n_trees")
        double_trees = mojo.flag("binomial_double_trees")
        per_group = mojo.integer("n_trees_per_class", 0) or (
            1 if self.classes == 2 and not double_trees else self.classes)
        self.groups = groups
        self.double_trees = double_trees
        trees: list[list] = []  # type: ignore[type-arg]
        owners: list[int] = []  # per tree: the column of preds[1:] (or preds[0]) it adds to
        for klass in range(per_group):
            for group in range(groups):
                blob = mojo.blob(f"trees/t{klass:02d}_{group:03d}.bin")
                if blob is None:
                    continue  # an empty tree: H2O skips it
                try:
                    trees.append(parse_tree(blob))
                except TreeFormatError as exc:
                    raise ModelLoadError(f"H2O MOJO {mojo.path}: tree {klass}/{group}: {exc}") from None
                owners.append(klass)
        levels = [len(d) if d is not None else None for d in mojo.domains[:features]]
        try:
            self.forest: Forest = build_forest(trees, levels)
        except TreeFormatError as exc:
            raise ModelLoadError(f"H2O MOJO {mojo.path}: {exc}") from None
        # the trees are in class order: each class's trees are one span
        self.spans = [(owners.index(k), len(owners) - owners[::-1].index(k)) if k in owners else (0, 0)
                      for k in range(per_group)]
        self.width = per_group
        if algo == "gbm":
            self.family = mojo.text("distribution")
            self.link = mojo.text("link_function", _default_link(self.family))
            self.init_f = mojo.number("init_f", 0.0)
            if self.family == "custom":
                raise Unsupported(f"H2O MOJO {mojo.path}: a GBM with a custom distribution is not supported")
            if self.classes > 1 and self.family not in _GBM_CLASSIFIERS:
                raise Unsupported(f"H2O MOJO {mojo.path}: GBM distribution '{self.family}' for a classifier "
                                  "is not supported")
            if self.link not in _GBM_LINKS:
                raise Unsupported(f"H2O MOJO {mojo.path}: GBM link function '{self.link}' is not supported")

    def _sums(self, x: np.ndarray) -> np.ndarray:
        return self.forest.sums(x, self.spans)

    def score(self, x: np.ndarray) -> np.ndarray:
        sums = self._sums(x)
        return self._gbm(sums) if self.algo == "gbm" else self._drf(sums)

    def _gbm(self, sums: np.ndarray) -> np.ndarray:
        if self.family in ("bernoulli", "quasibinomial", "modified_huber"):
            f = sums[:, 0] + self.init_f
            p1 = _GBM_LINKS[self.link](f)
            if self.link == "logit":
                _settle(p1, self.threshold, lambda i: 1.0 / (1.0 + math.exp(-f[i])))
            return np.column_stack([1.0 - p1, p1])
        if self.family == "multinomial":
            if self.classes == 2:  # one tree per group: the second class is the first's negative
                first = sums[:, 0] + self.init_f
                sums = np.column_stack([first, -first])
            scaled = _exp(sums - sums.max(axis=1, keepdims=True))
            p = scaled / scaled.sum(axis=1, keepdims=True)
            if self.classes == 2:
                for i in np.flatnonzero(np.abs(p[:, 1] - self.threshold) <= _NEAR):
                    p[i] = _softmax2(float(first[i]))
            return p  # type: ignore[no-any-return]
        return _GBM_LINKS[self.link](sums[:, 0] + self.init_f)

    def _drf(self, sums: np.ndarray) -> np.ndarray:
        if self.classes == 1:
            return sums[:, 0] / self.groups  # type: ignore[no-any-return]
        if self.classes == 2 and not self.double_trees:
            p0 = sums[:, 0] / self.groups
            return np.column_stack([p0, 1.0 - p0])
        total = sums.sum(axis=1, keepdims=True)
        return np.where(total > 0, sums / np.where(total > 0, total, 1.0), sums)


_GBM_CLASSIFIERS = ("bernoulli", "quasibinomial", "modified_huber", "multinomial")


def _softmax2(first: float) -> tuple[float, float]:
    """``GenModel.GBM_rescale`` of (first, -first), with the C library's exp."""
    top = max(first, -first)
    a, b = math.exp(first - top), math.exp(-first - top)
    total = a + b
    return a / total, b / total


def _gbm_inverse(f: np.ndarray) -> np.ndarray:
    xx = np.where(f < 0, np.minimum(-1e-5, f), np.maximum(-1e-5, f))  # (sic: h2o-genmodel's bounds)
    return 1.0 / xx  # type: ignore[no-any-return]


_GBM_LINKS = {
    "identity": lambda f: f,
    "log": lambda f: np.minimum(1e19, _exp(f)),
    "logit": lambda f: 1.0 / (1.0 + _exp(-f)),
    "ologit": lambda f: 1.0 / (1.0 + _exp(-f)),
    "ologlog": lambda f: 1.0 - _exp(-1.0 * _exp(f)),
    "oprobit": lambda f: np.zeros_like(f),
    "inverse": _gbm_inverse,
}


def _default_link(family: str) -> str:
    if family in ("bernoulli", "fractionalbinomial", "quasibinomial", "modified_huber", "ordinal"):
        return "logit"
    if family in ("multinomial", "poisson", "gamma", "tweedie"):
        return "log"
    return "identity"


@dataclass
class GlmScorer(Scorer):
    """A GLM's coefficients over the expanded (one-hot) columns: categorical features first, then
    the numbers, then the intercept (per class, for a multinomial model)."""

    cats: int
    nums: int
    cat_offsets: np.ndarray
    beta: np.ndarray
    use_all_levels: bool
    impute: bool
    cat_modes: np.ndarray
    num_means: np.ndarray
    family: str
    link: str
    tweedie_power: float
    classes: int = 1
    ties_by_priors: bool = False
    threshold: float = 0.5

    def _filled(self, x: np.ndarray) -> np.ndarray:
        if not self.impute:
            return x
        x = x.copy()
        for i in range(self.cats):
            x[np.isnan(x[:, i]), i] = self.cat_modes[i]
        for i in range(self.nums):
            x[np.isnan(x[:, self.cats + i]), self.cats + i] = self.num_means[i]
        return x

    def _eta(self, x: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """The linear predictor with one block of coefficients (categorical, numeric, intercept),
        added up in h2o-genmodel's order."""
        eta = np.zeros(len(x))
        for i in range(self.cats):
            codes = x[:, i]
            expanded = codes + self.cat_offsets[i] - (0 if self.use_all_levels else 1)
            valid = expanded < self.cat_offsets[i + 1]
            if not self.use_all_levels:
                valid &= codes != 0  # the reference level has no coefficient
            at = np.where(valid, expanded, 0).astype(np.int64)
            eta += np.where(valid, beta[at], 0.0)
        start = int(self.cat_offsets[self.cats])
        for j in range(len(beta) - 1 - start):
            eta += beta[start + j] * x[:, self.cats + j]
        eta += beta[-1]
        return eta

    def score(self, x: np.ndarray) -> np.ndarray:
        x = self._filled(x)
        if self.family == "multinomial":
            per = len(self.beta) // self.classes
            eta = np.column_stack([self._eta(x, self.beta[c * per:(c + 1) * per]) for c in range(self.classes)])
            top = np.maximum(eta.max(axis=1, keepdims=True), 0.0)  # (sic: h2o-genmodel starts at 0)
            scaled = _exp(eta - top)
            return scaled * (1.0 / scaled.sum(axis=1, keepdims=True))  # type: ignore[no-any-return]
        eta = self._eta(x, self.beta)
        mu = self._inverse_link(eta)
        if self.classes == 2:
            if self.link == "logit":
                _settle(mu, self.threshold, lambda i: 1.0 / (math.exp(-eta[i]) + 1.0))
            return np.column_stack([1.0 - mu, mu])
        return mu

    def _inverse_link(self, eta: np.ndarray) -> np.ndarray:
        if self.link == "identity":
            return eta
        if self.link == "logit":
            return 1.0 / (_exp(-eta) + 1.0)  # type: ignore[no-any-return]
        if self.link == "log":
            return _exp(eta)
        if self.link == "inverse":
            return 1.0 / np.where(eta < 0, np.minimum(-1e-5, eta), np.maximum(1e-5, eta))  # type: ignore[no-any-return]
        if self.tweedie_power == 0:  # tweedie
            return np.maximum(2e-16, _exp(eta))
        with np.errstate(invalid="ignore"):
            return np.power(eta, 1.0 / self.tweedie_power)  # type: ignore[no-any-return]


_GLM_LINKS = ("identity", "logit", "log", "inverse", "tweedie")


def glm_scorer(mojo: Mojo) -> GlmScorer:
    family = mojo.text("family")
    if family in ("ordinal",):
        raise Unsupported(f"H2O MOJO {mojo.path}: a GLM of family '{family}' is not supported")
    link = mojo.text("link", "family_default")
    if family != "multinomial" and link not in _GLM_LINKS:
        raise Unsupported(f"H2O MOJO {mojo.path}: GLM link function '{link}' is not supported")
    beta = np.asarray(mojo.numbers("beta") or [], dtype=np.float64)
    cats = mojo.integer("cats")
    offsets = np.asarray(mojo.numbers("cat_offsets") or [0], dtype=np.int64)
    impute = mojo.flag("mean_imputation")
    classes = mojo.integer("n_classes", 1)
    binomial = family in ("binomial", "fractionalbinomial", "quasibinomial")
    if family == "multinomial" and (not classes or len(beta) % classes):
        raise ModelLoadError(f"H2O MOJO {mojo.path}: {len(beta)} coefficients for {classes} classes")
    return GlmScorer(
        cats=cats, nums=mojo.integer("nums"), cat_offsets=offsets, beta=beta,
        use_all_levels=mojo.flag("use_all_factor_levels"), impute=impute,
        cat_modes=np.asarray(mojo.numbers("cat_modes") or [], dtype=np.float64),
        num_means=np.asarray(mojo.numbers("num_means") or [], dtype=np.float64),
        family=family, link=link, tweedie_power=mojo.number("tweedie_link_power", 0.0),
        classes=classes if family == "multinomial" else (2 if binomial else 1),
        threshold=mojo.number("default_threshold", 0.5),
    )


def make_scorer(mojo: Mojo, algo: str, features: int) -> Scorer:
    if algo in ("gbm", "drf"):
        if mojo.number("mojo_version") < 1.2:
            raise Unsupported(f"H2O MOJO {mojo.path}: tree MOJO version {mojo.text('mojo_version')} is older "
                                 "than 1.20 and not supported; save the model again with a newer H2O")
        return TreeScorer(mojo, features, algo)
    if algo == "glm":
        return glm_scorer(mojo)
    raise Unsupported(f"H2O MOJO {mojo.path}: algorithm '{algo}' is not supported")


# -- labels ---------------------------------------------------------------------------------------
def correct_probabilities(p: np.ndarray, prior: np.ndarray, model: np.ndarray) -> np.ndarray:
    """``GenModel.correctProbabilities``: undo the class balancing of training."""
    ratio = np.where((prior != 0) & (model != 0), prior / np.where(model != 0, model, 1.0), 1.0)
    p = p * ratio
    total = p.sum(axis=1, keepdims=True)
    return np.where(total > 0, p / np.where(total > 0, total, 1.0), p)  # type: ignore[no-any-return]


def labels_of(p: np.ndarray, x: np.ndarray, *, threshold: float, priors: np.ndarray | None,
              first_max: bool) -> np.ndarray:
    """Class indices as H2O labels rows: a binomial model by its threshold on the second class, a
    multinomial one by ``GenModel.getPredictionMultinomial`` (``first_max``: GLM's plain argmax)."""
    if p.shape[1] == 2:
        return (p[:, 1] >= threshold).astype(np.int64)  # type: ignore[no-any-return]
    best = np.argmax(p, axis=1)  # the first of the largest, as H2O's scan finds it
    if first_max:
        return best  # type: ignore[no-any-return]
    top = p[np.arange(len(p)), best]
    tied = np.flatnonzero((p == top[:, None]).sum(axis=1) > 1)
    for row in tied:
        best[row] = _tie_break(p[row], x[row], priors)
    return best  # type: ignore[no-any-return]


def _tie_break(preds: np.ndarray, data: np.ndarray, priors: np.ndarray | None) -> int:
    """``GenModel.getPredictionMultinomial`` for one row, its quirks kept: the tied classes it
    collects are every class that ever equalled the running best, and the draw is Java's
    ``new Random(hash).nextDouble()`` with the hash of the row's values."""
    ties, best, count = [0], 0, 0
    for c in range(1, len(preds)):
        if preds[best] < preds[c]:
            best, count = c, 0
        elif preds[best] == preds[c]:
            count += 1
            ties.append(c)
    if count == 0:
        return best
    seed = 0
    for value in data:
        bits = _JAVA_NAN if value != value else struct.unpack("<q", struct.pack("<d", float(value)))[0]
        if bits >= 1 << 63:
            bits -= 1 << 64
        seed ^= bits >> 6
    if priors is not None:
        total = float(sum(priors[i] for i in ties))
        draw = _java_next_double(seed)
        partial = 0.0
        for i in ties:
            partial += priors[i] / total
            if draw <= partial:
                return i
    # H2O's fallback without priors: the (hash % (ties + 1))-th of the classes equal to the best
    index = _java_int_mod(seed, count + 1)
    for c in range(len(preds)):
        if preds[c] == preds[best]:
            index -= 1
            if index < 0:
                return c
    return best


def _java_next_double(seed: int) -> float:
    state = (seed ^ _MULTIPLIER) & _MASK48
    state = (state * _MULTIPLIER + 0xB) & _MASK48
    high = state >> (48 - 26)
    state = (state * _MULTIPLIER + 0xB) & _MASK48
    low = state >> (48 - 27)
    return ((high << 27) + low) * 2.0 ** -53


def _java_int_mod(value: int, modulus: int) -> int:
    """``(int) value % modulus`` in Java: the low 32 bits as a signed int, remainder toward zero."""
    low = value & 0xFFFFFFFF
    if low >= 1 << 31:
        low -= 1 << 32
    remainder = abs(low) % modulus
    return -remainder if low < 0 else remainder
