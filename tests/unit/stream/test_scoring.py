"""A scorer that lost its model's worker (a staged model's stage died) stops the stream's batch:
its records are not dead letters, whatever path they took."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest

from lakeinfer.errors import PredictionError, WorkerLostError
from lakeinfer.runtime import Scored
from lakeinfer.stream.scoring import MessageScorer


class _Runtime:
    """Two float features; ``score`` raises ``error`` (or scores 2 x f0)."""

    input_columns = ["f0", "f1"]
    model_only = True

    def __init__(self, error: BaseException | None) -> None:
        self.error = error

    def input_schema(self) -> pa.Schema:
        return pa.schema([("f0", pa.float64()), ("f1", pa.float64())])

    def records(self, records: list[dict[str, Any]], keep: Any = None) -> pa.RecordBatch:
        return pa.RecordBatch.from_pylist(records, schema=self.input_schema())

    def score(self, batch: pa.RecordBatch) -> Scored:
        if self.error is not None:
            raise self.error
        return Scored(pa.RecordBatch.from_pydict({"prediction": pa.compute.multiply(batch.column(0), 2)}), None)


def _messages(*records: dict[str, Any]) -> list[Any]:
    return [SimpleNamespace(value=lambda r=r: json.dumps(r).encode()) for r in records]


def test_a_lost_worker_stops_the_batch_instead_of_dead_lettering_it() -> None:
    scorer = MessageScorer(_Runtime(WorkerLostError("stage 2 of 2 (pid 7) died (signal 9)")), [])  # type: ignore[arg-type]
    with pytest.raises(WorkerLostError, match="stage 2 of 2"):
        scorer.score(_messages({"f0": 1.0, "f1": 2.0}, {"f0": 3.0, "f1": 4.0}))


def test_a_record_the_model_fails_on_is_still_a_dead_letter() -> None:
    scorer = MessageScorer(_Runtime(PredictionError("the model raised")), [])  # type: ignore[arg-type]
    outcome = scorer.score(_messages({"f0": 1.0, "f1": 2.0}))
    assert outcome.bad == {0: "the model raised"} and outcome.good == []


def test_good_records_are_scored() -> None:
    scorer = MessageScorer(_Runtime(None), [])  # type: ignore[arg-type]
    outcome = scorer.score(_messages({"f0": 1.0, "f1": 2.0}, {"f0": 3.0, "f1": 4.0}))
    assert outcome.good == [0, 1] and not outcome.bad
