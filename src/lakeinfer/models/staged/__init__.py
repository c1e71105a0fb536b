"""The staged flavor: a model split into stages (``lakeinfer split``), each run in a process of its own.

A staged model folder is a model like any other: batch, serve, stream, inspect and the Python API
take it, and it writes the unsplit model's output columns. The calling process reads only the
manifest; the stage processes start on the first prediction (so ``inspect`` starts none) and
each loads only its own stage file.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ...cpu import available_cores
from ...errors import ConfigError
from .._base import TabularModel
from .manifest import MANIFEST, Manifest, StageEntry, is_staged
from .processes import StageDiedError, StageProcesses
from .ray_stages import RayStages, on_ray
from .split import split_model, stage_table

__all__ = ["MANIFEST", "Manifest", "StageDiedError", "StageEntry", "StagedModel", "is_staged", "load",
           "split_model", "stage_lines", "stage_table"]

MIN_CHUNK_ROWS = 64  # a call is cut into micro-batches of at least this many rows, one per stage at most
# ... and of at most this many: a net's activations for a thousand rows stay in the cache (scored
# as 8,192-row micro-batches, a residual MLP ran at half the rows/s)
MAX_CHUNK_ROWS = 1024
# ... and of at most this many bytes crossing a boundary: each stage holds a few micro-batches
# (one scoring, two waiting, one being sent), which beside its weights should stay small
MESSAGE_BYTES = 4 << 20


def stage_lines(manifest: Manifest) -> list[str]:
    """One line per stage: its file, what it covers, its weights and share, what crosses its boundary."""
    total = manifest.weight_bytes or 1
    lines = []
    for i, stage in enumerate(manifest.stages, 1):
        lines.append(f"stage {i} of {len(manifest.stages)}: {stage.file} ({stage.kind}; {stage.covers}), "
                     f"{stage.weight_bytes / 2**20:.1f} MiB weights ({stage.weight_bytes / total:.0%}), "
                     f"cost share {stage.cost_share:.0%}; {', '.join(stage.inputs)} -> {', '.join(stage.outputs)}")
    return lines


def _devices(device: str | None, count: int) -> list[str | None]:
    """``device``: one device for every stage, or one per stage, comma-separated (``cpu,cuda:0``)."""
    if not device:
        return [None] * count
    named = [d.strip() or None for d in device.split(",")]
    if len(named) == 1:
        return named * count
    if len(named) != count:
        raise ConfigError(f"{len(named)} devices given for a model of {count} stages: name one per stage")
    return named


class StagedModel(TabularModel):
    """A staged model: the features assembled here, the model's work done by its stage processes."""

    flavor = "staged"

    def __init__(self, path: str, manifest: Manifest, *, features: Sequence[str] | None = None,
                 device: str | None = None) -> None:
        self.manifest = manifest
        self.handles_missing = manifest.handles_missing
        self.input_dtype = np.dtype(manifest.input_dtype)
        signature = manifest.to_signature()
        extra = {**signature.extra, "notes": [f"split from {manifest.source} (sha256 {manifest.source_sha256[:12]})",
                                              *stage_lines(manifest), *manifest.notes]}
        signature = type(signature)(inputs=signature.inputs, outputs=signature.outputs, features=signature.features,
                                    task=signature.task, classes=signature.classes, extra=extra)
        super().__init__(path, signature, features=features or manifest.features, width=manifest.width)
        count = len(manifest.stages)
        self.devices = _devices(device or (",".join(manifest.devices) if manifest.devices else None), count)
        #: threads per stage: the cores shared out between the stages
        self.stage_threads = max(1, available_cores() // count)
        crossing = [s.sent_bytes_per_row for s in manifest.stages[:-1] if s.sent_bytes_per_row]
        #: the most rows in one micro-batch
        self.chunk_rows = max(MIN_CHUNK_ROWS, min(MAX_CHUNK_ROWS, MESSAGE_BYTES // max(crossing, default=1)))
        self._start_lock = threading.Lock()
        self._stages: StageProcesses | RayStages | None = None

    @property
    def stages(self) -> StageProcesses | RayStages:
        """The running stages, started on first use (a failed group is not restarted: the error stays)."""
        with self._start_lock:
            if self._stages is None:
                group = RayStages if on_ray(self.devices) else StageProcesses  # device ray: each stage an actor
                stages = group(self.path, self.manifest, threads=[self.stage_threads] * len(self.manifest.stages),
                               devices=self.devices)
                stages.start()
                weakref.finalize(self, stages.close)
                self._stages = stages
            return self._stages

    def close(self) -> None:
        """Stop the stage processes (they also stop when this model is collected or the program exits)."""
        with self._start_lock:
            if self._stages is not None:
                self._stages.close()

    def _predict_array(self, x: Any, batch: pa.RecordBatch) -> dict[str, Any]:
        stages = self.stages
        rows = len(x)
        parts = max(1, min(len(self.manifest.stages), rows // MIN_CHUNK_ROWS), math.ceil(rows / self.chunk_rows))
        size = math.ceil(rows / parts)
        name = self.manifest.input_name
        chunks = [{name: np.ascontiguousarray(x[i: i + size])} for i in range(0, rows, size)]
        results = stages.run(chunks)
        outputs: dict[str, Any] = {}
        for raw, column in self.manifest.output_names.items():
            values = [r[raw] for r in results]
            outputs[column] = values[0] if len(values) == 1 else np.concatenate(values)
        return outputs


def load(path: str, *, features: Sequence[str] | None = None, device: str | None = None, **_: Any) -> StagedModel:
    return StagedModel(path, Manifest.read(path), features=features, device=device)
