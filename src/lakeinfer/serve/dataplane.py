"""The transport-agnostic data plane: each model loaded once per worker, behind a batcher of its own."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa

from ..cpu import THREADED_FLAVORS, threads_each
from ..errors import LakeinferError
from ..runtime import ModelRuntime, Scored
from ..runtime.batcher import AdaptiveBatcher, Overloaded
from .config import ModelConfig, ServeConfig
from .envelope import Envelope, ModelUnavailable, UnknownModel
from .metrics import Metrics

log = logging.getLogger("lakeinfer.serve")

__all__ = ["DataPlane", "ModelPlane", "Overloaded", "ReadyBoard", "UnknownModel", "model_threads"]


class ReadyBoard:
    """Each worker leaves a mark per model once it has loaded it; a model is ready when every
    worker has, and the server when every model is.

    A mark whose process is gone does not count, so a dead worker makes the server unready.
    """

    def __init__(self, folder: str | None, expected: int) -> None:
        self.folder = Path(folder) if folder else None
        self.expected = expected
        self._mine: list[Path] = []

    def mark(self, index: int) -> None:
        if self.folder is not None:
            mine = self.folder / f"ready-{index}-{os.getpid()}"
            mine.touch()
            self._mine.append(mine)

    def unmark(self) -> None:
        for mine in self._mine:
            mine.unlink(missing_ok=True)
        self._mine = []

    def ready(self, index: int) -> bool:
        """Whether every worker has loaded model ``index``."""
        if self.folder is None:
            return True
        alive = 0
        for mark in self.folder.glob(f"ready-{index}-*"):
            try:
                os.kill(int(mark.name.rsplit("-", 1)[1]), 0)
                alive += 1
            except (OSError, ValueError):
                continue
        return alive >= self.expected


def model_threads(workers: int | None) -> int:
    """The threads a model may use in each of ``workers`` processes: the cores shared out, less
    one for the worker's event loop (HTTP, decoding, encoding), which competes with the model's
    threads for the cores under load; small batches do not gain from more threads. At least one."""
    return threads_each(workers or 1, reserve=1)


# with ServeConfig.inline_calls: model calls up to this long (on average) run on the event loop
INLINE_CALL_SECONDS = 0.02

# the per-row reasons ride beside a merged batch's outputs to be sliced with them per caller
ERROR_COLUMN = "__lakeinfer_error"


class ModelPlane:
    """One model behind its own batcher, in Arrow only: it knows no protocol (codecs live in v2.py)."""

    def __init__(self, index: int, model: ModelConfig, config: ServeConfig, board: ReadyBoard,
                 metrics: Metrics, *, runtime: ModelRuntime | None = None) -> None:
        self.index = index
        self._loaded = runtime  # built already (a one-worker server's parent checked it so)
        self.model = model
        self.config = config
        self.name = model.name
        self.runtime: ModelRuntime | None = None
        self.input_schema = pa.schema([])
        self.output_schema = pa.schema([])
        # (name, K) for a model that names no features: served by its one [N, K] input tensor
        self.tensor_input: tuple[str, int] | None = None
        self.load_error: str | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.board = board
        self.metrics = metrics

    async def load(self) -> None:
        """Load the model off the event loop, so health answers 'not ready' meanwhile."""
        try:
            await asyncio.to_thread(self._load)
        except LakeinferError as exc:
            self.load_error = str(exc)
            log.error("lakeinfer: model '%s' did not load: %s", self.name, exc)
            return
        assert self.model.max_batch_size is not None and self.model.max_queue is not None
        assert self.model.max_wait_ms is not None

        def on_batch(requests: int, rows: int) -> None:
            self.metrics.batch(requests, rows, self.name)

        assert self.runtime is not None
        self.batcher = AdaptiveBatcher(self._predict, max_batch_size=self.model.max_batch_size,
                                       max_wait_ms=self.model.max_wait_ms, max_queue=self.model.max_queue,
                                       on_batch=on_batch,
                                       holds_gil=self.runtime.model.flavor not in THREADED_FLAVORS,
                                       inline_under=INLINE_CALL_SECONDS if self.config.inline_calls else None)
        self.batcher.start()
        self.board.mark(self.index)

    def _load(self) -> None:
        runtime = self._loaded or ModelRuntime(self.model.recipe, threads=model_threads(self.config.workers),
                                               tensor_input=True)
        self._loaded = None
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

    @property
    def depth(self) -> int:
        return self.batcher.depth if self.batcher is not None else 0

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
        return self.loaded and self.board.ready(self.index)

    @property
    def state(self) -> str:
        """The v2 repository index's state: READY, LOADING (here or in another worker) or UNAVAILABLE."""
        if self.load_error is not None:
            return "UNAVAILABLE"
        return "READY" if self.ready() else "LOADING"

    def admit(self) -> None:
        """Refuse a request at once, before its body is read and decoded, when the queue is full
        (or the model not loaded): under overload the work of a 503 is kept to the least."""
        if self.batcher is None:
            raise self.not_loaded()
        if self.batcher.depth >= self.batcher.max_queue:
            raise Overloaded(f"{self.batcher.depth} requests are waiting (max_queue={self.batcher.max_queue})")

    def not_loaded(self) -> ModelUnavailable:
        """The 503 of a model that is not (yet) here."""
        if self.load_error:
            return ModelUnavailable(f"model '{self.name}' did not load: {self.load_error}")
        return ModelUnavailable(f"the model '{self.name}' is loading")

    async def infer(self, batch: pa.RecordBatch, timeout: float, *, rows: str = "row {row}") -> pa.RecordBatch:
        """The output columns for ``batch``'s rows; a bad row raises naming it (``rows``: how rows are called)."""
        if self.batcher is None:
            raise self.not_loaded()
        async with asyncio.timeout(timeout):  # no extra task per request, unlike wait_for
            out = await self.batcher.submit(batch)
        index = out.schema.get_field_index(ERROR_COLUMN)
        if index >= 0:
            errors = out.column(index).to_pylist()
            Scored(out.remove_column(index), errors).raise_bad(rows)
            out = out.remove_column(index)
        return out

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.drain()


class DataPlane:
    """The server's models, each a :class:`ModelPlane`, looked up by name; one worker's metrics."""

    def __init__(self, config: ServeConfig, *, runtimes: Mapping[str, ModelRuntime] | None = None,
                 api_key: str | None = None) -> None:
        self.config = config
        self.board = ReadyBoard(config.state_dir, config.workers or 1)
        self.metrics = Metrics(lambda: {m.name: m.depth for m in self.models.values()})
        # the request path every transport takes: auth, limits, status codes, metrics, hooks
        self.envelope = Envelope(config, self.metrics, api_key)
        given = runtimes or {}
        self.models = {m.name: ModelPlane(i, m, config, self.board, self.metrics, runtime=given.get(m.name))
                       for i, m in enumerate(config.models)}

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def model(self, name: str) -> ModelPlane:
        """The model named ``name``; else UnknownModel naming the server's models."""
        plane = self.models.get(name)
        if plane is None:
            have = ", ".join(f"'{n}'" for n in self.models)
            raise UnknownModel(f"unknown model '{name}' (this server has {have})")
        return plane

    async def load(self) -> None:
        """Every model, one after another: each is ready as soon as it has loaded."""
        for plane in self.models.values():
            await plane.load()

    def ready(self) -> bool:
        return all(plane.ready() for plane in self.models.values()) and self.envelope.ready()

    def index(self) -> list[dict[str, str]]:
        """The v2 repository index: each model's name, version and state (and why, if unavailable)."""
        entries = []
        for plane in self.models.values():
            entry = {"name": plane.name, "version": "1", "state": plane.state}
            if plane.load_error:
                entry["reason"] = plane.load_error
            entries.append(entry)
        return entries

    async def close(self) -> None:
        self.board.unmark()
        for plane in self.models.values():
            await plane.close()
        self.metrics.close()
