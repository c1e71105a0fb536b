"""How many rows one call into a model's runtime should take, learnt from the first calls.

A model's cost per row depends on the rows per call: a neural net's activations for a few
thousand rows stay in the core's cache and run about twice as fast per row as for 64Ki rows,
while a tiny model wants long calls to spread each call's fixed cost, and a tree ensemble does
not care. Every call scores real rows, so trying the sizes costs only the slower sizes' share.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["RunSizer"]

SIZES = (1024, 2048, 4096, 16384, 65536)
TRIES = 3  # calls measured per size; the fastest counts, so a call slowed by a neighbour does not decide


class RunSizer:
    """Splits a row-major input into calls of the size that has scored the most rows per second.

    Until each size that fits the input has been measured ``TRIES`` times, the least tried one is
    used. Shared by the threads that call the model: a lost update only costs one more try.
    """

    def __init__(self, sizes: Sequence[int] = SIZES, tries: int = TRIES) -> None:
        self.sizes = tuple(sorted(sizes))
        self.tries = tries
        self._count = dict.fromkeys(self.sizes, 0)
        self._rate = dict.fromkeys(self.sizes, 0.0)  # best rows per second seen

    def size(self, rows: int) -> int:
        """Rows per call for an input of ``rows`` rows."""
        fits = [s for s in self.sizes if s <= rows]
        if not fits:
            return rows
        untried = [s for s in fits if self._count[s] < self.tries]
        if untried:
            return min(untried, key=self._count.__getitem__)
        return max(fits, key=self._rate.__getitem__)

    def record(self, size: int, rows: int, seconds: float) -> None:
        if size in self._count and rows == size:  # a short remainder call says little about its size
            self._count[size] += 1
            self._rate[size] = max(self._rate[size], rows / max(seconds, 1e-9))

    def run(self, call: Callable[[np.ndarray], list[Any]], x: np.ndarray) -> list[Any]:
        """``call`` over ``x`` in calls of the chosen size, its outputs joined row by row."""
        size = self.size(len(x))
        parts = []
        for start in range(0, len(x), size):
            chunk = x[start: start + size]
            begin = time.perf_counter()
            parts.append(call(chunk))
            self.record(size, len(chunk), time.perf_counter() - begin)
        if len(parts) == 1:
            return parts[0]
        return [_join([p[i] for p in parts]) for i in range(len(parts[0]))]


def _join(pieces: list[Any]) -> Any:
    if isinstance(pieces[0], list):  # a ZipMap output: one dict per row
        return [row for piece in pieces for row in piece]
    return np.concatenate(pieces)
