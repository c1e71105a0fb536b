"""Evaluating many Spark ML trees over many rows without a Python loop per row.

All trees of a model live in one set of flat node arrays; leaves point to themselves, so every
row of a chunk walks every tree for the same number of levels (the deepest tree's depth) and
ends on its leaf. Comparisons are Spark's, in float64: a continuous split sends a value to the
left when ``value <= threshold`` (NaN fails it and goes right), a categorical split when the
value is one of its left categories (NaN and values outside them go right).

A categorical split becomes a continuous one on a column of its own, computed per chunk before
the walk: 0.0 where the row's category goes left, 1.0 elsewhere, split at 0.5. The walk then
never branches on the kind of split, which keeps it to a few array operations per level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Forest", "Node", "build_forest"]

# node indices and values gathered per chunk: (rows x trees) of them stay in the L2 cache
CHUNK_CELLS = 1 << 16


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
    """Flat node arrays of all trees, indexed by slot = 2 x global node id.

    Both slots of a node hold its feature and threshold; ``next_slot[slot + go_left]`` is the
    slot of the child to visit, so one level of every tree is seven array operations per
    chunk: gather the feature, offset it into the row, gather the value, gather the threshold,
    compare, add, gather the next slot.
    """

    feature: np.ndarray  # int64 per slot (0 for leaves; num_features + j for categorical split j)
    threshold: np.ndarray  # float64 per slot (+inf for leaves, 0.5 for categorical splits)
    next_slot: np.ndarray  # int64 per slot: at 2i the right child's slot, at 2i + 1 the left's
    split_feature: np.ndarray  # int64 per distinct categorical split: the feature it reads
    left_table: np.ndarray  # bool (distinct categorical splits, categories + 1): category goes left
    roots: np.ndarray  # int64 per tree: the root's slot
    depth: int
    num_features: int

    def __post_init__(self) -> None:
        self.categorical = np.unique(self.split_feature)  # the features categorical splits read
        self.split_source = np.searchsorted(self.categorical, self.split_feature)
        self.split_offset = np.arange(len(self.split_feature), dtype=np.int64) * self.left_table.shape[1]
        self.right_value = np.where(self.left_table, 0.0, 1.0).reshape(-1)
        self.root_feature = self.feature[self.roots]
        self.root_threshold = self.threshold[self.roots]

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The global node id of the leaf each row reaches in each tree, tree by tree: (trees, rows)
        (each tree's leaves contiguous, as the per-tree sums that follow read them)."""
        rows = len(x)
        trees = len(self.roots)
        out = np.empty((trees, rows), dtype=np.int64)
        x = np.ascontiguousarray(x, dtype=np.float64)
        if x.shape[1] != self.num_features:
            raise ValueError(f"the trees read {self.num_features} features, not {x.shape[1]}")
        chunk = max(16, CHUNK_CELLS // max(trees, 1))
        width = self.num_features + len(self.split_feature)
        buffers = _Buffers(min(chunk, rows), trees, width)
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            flat = self._columns(x[start:stop], buffers)
            out[:, start:stop] = self._walk(flat, stop - start, width, buffers).T
        return out

    def _columns(self, x: np.ndarray, buf: _Buffers) -> np.ndarray:
        """The chunk's values, one row after another, with a 0/1 column per categorical split."""
        if not len(self.split_feature):
            return x.reshape(-1)
        rows = len(x)
        wide = buf.wide[:rows]
        wide[:, :self.num_features] = x
        values = x[:, self.categorical]
        last = self.left_table.shape[1] - 1  # the table's last column: not a category, goes right
        with np.errstate(invalid="ignore"):
            whole = (values >= 0) & (values < last) & (values == np.floor(values))
            codes = np.where(whole, values, last).astype(np.int64)
        # each split's column: its row of the table (as 0.0 left, 1.0 right) at the row's category
        at = codes[:, self.split_source] + self.split_offset
        wide[:, self.num_features:] = np.take(self.right_value, at)
        return wide.reshape(-1)

    def _walk(self, flat: np.ndarray, rows: int, width: int, buf: _Buffers) -> np.ndarray:
        base = buf.base[:rows]
        if rows != buf.rows:
            np.multiply(np.arange(rows, dtype=np.int64)[:, None], width, out=base)
            buf.rows = rows
        at, value, limit, left = buf.at[:rows], buf.value[:rows], buf.limit[:rows], buf.left[:rows]
        slot = at.copy()
        if not self.depth:
            slot[:] = self.roots
            return slot >> 1
        # the first level: every row at its tree's root, so each tree reads one known column
        np.take(flat.reshape(rows, width), self.root_feature, axis=1, out=value, mode="clip")
        np.less_equal(value, self.root_threshold, out=left)
        np.add(self.roots, left, out=slot)
        np.take(self.next_slot, slot, out=slot, mode="clip")
        # indices are in range by construction: mode="clip" skips the bounds check
        for _ in range(self.depth - 1):
            np.take(self.feature, slot, out=at, mode="clip")
            at += base
            np.take(flat, at, out=value, mode="clip")
            np.take(self.threshold, slot, out=limit, mode="clip")
            np.less_equal(value, limit, out=left)  # NaN compares false: it goes right
            slot += left
            np.take(self.next_slot, slot, out=slot, mode="clip")
        return slot >> 1


class _Buffers:
    """Per-call scratch arrays for one chunk (a call's own, so concurrent calls never share)."""

    def __init__(self, rows: int, trees: int, width: int) -> None:
        self.rows = -1
        self.wide = np.empty((rows, width), dtype=np.float64)
        self.base = np.empty((rows, 1), dtype=np.int64)
        self.at = np.empty((rows, trees), dtype=np.int64)
        self.value = np.empty((rows, trees), dtype=np.float64)
        self.limit = np.empty((rows, trees), dtype=np.float64)
        self.left = np.empty((rows, trees), dtype=bool)


def build_forest(trees: list[list[Node]], num_features: int) -> tuple[Forest, list[np.ndarray]]:
    """One Forest of ``trees`` (each a list of nodes, any order, root id 0) and, per tree, the
    global ids of its nodes in order of their Spark id (to lay out leaf values)."""
    features, thresholds, lefts, rights, roots, ids = [], [], [], [], [], []
    # distinct categorical splits (feature, left categories): trees share many, and each is a column
    splits: dict[tuple[int, frozenset[float]], int] = {}
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
            if leaf:
                features.append(0)
                thresholds.append(np.inf)
            elif n.categories is not None:
                column = splits.setdefault((n.feature, frozenset(n.categories)), len(splits))
                features.append(num_features + column)
                thresholds.append(0.5)
            else:
                features.append(n.feature)
                thresholds.append(n.threshold)
            lefts.append(here if leaf else position[n.left])
            rights.append(here if leaf else position[n.right])
        roots.append(position[0])
        ids.append(np.asarray([position[i] for i in order], dtype=np.int64))
        depth = max(depth, _depth(by_id))
        offset += len(order)
    categories = int(max((max(c) for _, c in splits if c), default=-1)) + 1
    table = np.zeros((len(splits), categories + 1), dtype=bool)
    for (_, left), row in splits.items():
        for c in left:
            if c >= 0 and c == int(c):
                table[row, int(c)] = True
    next_slot = np.empty(2 * offset, dtype=np.int64)
    next_slot[0::2] = 2 * np.asarray(rights, dtype=np.int64)
    next_slot[1::2] = 2 * np.asarray(lefts, dtype=np.int64)
    forest = Forest(feature=np.repeat(np.asarray(features, dtype=np.int64), 2),
                    threshold=np.repeat(np.asarray(thresholds, dtype=np.float64), 2), next_slot=next_slot,
                    split_feature=np.asarray([f for f, _ in splits], dtype=np.int64), left_table=table,
                    roots=2 * np.asarray(roots, dtype=np.int64), depth=depth, num_features=num_features)
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
