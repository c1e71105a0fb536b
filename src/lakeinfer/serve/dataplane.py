"""The transport-agnostic data plane: the model loaded once per worker, behind the batcher."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .._version import __version__
from ..errors import LakeinferError
from ..pipeline import Pipeline
from ..runtime.batcher import AdaptiveBatcher, Overloaded
from .config import ServeConfig
from .metrics import Metrics
from .v2 import datatype_of

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


class DataPlane:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.name = config.name or "model"
        self.pipeline: Pipeline | None = None
        self.features: list[str] = []
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self.load_error: str | None = None
        self.batcher: AdaptiveBatcher | None = None
        self.board = ReadyBoard(config.state_dir, config.workers)
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
        threads = max(1, (os.cpu_count() or 1) // self.config.workers)
        pipeline = self.config.recipe().build(threads=threads)
        model = pipeline.model_step.model if pipeline.model_step else None
        assert model is not None
        self.features = list(model.input_columns)
        dtype = next((t.dtype for t in model.signature.inputs), "float64")
        probe_type = pa.from_numpy_dtype(np.dtype(dtype if dtype not in ("string", "object") else "float64"))
        self.inputs = [{"name": f, "datatype": datatype_of(probe_type), "shape": [-1]} for f in self.features]
        probe = pa.RecordBatch.from_pydict({f: pa.array([], probe_type) for f in self.features})
        try:
            names, out = pipeline.outputs(probe)
            self.outputs = [{"name": n, "datatype": datatype_of(out.schema.field(n).type),
                             "shape": [-1, -1] if pa.types.is_list(out.schema.field(n).type) else [-1]} for n in names]
        except LakeinferError:  # pre-steps that need other columns: describe the model's own outputs
            self.outputs = [{"name": t.name, "datatype": "FP64" if len(t.shape) > 1 else datatype_of(
                pa.from_numpy_dtype(np.dtype(t.dtype)) if t.dtype not in ("string", "object") else pa.string()),
                "shape": [-1] * len(t.shape)} for t in model.signature.outputs]
        self.pipeline = pipeline

    def _predict(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        assert self.pipeline is not None
        names, out = self.pipeline.outputs(batch)
        return out.select(names)

    @property
    def loaded(self) -> bool:
        return self.batcher is not None

    def ready(self) -> bool:
        return self.loaded and self.board.all_ready()

    async def infer(self, batch: pa.RecordBatch, timeout: float) -> pa.RecordBatch:
        if self.batcher is None:
            raise Overloaded(self.load_error and f"the model did not load: {self.load_error}" or "the model is loading")
        async with asyncio.timeout(timeout):  # no extra task per request, unlike wait_for
            return await self.batcher.submit(batch)

    def metadata(self) -> dict[str, Any]:
        model = self.pipeline.model_step.model if self.pipeline and self.pipeline.model_step else None
        return {"name": self.name, "versions": ["1"],
                "platform": f"lakeinfer_{model.flavor}" if model else "lakeinfer",
                "inputs": self.inputs, "outputs": self.outputs}

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": "lakeinfer", "version": __version__, "extensions": ["binary_tensor_data"]}

    async def close(self) -> None:
        self.board.unmark()
        if self.batcher is not None:
            await self.batcher.drain()
        self.metrics.close()
