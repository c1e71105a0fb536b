"""H2O's compressed trees (``trees/tKK_NNN.bin`` of a GBM or DRF MOJO), read and walked in numpy.

The byte layout is the one ``SharedTreeMojoModel.scoreTree`` reads (MOJO 1.20 and later), little
endian. A node: ``nodeType`` (1 byte), the column (2 bytes, 65535 for a lone leaf), the NA split
direction (1 byte), then unless the split is "NA vs rest" either a float32 threshold
(``nodeType & 12 == 0``), a 32-bit inline bitset (``== 8``) or ``bitoff`` (2 bytes), ``nbits``
(4 bytes) and the bitset (``== 12``); then, for a left child that is not a leaf, its size in
``(nodeType & 3) + 1`` bytes; the left child (4 bytes of float32 if ``nodeType & 48 == 48``, a
leaf); the right child (a leaf if ``nodeType & 0xC0``).

H2O's rule per node: the row goes right when its value is NaN (or a category outside the split's
bitset, or past the column's domain) and the node does not send NAs left; otherwise right when
``value >= threshold`` (a float32 widened to double), or the category's bit is set; a split "NA
vs rest" sends NaN right and every value left.

The walk is the one of :mod:`lakeinfer.models.sparkml._treeeval`: all trees of a model in flat
node arrays, every row stepping through every tree one level per round, with each kind of test
turned into ``column >= threshold`` on a column built per chunk: the feature with NaN as
+Infinity (NaN goes right) or -Infinity (NaN goes left), 1.0 where the feature is NaN ("NA vs
rest", threshold 0.5), or 1.0 where a categorical split sends the row's category right.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

__all__ = ["Forest", "TreeNode", "build_forest", "parse_tree"]

CHUNK_CELLS = 1 << 14  # rows x trees gathered per round: they stay in the L1/L2 caches (measured best)
_NA_VS_REST, _NA_LEFT, _LEFT = 1, 2, 4
# derived column kinds
_NAN_RIGHT, _NAN_LEFT, _IS_NAN, _IN_SET = 0, 1, 2, 3


class TreeFormatError(ValueError):
    """The bytes are not a tree this reader knows."""


@dataclass(frozen=True)
class TreeNode:
    """One node: a leaf (``column`` -1, ``value``) or a split with its two children's indices."""

    column: int = -1
    value: float = 0.0
    kind: int = 0  # _NAN_RIGHT/_NAN_LEFT: threshold test; _IS_NAN: NA vs rest; _IN_SET: bitset
    threshold: float = 0.0
    nan_right: bool = True
    bits: tuple[int, int, bytes] | None = None  # (bitoff, nbits, bytes) of a bitset split
    left: int = -1
    right: int = -1


def parse_tree(data: bytes) -> list[TreeNode]:
    """The nodes of one compressed tree, root first."""
    nodes: list[TreeNode] = []
    try:
        _parse(data, 0, nodes, 0)
    except struct.error as exc:
        raise TreeFormatError(f"tree ends early: {exc}") from None
    return nodes


def _leaf(data: bytes, at: int, nodes: list[TreeNode]) -> int:
    nodes.append(TreeNode(value=float(struct.unpack_from("<f", data, at)[0])))
    return len(nodes) - 1


def _parse(data: bytes, at: int, nodes: list[TreeNode], depth: int) -> int:
    """Parse the node at byte ``at``; its index in ``nodes``."""
    if depth > 256:
        raise TreeFormatError("tree deeper than 256 levels")
    node_type, column = struct.unpack_from("<BH", data, at)
    at += 3
    if column == 65535:
        return _leaf(data, at, nodes)
    direction = data[at]
    at += 1
    na_vs_rest = direction == _NA_VS_REST
    leftward = direction in (_NA_LEFT, _LEFT)
    equal = node_type & 12
    kind, threshold, bits = _IS_NAN, 0.5, None
    if not na_vs_rest:
        if equal == 0:
            kind = _NAN_LEFT if leftward else _NAN_RIGHT
            threshold = float(struct.unpack_from("<f", data, at)[0])
            at += 4
        elif equal == 8:
            kind, bits = _IN_SET, (0, 32, bytes(data[at:at + 4]))
            at += 4
        elif equal == 12:
            bitoff, nbits = struct.unpack_from("<Hi", data, at)
            at += 6
            size = ((nbits - 1) >> 3) + 1
            kind, bits = _IN_SET, (bitoff, nbits, bytes(data[at:at + size]))
            at += size
        else:
            raise TreeFormatError(f"split type {equal} is not supported")
    here = len(nodes)
    nodes.append(TreeNode())  # placeholder: children first
    lmask = node_type & 51
    if lmask == 48:
        left = _leaf(data, at, nodes)
        right_at = at + 4
    elif lmask <= 3:
        width = lmask + 1
        size = int.from_bytes(data[at:at + width], "little", signed=width == 4)
        at += width
        left = _parse(data, at, nodes, depth + 1)
        right_at = at + size
    else:
        raise TreeFormatError(f"bad left-child mask {lmask}")
    rmask = (node_type & 0xC0) >> 2
    right = _leaf(data, right_at, nodes) if rmask & 16 else _parse(data, right_at, nodes, depth + 1)
    nodes[here] = TreeNode(column=column, kind=kind, threshold=threshold, nan_right=not leftward,
                           bits=bits, left=left, right=right)
    return here


def _right_table(bits: tuple[int, int, bytes], nan_right: bool, levels: int) -> np.ndarray:
    """Per category code 0..levels-1, then NaN: 1.0 where the split sends the row right."""
    bitoff, nbits, raw = bits
    table = np.full(levels + 1, 1.0 if nan_right else 0.0)
    for code in range(levels):
        idx = code - bitoff
        if 0 <= idx < nbits:
            table[code] = 1.0 if raw[idx >> 3] & (1 << (idx & 7)) else 0.0
    return table


@dataclass
class Forest:
    """Every tree of a model in flat arrays, indexed by slot = 2 x global node id; leaves point to
    themselves. ``next_slot[slot + goes_right]`` is the child's slot."""

    feature: np.ndarray  # int64 per slot: the derived column the node reads
    threshold: np.ndarray  # float64 per slot
    next_slot: np.ndarray  # int64 per slot
    leaf_value: np.ndarray  # float64 per node (0 for splits)
    roots: np.ndarray  # int64 per tree: the root's slot
    depth: int
    derived: list[tuple[int, int]]  # (kind, feature or set index) per derived column
    set_feature: np.ndarray  # int64 per distinct bitset split: the feature it reads
    set_tables: np.ndarray  # float64 (splits, levels + 1): 1.0 where the category goes right

    def __post_init__(self) -> None:
        # ``derived`` is sorted by kind: blocks of NaN-right, NaN-left, is-NaN and bitset columns
        self._blocks = {kind: np.asarray([src for k, src in self.derived if k == kind], dtype=np.int64)
                        for kind in (_NAN_RIGHT, _NAN_LEFT, _IS_NAN)}
        # per categorical feature, in the order of the bitset block (sets sorted by feature): for
        # each category (then NaN), the 0/1 value of every set column of that feature
        groups: dict[int, list[int]] = {}
        for kind, index in self.derived:
            if kind == _IN_SET:
                groups.setdefault(int(self.set_feature[index]), []).append(index)
        self._by_level = [(feature, np.ascontiguousarray(self.set_tables[indices].T))
                          for feature, indices in groups.items()]

    def sums(self, x: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
        """Per row, the sum of the leaf values it reaches in each span of trees: (rows, spans)
        float64, each sum added up tree after tree in the span's order, as h2o-genmodel adds
        them. ``x`` holds the features as float64, categories as their codes in the training
        domain, NaN for missing."""
        rows, trees = len(x), len(self.roots)
        out = np.zeros((rows, len(spans)), dtype=np.float64)
        if not trees or not rows:
            return out
        chunk = max(16, CHUNK_CELLS // trees)
        for start in range(0, rows, chunk):
            stop = min(rows, start + chunk)
            slots = self._walk(self._columns(x[start:stop]))
            # (trees, rows), C order: a sum over axis 0 adds one tree after another
            leaves = np.take(self.leaf_value, (slots >> 1).T, mode="clip")
            for k, (lo, hi) in enumerate(spans):
                if hi > lo:
                    out[start:stop, k] = leaves[lo:hi].sum(axis=0)
        return out

    def _columns(self, x: np.ndarray) -> np.ndarray:
        """The derived columns of a chunk, block by block (see ``derived``), a few array
        operations per block whatever the number of splits."""
        rows = len(x)
        wide = np.empty((rows, max(1, len(self.derived))), dtype=np.float64)
        at = 0
        for kind, fill in ((_NAN_RIGHT, np.inf), (_NAN_LEFT, -np.inf)):
            sources = self._blocks[kind]
            if len(sources):
                block = x[:, sources]
                np.copyto(block, fill, where=np.isnan(block))
                wide[:, at:at + len(sources)] = block
                at += len(sources)
        sources = self._blocks[_IS_NAN]
        if len(sources):
            wide[:, at:at + len(sources)] = np.isnan(x[:, sources])
            at += len(sources)
        if self._by_level:
            last = self.set_tables.shape[1] - 1  # the tables' NaN column
            values = x[:, [feature for feature, _ in self._by_level]]
            with np.errstate(invalid="ignore"):
                whole = (values >= 0) & (values < last) & (values == np.floor(values))
            codes = np.where(whole, values, last).astype(np.int64)
            for j, (_, table) in enumerate(self._by_level):  # one row of the table per category
                wide[:, at:at + table.shape[1]] = np.take(table, codes[:, j], axis=0)
                at += table.shape[1]
        return wide

    def _walk(self, wide: np.ndarray) -> np.ndarray:
        rows, width = wide.shape
        trees = len(self.roots)
        flat = wide.reshape(-1)
        slot = np.empty((rows, trees), dtype=np.int64)
        slot[:] = self.roots
        if not self.depth:
            return slot
        base = (np.arange(rows, dtype=np.int64) * width)[:, None]
        at = np.empty_like(slot)
        value = np.empty((rows, trees), dtype=np.float64)
        limit = np.empty_like(value)
        right = np.empty((rows, trees), dtype=bool)
        for _ in range(self.depth):
            np.take(self.feature, slot, out=at, mode="clip")
            at += base
            np.take(flat, at, out=value, mode="clip")
            np.take(self.threshold, slot, out=limit, mode="clip")
            np.greater_equal(value, limit, out=right)
            slot += right
            np.take(self.next_slot, slot, out=slot, mode="clip")
        return slot


def build_forest(trees: list[list[TreeNode]], domains: list[int | None]) -> Forest:
    """One Forest of ``trees``; ``domains`` gives, per feature, its number of levels (None: a number)."""
    derived: dict[tuple[int, int], int] = {}
    sets: dict[tuple[int, bool, tuple[int, int, bytes]], int] = {}
    features: list[int] = []
    thresholds: list[float] = []
    lefts: list[int] = []
    rights: list[int] = []
    values: list[float] = []
    roots: list[int] = []
    depth = 0
    offset = 0
    for nodes in trees:
        for i, node in enumerate(nodes):
            values.append(node.value if node.column < 0 else 0.0)
            if node.column < 0:
                features.append(0)
                thresholds.append(np.inf)
                lefts.append(offset + i)
                rights.append(offset + i)
                continue
            if node.column >= len(domains):
                raise TreeFormatError(f"a split reads column {node.column}; the model has {len(domains)} features")
            if node.kind == _IN_SET:
                assert node.bits is not None
                if domains[node.column] is None:
                    raise TreeFormatError(f"a categorical split reads numeric column {node.column}")
                key = sets.setdefault((node.column, node.nan_right, node.bits), len(sets))
                column = derived.setdefault((_IN_SET, key), len(derived))
                threshold = 0.5
            else:
                column = derived.setdefault((node.kind, node.column), len(derived))
                threshold = node.threshold
            features.append(column)
            thresholds.append(threshold)
            lefts.append(offset + node.left)
            rights.append(offset + node.right)
        roots.append(offset)
        depth = max(depth, _depth(nodes))
        offset += len(nodes)
    levels = max([d for d in domains if d is not None], default=0)
    tables = np.zeros((len(sets), levels + 1), dtype=np.float64)
    set_feature = np.zeros(len(sets), dtype=np.int64)
    for (column, nan_right, bits), row in sets.items():
        count = domains[column] or 0
        tables[row, :count] = _right_table(bits, nan_right, count)[:count]
        tables[row, count:] = 1.0 if nan_right else 0.0  # NaN and codes past the domain: the NA way
        set_feature[row] = column
    # derived columns in blocks by kind; bitset columns (whose source is their set) by feature
    order = sorted(derived, key=lambda spec: (spec[0], int(set_feature[spec[1]]) if spec[0] == _IN_SET else 0,
                                              spec[1]))
    position = np.empty(max(1, len(order)), dtype=np.int64)
    for place, spec in enumerate(order):
        position[derived[spec]] = place
    split = np.asarray([n.column >= 0 for nodes in trees for n in nodes], dtype=bool)
    columns = np.asarray(features, dtype=np.int64)
    columns[split] = position[columns[split]]
    next_slot = np.empty(2 * offset, dtype=np.int64)
    next_slot[0::2] = 2 * np.asarray(lefts, dtype=np.int64)
    next_slot[1::2] = 2 * np.asarray(rights, dtype=np.int64)
    return Forest(feature=np.repeat(columns, 2),
                  threshold=np.repeat(np.asarray(thresholds, dtype=np.float64), 2),
                  next_slot=next_slot, leaf_value=np.asarray(values, dtype=np.float64),
                  roots=2 * np.asarray(roots, dtype=np.int64), depth=depth, derived=order,
                  set_feature=set_feature, set_tables=tables)


def _depth(nodes: list[TreeNode]) -> int:
    deepest, stack = 0, [(0, 0)]
    while stack:
        index, level = stack.pop()
        node = nodes[index]
        if node.column < 0:
            deepest = max(deepest, level)
        else:
            stack += [(node.left, level + 1), (node.right, level + 1)]
    return deepest
