"""CPU policy, in one place: the cores this process may use, and how batch, serve and stream
share them between processes, threads and a framework's own thread pool."""

from __future__ import annotations

import math
import os

__all__ = ["CONCURRENT_FLAVORS", "THREADED_FLAVORS", "available_cores", "default_processes", "own_threads",
           "threads_each"]

# Flavors whose runtime scores a batch on its own thread pool with the GIL released: one
# process using every core beats one process per core (they would share nothing, not even
# the CPU caches that hold the model).
THREADED_FLAVORS = frozenset({"onnx", "xgboost", "lightgbm", "torchscript", "torch_export", "tensorflow", "keras",
                              "staged"})
# Flavors whose predict may run on several threads at once over one loaded model (onnxruntime's
# Run is thread-safe): several single-threaded calls in flight beat one call on a thread pool.
CONCURRENT_FLAVORS = frozenset({"onnx", "staged"})


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity, within its cgroup's CPU quota (a
    container's limit), where ``os.cpu_count`` counts every core of the machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as fh:  # cgroup v2: "<quota> <period>" or "max <period>"
            quota, period = fh.read().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def own_threads() -> int | None:
    """Threads for a model scoring alone: None leaves the framework its own default (every core of
    the machine), unless this process may use fewer cores, where that default would oversubscribe."""
    cores = available_cores()
    return cores if cores < (os.cpu_count() or 1) else None


def default_processes(flavor: str) -> int:
    """Worker processes for a flavor unless told otherwise (batch and serve): one using every core
    for THREADED_FLAVORS, else one per available core (the GIL-bound flavors: sklearn, skops, mlflow)."""
    return 1 if flavor in THREADED_FLAVORS else available_cores()


def threads_each(processes: int, *, reserve: int = 0) -> int:
    """A model's threads in each of ``processes`` processes sharing the cores, less ``reserve``
    for each process's own work (a server's event loop); at least one."""
    return max(1, available_cores() // max(1, processes) - reserve)
