"""Evaluating many Spark ML trees over many rows without a Python loop per row.

All trees of a model live in one set of flat node arrays; leaves point to themselves, so every
row of a chunk walks every tree for the same number of levels (the deepest tree's depth) and
ends on its leaf. Comparisons are Spark's, in float64: a continuous split sends a value to the
left when ``value <= threshold`` (NaN fails it and goes right), a categorical split when the
value is one of its left categories (NaN and values outside them go right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Forest", "Node", "build_forest"]

# rows per chunk: a chunk's (rows x trees) node indices and gathered values stay in cache
CHUNK = 4096


@dataclass(frozen=True)
class Node:
    """One node as Spark stores it; ``left``/``right`` are ids within its tree (-1 for a leaf)."""

    id: int
    left: int
    right: int
    feature: int
    threshold: float  # continuous splits
    categories: tuple[float, ...] | None  # categorical splits: the left categories


@dataclass
class Forest:
    feature: np.ndarray  # int64 per node (0 for leaves)
    threshold: np.ndarray  # float64 per node (+inf for leaves and categorical nodes)
    child: np.ndarray  # int64 per node x 2: the left child at 2i, the right at 2i + 1
    category: np.ndarray  # int64 per node: a row of left_table for a categorical split, else -1
    left_table: np.ndarray  # bool (categorical nodes, max category + 1): category goes left
    roots: np.ndarray  # int64 per tree
    depth: int
    num_features: int

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The global node id of the leaf each row reaches in each tree: (rows, trees)."""
        rows = len(x)
        out = np.empty((rows, len(self.roots)), dtype=np.int64)
        x = np.ascontiguousarray(x, dtype=np.float64)
        for start in range(0, rows, CHUNK):
            stop = min(rows, start + CHUNK)
            out[start:stop] = self._chunk(x[start:stop])
        return out

    def _chunk(self, x: np.ndarray) -> np.ndarray:
        rows, width = x.shape
        flat = x.reshape(-1)
        base = (np.arange(rows, dtype=np.int64) * width)[:, None]
        node = np.broadcast_to(self.roots, (rows, len(self.roots))).copy()
        categorical = len(self.left_table) > 0
        for _ in range(self.depth):
            value = flat[base + self.feature[node]]
            right = ~(value <= self.threshold[node])
            if categorical:
                self._categorical(node, value, right)
            node = self.child[node * 2 + right]
        return node

    def _categorical(self, node: np.ndarray, value: np.ndarray, right: np.ndarray) -> None:
        which = self.category[node]
        at = which >= 0
        if not at.any():
            return
        v = value[at]
        width = self.left_table.shape[1]
        # only a whole number among the stored categories can be a left category
        known = (v >= 0) & (v < width) & (v == np.floor(v))
        go_left = np.zeros(len(v), dtype=bool)
        go_left[known] = self.left_table[which[at][known], v[known].astype(np.int64)]
        right[at] = ~go_left


def build_forest(trees: list[list[Node]], num_features: int) -> tuple[Forest, list[np.ndarray]]:
    """One Forest of ``trees`` (each a list of nodes, any order, root id 0) and, per tree, the
    global ids of its nodes in order of their Spark id (to lay out leaf values)."""
    features, thresholds, lefts, rights, cats, roots, ids = [], [], [], [], [], [], []
    tables: list[tuple[float, ...]] = []
    depth = 0
    offset = 0
    for nodes in trees:
        by_id = {n.id: n for n in nodes}
        order = sorted(by_id)
        position = {node_id: offset + i for i, node_id in enumerate(order)}
        for node_id in order:
            n = by_id[node_id]
            here = position[node_id]
            leaf = n.left < 0
            features.append(0 if leaf else n.feature)
            thresholds.append(np.inf if leaf or n.categories is not None else n.threshold)
            lefts.append(here if leaf else position[n.left])
            rights.append(here if leaf else position[n.right])
            if not leaf and n.categories is not None:
                cats.append(len(tables))
                tables.append(n.categories)
            else:
                cats.append(-1)
        roots.append(position[0])
        ids.append(np.asarray([position[i] for i in order], dtype=np.int64))
        depth = max(depth, _depth(by_id))
        offset += len(order)
    width = int(max((max(c) for c in tables if c), default=-1)) + 1
    table = np.zeros((len(tables), max(width, 1)), dtype=bool)
    for row, categories in enumerate(tables):
        for c in categories:
            if c >= 0 and c == int(c):
                table[row, int(c)] = True
    child = np.empty(2 * offset, dtype=np.int64)
    child[0::2], child[1::2] = lefts, rights
    forest = Forest(feature=np.asarray(features, dtype=np.int64),
                    threshold=np.asarray(thresholds, dtype=np.float64), child=child,
                    category=np.asarray(cats, dtype=np.int64), left_table=table if tables else table[:0],
                    roots=np.asarray(roots, dtype=np.int64), depth=depth, num_features=num_features)
    return forest, ids


def _depth(by_id: dict[int, Node]) -> int:
    deepest, stack = 0, [(0, 0)]
    while stack:
        node_id, level = stack.pop()
        n = by_id[node_id]
        if n.left < 0:
            deepest = max(deepest, level)
        else:
            stack += [(n.left, level + 1), (n.right, level + 1)]
    return deepest
