"""Spark ML decision trees and tree ensembles (classifiers and regressors).

The node rows are Spark's ``DecisionTreeModelReadWrite.NodeData`` (``id``, ``prediction``,
``impurity``, ``impurityStats``, ``leftChild``, ``rightChild``, ``split`` with ``featureIndex``,
``leftCategoriesOrThreshold`` and ``numCategories``, -1 for a continuous split); an ensemble
stores them per ``treeID`` under ``nodeData`` and its tree weights under ``treesMetadata/``.
Each model then combines its trees' leaves as its Scala ``predictRaw``/``predict`` does.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ...errors import ModelLoadError
from ._predictor import Classifier, Predictor
from ._reader import StageMeta
from ._stage import NUMBER, Col, Frame, register
from ._treeeval import Forest, Node, build_forest

__all__ = ["DecisionTreeClassificationModel", "DecisionTreeRegressionModel", "GBTClassificationModel",
           "GBTRegressionModel", "RandomForestClassificationModel", "RandomForestRegressionModel"]

# leafCol (the leaf index per tree) is not computed here: a model that sets it is refused
_TREE_PARAMS = frozenset({"leafCol"})


class _Trees:
    """The trees of one stage: a Forest and, per tree, each node's prediction, impurity and stats
    laid out by global node id."""

    forest: Forest
    prediction: np.ndarray  # per global node
    impurity: np.ndarray
    stats: list[np.ndarray]  # per global node: impurityStats
    weights: np.ndarray
    weighted: np.ndarray

    def load_trees(self, stage: Predictor, ensemble: bool) -> None:
        meta = stage.meta
        stage.refuse_if_set("leafCol")
        table = meta.data()
        if ensemble:
            rows = table.to_pylist()
            grouped: dict[int, list[dict[str, Any]]] = {}
            for r in rows:
                grouped.setdefault(int(r["treeID"]), []).append(r["nodeData"])
            tree_rows = [grouped[k] for k in sorted(grouped)]
            # (treeID, metadata, weights): named so up to Spark 3, a tuple's _1, _2, _3 since
            info = meta.data("treesMetadata")
            ids = info.column("treeID" if "treeID" in info.column_names else 0).to_pylist()
            weights = info.column("weights" if "weights" in info.column_names else 2).to_pylist()
            self.weights = np.asarray([w for _, w in sorted(zip(ids, weights, strict=True))], dtype=np.float64)
            if len(self.weights) != len(tree_rows):
                raise ModelLoadError(f"{stage.name}: {len(tree_rows)} trees but {len(self.weights)} weights")
        else:
            tree_rows = [table.to_pylist()]
            self.weights = np.ones(1)
        num_features = int(meta.raw.get("numFeatures", -1))
        trees = [[_node(r) for r in nodes] for nodes in tree_rows]
        self.forest, ids = build_forest(trees, num_features)
        total = sum(len(t) for t in trees)
        self.prediction = np.zeros(total)
        self.impurity = np.zeros(total)
        self.stats = [np.zeros(0)] * total
        self.weighted = np.zeros(total)  # prediction x its tree's weight: a boosted tree's term
        for nodes, where, weight in zip(tree_rows, ids, self.weights, strict=True):
            for r, g in zip(sorted(nodes, key=lambda r: int(r["id"])), where, strict=True):
                self.prediction[g] = float(r["prediction"])
                self.impurity[g] = float(r["impurity"])
                self.stats[g] = np.asarray(r["impurityStats"] or [], dtype=np.float64)
                self.weighted[g] = self.prediction[g] * weight

    def class_table(self, num_classes: int, *, normalize: bool) -> np.ndarray:
        """Each node's class counts (or, with ``normalize``, counts / their sum as a random
        forest votes: a tree whose counts sum to 0 adds nothing)."""
        table = np.zeros((len(self.stats), num_classes))
        for g, s in enumerate(self.stats):
            if len(s) == num_classes:
                total = s.sum() if normalize else 1.0
                if total != 0:
                    table[g] = s / total if normalize else s
        return table


def _node(r: dict[str, Any]) -> Node:
    split = r.get("split") or {}
    left, right = int(r["leftChild"]), int(r["rightChild"])
    values = list(split.get("leftCategoriesOrThreshold") or [])
    categorical = int(split.get("numCategories", -1)) >= 0
    if left >= 0 and not categorical and len(values) != 1:
        raise ModelLoadError(f"tree node {r['id']}: a continuous split needs one threshold, not {values}")
    return Node(id=int(r["id"]), left=left, right=right, feature=int(split.get("featureIndex", -1)),
                threshold=float(values[0]) if values and not categorical else np.inf,
                categories=tuple(float(v) for v in values) if categorical else None)


def _normalize(raw: np.ndarray) -> np.ndarray:
    """``normalizeToProbabilitiesInPlace``: divide by the sum unless it is 0."""
    total = raw.sum(axis=1, keepdims=True)
    return np.where(total != 0, raw / np.where(total != 0, total, 1.0), raw)


def _sum_in_order(table: np.ndarray, leaves: np.ndarray) -> np.ndarray:
    """Each tree's leaf value (``table`` per node: a number or a vector) added tree after tree,
    in Spark's order; ``leaves``: (trees, rows). numpy reduces an outer axis one slice after
    another (only an inner, contiguous axis is summed pairwise), so this is Spark's sum."""
    if leaves.shape[1] <= 256:  # few rows: one gather and one reduction, the fewest calls
        return np.asarray(table[leaves].sum(axis=0))
    if table.ndim == 2:  # one class at a time: gathers from a small contiguous column are fastest
        columns = [_sum_in_order(np.ascontiguousarray(table[:, c]), leaves) for c in range(table.shape[1])]
        return np.stack(columns, axis=1) if columns else np.zeros((leaves.shape[1], 0))
    out = np.take(table, leaves[0])  # many rows: tree by tree, never every tree's values at once
    for tree in leaves[1:]:
        out += np.take(table, tree)
    return out


class _TreeClassifier(Classifier, _Trees):
    reads = Classifier.reads | _TREE_PARAMS
    ensemble: ClassVar[bool] = True
    normalize_votes: ClassVar[bool] = True

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.load_trees(self, self.ensemble)
        self.num_features = self.forest.num_features
        self.set_classes(int(meta.raw.get("numClasses", 2)))
        self.table = self.class_table(self.num_classes, normalize=self.normalize_votes)

    def raw(self, x: np.ndarray) -> np.ndarray:
        return _sum_in_order(self.table, self.forest.leaves(x))

    def raw2probability(self, raw: np.ndarray) -> np.ndarray:
        return _normalize(raw)


@register
class DecisionTreeClassificationModel(_TreeClassifier):
    """rawPrediction: the leaf's class counts; probability: them normalized."""

    spark_classes = ("DecisionTreeClassificationModel",)
    ensemble = False
    normalize_votes = False

    def predict(self, x: np.ndarray) -> np.ndarray:
        # Spark's own shortcut when neither raw nor probability is asked for: the leaf's label
        return np.asarray(self.prediction[self.forest.leaves(x)[0]])


@register
class RandomForestClassificationModel(_TreeClassifier):
    """rawPrediction: each tree's leaf counts divided by their sum, added up in tree order."""

    spark_classes = ("RandomForestClassificationModel",)


@register
class GBTClassificationModel(Classifier, _Trees):
    """margin m = sum of weight x leaf prediction; rawPrediction (-m, m); probability from the
    logistic loss, P(0) = 1 / (1 + e^(2m)) and P(1) = 1 - P(0)."""

    spark_classes = ("GBTClassificationModel",)
    reads = Classifier.reads | _TREE_PARAMS

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta)
        self.load_trees(self, True)
        self.num_features = self.forest.num_features
        self.set_classes(2)

    def margin(self, x: np.ndarray) -> np.ndarray:
        return _sum_in_order(self.weighted, self.forest.leaves(x))

    def raw(self, x: np.ndarray) -> np.ndarray:
        m = self.margin(x)
        return np.stack([-m, m], axis=1)

    def raw2probability(self, raw: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):
            p0 = 1.0 / (1.0 + np.exp(-2.0 * raw[:, 0]))
        return np.stack([p0, 1.0 - p0], axis=1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.thresholds is not None:
            return super().predict(x)
        return (self.margin(x) > 0.0).astype(np.float64)


class _TreeRegressor(Predictor, _Trees):
    reads = Predictor.reads | _TREE_PARAMS

    def __init__(self, meta: StageMeta, ensemble: bool) -> None:
        super().__init__(meta)
        self.load_trees(self, ensemble)
        self.num_features = self.forest.num_features


@register
class DecisionTreeRegressionModel(_TreeRegressor):
    """prediction: the leaf's; ``varianceCol`` (when set): the leaf's impurity, as Spark writes it."""

    spark_classes = ("DecisionTreeRegressionModel",)
    reads = _TreeRegressor.reads | {"varianceCol"}

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta, False)
        self.variance_col = str(self.param("varianceCol", "") or "")

    def outputs(self) -> dict[str, str]:
        out = super().outputs()
        return {**out, self.variance_col: NUMBER} if self.variance_col else out

    def transform(self, frame: Frame) -> None:
        x = self.matrix(frame)
        leaf = self.forest.leaves(x)[0]
        if self.prediction_col:
            frame.cols[self.prediction_col] = Col(NUMBER, self.prediction[leaf])
        if self.variance_col:
            frame.cols[self.variance_col] = Col(NUMBER, self.impurity[leaf])


@register
class RandomForestRegressionModel(_TreeRegressor):
    """prediction: the trees' leaf predictions added in tree order, divided by their number."""

    spark_classes = ("RandomForestRegressionModel",)

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta, True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _sum_in_order(self.prediction, self.forest.leaves(x)) / len(self.forest.roots)


@register
class GBTRegressionModel(_TreeRegressor):
    """prediction: sum of weight x leaf prediction over the trees."""

    spark_classes = ("GBTRegressionModel",)

    def __init__(self, meta: StageMeta) -> None:
        super().__init__(meta, True)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _sum_in_order(self.weighted, self.forest.leaves(x))
