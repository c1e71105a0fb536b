"""What a batch job reports, the same for every engine."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from ..io import tables

__all__ = ["BatchSummary", "committed_summary", "empty_summary", "recorded_summary"]


@dataclass
class BatchSummary:
    output: str
    rows: int
    rows_skipped: int
    parts: int
    parts_resumed: int
    workers: int
    threads: int
    model_loads: int
    seconds: float
    job_id: str | None = None  # a table output's: the id its commit carries
    commit: str | None = None  # the output table's snapshot id / version holding the predictions
    note: str | None = None  # "nothing new", "already committed": why nothing was written
    remarks: list[str] = field(default_factory=list)  # how the job ran where that was not the usual way
    io: str | None = None  # --engine spark: who read and wrote the rows ("arrow": the Python workers; "spark")
    schema: pa.Schema | None = field(default=None, repr=False, compare=False)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        if self.note is not None:
            where = f" (commit {self.commit})" if self.commit else ""
            return f"{self.note}: {self.rows:,} rows at {self.output}{where}, nothing written"
        resumed = f", {self.parts_resumed} resumed" if self.parts_resumed else ""
        return (f"scored {self.rows:,} rows ({self.rows_skipped:,} skipped) into {_count(self.parts, 'part')}"
                f"{resumed} at {self.output} in {self.seconds:.1f}s ({self.rows_per_second:,.0f} rows/s, "
                f"{_count(self.workers, 'worker')} x {_count(self.threads, 'thread')}, "
                f"{_count(self.model_loads, 'model load')})"
                + (f"; committed as {self.commit}" if self.commit else "")
                + (f"; rows read and written by {_IO[self.io]}" if self.io in _IO else "")
                + "".join(f"\nnote: {remark}" for remark in self.remarks))

    def to_dict(self) -> dict[str, Any]:
        out = {**asdict(self), "rows_per_second": self.rows_per_second}
        out.pop("schema")
        return out


_IO = {"arrow": "pyarrow in Spark's Python workers", "spark": "Spark"}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def empty_summary(output: str, job_id: str, note: str, start: float) -> BatchSummary:
    return BatchSummary(output=output, rows=0, rows_skipped=0, parts=0, parts_resumed=0, workers=0, threads=0,
                        model_loads=0, seconds=time.perf_counter() - start, job_id=job_id, note=note)


def committed_summary(output: str, job_id: str, committed: dict[str, str], start: float) -> BatchSummary:
    """A job found in the output table's history: its commit's row counts, nothing written."""
    summary = empty_summary(output, job_id, "already committed", start)
    summary.rows = int(committed.get(tables.ROWS, 0))
    summary.rows_skipped = int(committed.get(tables.ROWS_SKIPPED, 0))
    summary.commit = committed.get("snapshot", committed.get("version"))
    return summary


def recorded_summary(record: dict[str, Any], start: float) -> BatchSummary:
    """A folder job that already completed: the summary its record holds, every part resumed."""
    s = record
    return BatchSummary(output=s["output"], rows=s["rows"], rows_skipped=s["rows_skipped"], parts=s["parts"],
                        parts_resumed=s["parts"], workers=0, threads=0, model_loads=0,
                        seconds=time.perf_counter() - start)
