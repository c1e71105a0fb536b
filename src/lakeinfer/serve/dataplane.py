"""The transport-agnostic data plane: the model loaded once per worker, behind the batcher."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pyarrow as pa

from ..errors import LakeinferError
from ..runtime import ModelRuntime, Scored
from ..runtime.batcher import AdaptiveBatcher, Overloaded
from .config import ServeConfig
from .metrics import Metrics

log = logging.getLogger("lakeinfer.serve")

__all__ = ["DataPlane", "Overloaded", "ReadyBoard"]


class ReadyBoard:
    """Each worker leaves a mark once its model is loaded; the server is ready when all have.

    A mark whose process is gone does not count, so a dead worker makes the server unready.
    """

    def __init__(self, folder: str | None, expected: int) -> None:
        self.folder = Path(folder) if folder else None
        self.expected = expected
        self._mine: Path | None = None

    def mark(self) -> None:
        if self.folder is not None:
            self._mine = self.folder / f"ready-{os.getpid()}"
            self._mine.touch()

    def unmark(self) -> None:
        if self._mine is not None:
            self._mine.unlink(missing_ok=True)

    def all_ready(self) -> bool:
        if self.folder is None:
            return True
        alive = 0
        for mark in self.folder.glob("ready-*"):
            try:
                os.kill(int(mark.name[6:]), 0)
                alive += 1
            except (OSError, ValueError):
                continue
        return alive >= self.expected


# the per-row reasons ride beside a merged batch's outputs to be sliced with them per caller
ERROR_COLUMN = "__lakeinfer_error"


class DataPlane:
    """The model behind the batcher, in Arrow only: it knows no protocol (codecs live in v2.py)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.name = config.name or "model"
        self.runtime: ModelRuntime | None = None
        self.input_schema = pa.schema([])
        self.output_schema = pa.schema([])
        # (name, K) for a model that names no features: served by its one [N, K] input tensor
        self.tensor_input: tuple[str, int] | None = None
        self.load_error: str | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.board = ReadyBoard(config.state_dir, config.workers or 1)
        self.metrics = Metrics(lambda: self.batcher.depth if self.batcher else 0)

    async def load(self) -> None:
        """Load the model off the event loop, so health answers 'not ready' meanwhile."""
        try:
            await asyncio.to_thread(self._load)
        except LakeinferError as exc:
            self.load_error = str(exc)
            log.error("lakeinfer: the model did not load: %s", exc)
            return
        self.batcher = AdaptiveBatcher(self._predict, max_batch_size=self.config.max_batch_size,
                                       max_wait_ms=self.config.max_wait_ms, max_queue=self.config.max_queue,
                                       on_batch=self.metrics.batch)
        self.batcher.start()
        self.board.mark()

    def _load(self) -> None:
        threads = max(1, (os.cpu_count() or 1) // (self.config.workers or 1))
        runtime = ModelRuntime(self.config.recipe, threads=threads, tensor_input=True)
        self.tensor_input = runtime.tensor_input
        self.input_schema = runtime.input_schema()
        self.output_schema = runtime.describe_outputs()
        self.runtime = runtime

    @property
    def features(self) -> list[str]:
        return list(self.input_schema.names)

    @property
    def flavor(self) -> str | None:
        return self.runtime.model.flavor if self.runtime is not None else None

    def _predict(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        # bad rows are isolated, not raised: a merged batch keeps its good callers' rows, and
        # each caller's slice carries its own reasons (see infer)
        assert self.runtime is not None
        scored = self.runtime.score(batch)
        if scored.errors is None:
            return scored.outputs
        return scored.outputs.append_column(ERROR_COLUMN, pa.array(scored.errors, pa.string()))

    @property
    def loaded(self) -> bool:
        return self.batcher is not None

    def ready(self) -> bool:
        return self.loaded and self.board.all_ready()

    async def infer(self, batch: pa.RecordBatch, timeout: float, *, rows: str = "row {row}") -> pa.RecordBatch:
        """The output columns for ``batch``'s rows; a bad row raises naming it (``rows``: how rows are called)."""
        if self.batcher is None:
            raise Overloaded(self.load_error and f"the model did not load: {self.load_error}" or "the model is loading")
        async with asyncio.timeout(timeout):  # no extra task per request, unlike wait_for
            out = await self.batcher.submit(batch)
        index = out.schema.get_field_index(ERROR_COLUMN)
        if index >= 0:
            errors = out.column(index).to_pylist()
            Scored(out.remove_column(index), errors).raise_bad(rows)
            out = out.remove_column(index)
        return out

    async def close(self) -> None:
        self.board.unmark()
        if self.batcher is not None:
            await self.batcher.drain()
        self.metrics.close()
