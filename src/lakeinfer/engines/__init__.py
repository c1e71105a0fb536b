"""Batch engines: each runs a :class:`~lakeinfer.job.BatchJob` and returns a :class:`BatchSummary`.

An engine is a module holding ``ENGINE``, an object with ``name`` and ``run(job) -> BatchSummary``
(:class:`Engine`). :data:`ENGINES` names each engine's module; the CLI's ``--engine`` choices and
the spec's ``batch.engine`` come from it, and a module is imported only when its engine runs, so
an engine's optional dependencies (pyspark, ray) load only for its own jobs.
"""

from __future__ import annotations

import importlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from .summary import BatchSummary

if TYPE_CHECKING:
    from ..job import BatchJob

__all__ = ["ENGINES", "BatchSummary", "Engine", "get_engine", "run"]

# engine name -> the module that holds its ENGINE; read-only so no caller grows it by accident
ENGINES: MappingProxyType[str, str] = MappingProxyType({
    "local": "lakeinfer.engines.local",
    "spark": "lakeinfer.engines.spark",
    "ray": "lakeinfer.engines.ray",
})


class Engine(Protocol):
    """What every batch engine implements."""

    name: str

    def run(self, job: BatchJob) -> BatchSummary:
        """Score ``job.input`` into ``job.output`` exactly once: a rerun of a finished job writes
        nothing, a rerun of an interrupted one resumes it."""
        ...


def get_engine(name: str) -> Engine:
    """The engine registered as ``name``."""
    from ..errors import ConfigError

    if name not in ENGINES:
        raise ConfigError(f"unknown engine '{name}'; choose one of {', '.join(ENGINES)}")
    engine: Engine = importlib.import_module(ENGINES[name]).ENGINE
    return engine


def run(job: BatchJob) -> BatchSummary:
    """Run ``job`` on its engine."""
    return get_engine(job.engine).run(job)
