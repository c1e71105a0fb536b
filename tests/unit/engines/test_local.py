"""The local engine plans its processes and threads from the cores this process may use."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.fs as pafs
import pytest

from lakeinfer.cpu import available_cores
from lakeinfer.engines.local import plan_workers
from lakeinfer.engines.units import overlap_io
from lakeinfer.io.tables import Source
from lakeinfer.runtime import PipelineRecipe

_PINNED = """
import os
import pyarrow.fs as pafs

from lakeinfer.engines.local import plan_workers
from lakeinfer.engines.units import overlap_io
from lakeinfer.io.tables import Source
from lakeinfer.cpu import available_cores
from lakeinfer.runtime import PipelineRecipe
os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
print(available_cores(), *plan_workers(PipelineRecipe("model.onnx", flavor="onnx"), None, 8),
      *plan_workers(PipelineRecipe("model.joblib", flavor="sklearn"), None, 8))
"""


def test_every_available_core_scores() -> None:
    cores = available_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    onnx = PipelineRecipe("model.onnx", flavor="onnx")
    assert plan_workers(onnx, None, 64) == (1, cores, 1)
    assert plan_workers(PipelineRecipe("model.joblib", flavor="sklearn"), None, 64) == (cores, 1, 1)
    # fewer units than cores: a unit's batches are scored side by side, single-threaded calls
    assert plan_workers(onnx, None, 1) == (1, 1, cores)
    for units in range(1, 2 * cores + 1):  # never more calls at once than cores, never fewer than units
        processes, threads, spread = plan_workers(onnx, None, units)
        assert processes == 1 and threads == min(cores, units) and min(cores, units) <= threads * spread <= cores
    assert plan_workers(onnx, 2, 8) == (2, 1, 1)  # processes asked for: each one call at a time


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2,
                    reason="needs CPU affinity and two cores")
def test_a_process_pinned_to_one_core_plans_for_one_core() -> None:
    out = subprocess.run([sys.executable, "-c", _PINNED], capture_output=True,
                         text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.stdout.split() == ["1"] * 7


def test_reading_ahead_only_where_a_core_or_the_network_would_wait() -> None:
    cores = available_cores()
    here = pafs.LocalFileSystem()
    files = Source(here, "parquet", [], None, {})
    assert not overlap_io(cores, files, here)  # a scorer on every core, local files: in line
    assert overlap_io(cores - 1, files, here) == (cores > 1)
    remote = pafs.S3FileSystem(anonymous=True, region="us-east-1")  # nothing is sent until a file is opened
    assert overlap_io(cores, Source(remote, "parquet", [], None, {}), here)
    assert overlap_io(cores, files, remote)
    assert overlap_io(cores, Source(here, "parquet", [], object(), {}), here)  # a table's own reader
