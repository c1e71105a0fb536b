"""A staged model's stages as Ray actors: each stage on whichever node Ray places it, so a model
too large for one node is scored across nodes.

Each actor gets its own stage file's bytes through Ray's object store (the nodes need not share a
file system), loads it once, and turns the tensors it receives into those it sends on. A
micro-batch goes from actor to actor as an object reference, never through the caller, and an
actor runs its calls in order, so stage K works on batch k+1 while stage K+1 works on batch k.
A stage whose actor dies fails the calls in flight with an error naming the stage.

Used where the model's device is ``ray`` (``lakeinfer split --devices ray,ray``, or the model
option ``device = "ray"``), inside a Ray program: the Ray engine's actors, Ray Serve replicas,
or a driver that called ``ray.init()``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

from ... import errors
from .manifest import Manifest, StageEntry
from .runners import load_runner

__all__ = ["RAY", "RayStages", "StageActor", "on_ray"]

RAY = "ray"  # the device that places every stage as a Ray actor


def on_ray(devices: Sequence[str | None]) -> bool:
    """Whether ``devices`` place the stages on Ray (all of them, or none: no mix)."""
    marked = [d is not None and (d == RAY or d.startswith(RAY + ":")) for d in devices]
    if any(marked) and not all(marked):
        raise errors.ConfigError("device ray places every stage as a Ray actor: name it for all of them or none")
    return bool(marked) and all(marked)


class StageActor:
    """One stage in a Ray actor: its file written to the actor's own folder and loaded once."""

    def __init__(self, index: int, count: int, entry: dict[str, Any], data: bytes, threads: int,
                 device: str | None) -> None:
        self.name = f"stage {index + 1} of {count}"
        folder = tempfile.mkdtemp(prefix="lakeinfer-stage-")
        stage = StageEntry.from_dict(entry)
        try:
            with open(os.path.join(folder, stage.file), "wb") as fh:
                fh.write(data)
            self.runner = load_runner(folder, stage, threads=threads, device=device)
        except errors.LakeinferError as exc:
            raise type(exc)(f"{self.name}: {exc}") from None
        finally:  # loaded (a file it maps stays readable until unmapped): the copy can go
            shutil.rmtree(folder, ignore_errors=True)

    def pid(self) -> int:
        return os.getpid()

    def run(self, tensors: dict[str, Any]) -> dict[str, Any]:
        return self.runner(tensors)


class RayStages:
    """The stages of one staged model as Ray actors; the interface of ``StageProcesses``."""

    def __init__(self, folder: str, manifest: Manifest, *, threads: Sequence[int],
                 devices: Sequence[str | None]) -> None:
        self.folder = folder
        self.manifest = manifest
        self.count = len(manifest.stages)
        self._threads = list(threads)
        self._devices = [None if d in (None, RAY) else d.partition(":")[2] for d in devices]
        self._failure: errors.LakeinferError | None = None
        self._lock = threading.Lock()
        self.actors: list[Any] = []
        self._pids: list[int] = []
        self.micro_batches = 0

    def start(self) -> None:
        ray = errors.require("ray", "ray", "a staged model on Ray")
        if not ray.is_initialized():
            raise errors.ConfigError("device ray places the stages as Ray actors: run with --engine ray (batch or "
                                     "serve), or call ray.init() first")
        remote = ray.remote(StageActor)
        # a CPU per stage where the cluster has them; shares of what it has where it has fewer
        cpus = min(1.0, float(ray.cluster_resources().get("CPU", 1)) / self.count)
        try:
            for index, entry in enumerate(self.manifest.stages):
                with open(os.path.join(self.folder, entry.file), "rb") as fh:
                    data = ray.put(fh.read())
                # SPREAD: the stages of a model too large for one node go to several nodes
                actor = remote.options(num_cpus=cpus, max_restarts=0, scheduling_strategy="SPREAD").remote(
                    index, self.count, entry.to_dict(), data, self._threads[index], self._devices[index])
                self.actors.append(actor)
            self._pids = ray.get([actor.pid.remote() for actor in self.actors])
        except ray.exceptions.RayActorError as exc:
            self.close()
            cause = getattr(exc, "cause", None)
            raise cause if isinstance(cause, errors.LakeinferError) else errors.ModelLoadError(
                f"staged model {self.folder}: a stage did not load on Ray: {str(exc).splitlines()[0]}") from None
        except BaseException:
            self.close()
            raise

    @property
    def pids(self) -> list[int]:
        return list(self._pids)

    @property
    def failure(self) -> errors.LakeinferError | None:
        return self._failure

    def run(self, chunks: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every chunk's outputs, in order: each chunk chained through the stage actors."""
        import ray

        with self._lock:
            if self._failure is not None:
                raise self._failure
        refs = []
        for chunk in chunks:
            ref: Any = chunk
            for actor in self.actors:
                ref = actor.run.remote(ref)
            refs.append(ref)
        try:
            results: list[dict[str, Any]] = ray.get(refs)
        except ray.exceptions.RayTaskError as exc:  # a stage raised: its own error, as a stage process gives it
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, errors.LakeinferError) else
                   errors.PredictionError(f"a stage failed: {str(exc).splitlines()[0]}")) from None
        except ray.exceptions.RayActorError as exc:
            failed = self._dead_stage()
            error = errors.WorkerLostError(f"{failed} died on Ray ({str(exc).splitlines()[0]})")
            with self._lock:
                self._failure = self._failure or error
            raise error from None
        self.micro_batches += len(chunks)
        return results

    def _dead_stage(self) -> str:
        import ray

        for index, actor in enumerate(self.actors):
            try:
                ray.get(actor.pid.remote(), timeout=5)
            except Exception:
                return f"stage {index + 1} of {self.count}"
        return "a stage"

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 (already gone, or Ray shut down)
                pass
        self.actors = []
