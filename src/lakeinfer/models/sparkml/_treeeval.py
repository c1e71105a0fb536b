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

    feature: np.ndarray  # int64 per slot (0 for leaves)
    threshold: np.ndarray  # float64 per slot (+inf for leaves and categorical nodes)
    next_slot: np.ndarray  # int64 per slot: at 2i the right child's slot, at 2i + 1 the left's
    category: np.ndarray  # int64 per slot: a row of left_table for a categorical split, else -1
    left_table: np.ndarray  # bool (categorical nodes, max category + 1): category goes left
    roots: np.ndarray  # int64 per tree: the root's slot
    depth: int
    num_features: int

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """The global node id of the leaf each row reaches in each tree: (rows, trees)."""
        rows = len(x)
        trees = len(self.roots)
        out = np.empty((rows, trees), dtype=np.int64)
        x = np.ascontiguousarray(x, dtype=np.float64)
        chunk = max(16, CHUNK_CELLS // max(trees, 1))
        width = x.shape[1] if x.ndim == 2 else 0
        buffers = _Buffers(min(chunk, rows), trees)
        flat = x.reshape(-1)
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            out[start:stop] = self._chunk(flat[start * width:stop * width], stop - start, width, buffers)
        return out

    def _chunk(self, flat: np.ndarray, rows: int, width: int, buf: _Buffers) -> np.ndarray:
        base = buf.base[:rows]
        if width != buf.width or rows != buf.rows:
            np.multiply(np.arange(rows, dtype=np.int64)[:, None], width, out=base)
            buf.width, buf.rows = width, rows
        slot = np.broadcast_to(self.roots, (rows, len(self.roots))).copy()
        at, value, limit, left = buf.at[:rows], buf.value[:rows], buf.limit[:rows], buf.left[:rows]
        categorical = len(self.left_table) > 0
        for _ in range(self.depth):
            np.take(self.feature, slot, out=at)
            at += base
            np.take(flat, at, out=value)
            np.take(self.threshold, slot, out=limit)
            np.less_equal(value, limit, out=left)  # NaN compares false: it goes right
            if categorical:
                self._categorical(slot, value, left)
            slot += left
            np.take(self.next_slot, slot, out=slot)
        return slot >> 1

    def _categorical(self, slot: np.ndarray, value: np.ndarray, left: np.ndarray) -> None:
        which = self.category[slot]
        at = which >= 0
        if not at.any():
            return
        v = value[at]
        width = self.left_table.shape[1]
        # only a whole number among the stored categories can be a left category
        known = (v >= 0) & (v < width) & (v == np.floor(v))
        go_left = np.zeros(len(v), dtype=bool)
        go_left[known] = self.left_table[which[at][known], v[known].astype(np.int64)]
        left[at] = go_left


class _Buffers:
    """Per-call scratch arrays for one chunk (a call's own, so concurrent calls never share)."""

    def __init__(self, rows: int, trees: int) -> None:
        self.rows, self.width = -1, -1
        self.base = np.empty((rows, 1), dtype=np.int64)
        self.at = np.empty((rows, trees), dtype=np.int64)
        self.value = np.empty((rows, trees), dtype=np.float64)
        self.limit = np.empty((rows, trees), dtype=np.float64)
        self.left = np.empty((rows, trees), dtype=bool)


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
    next_slot = np.empty(2 * offset, dtype=np.int64)
    next_slot[0::2] = 2 * np.asarray(rights, dtype=np.int64)
    next_slot[1::2] = 2 * np.asarray(lefts, dtype=np.int64)
    forest = Forest(feature=np.repeat(np.asarray(features, dtype=np.int64), 2),
                    threshold=np.repeat(np.asarray(thresholds, dtype=np.float64), 2), next_slot=next_slot,
                    category=np.repeat(np.asarray(cats, dtype=np.int64), 2),
                    left_table=table if tables else table[:0],
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
