"""One micro-batch of Kafka messages to its output values and the reasons of its bad messages.

Two steps, each on a thread of its own so that they overlap with each other and with the Kafka
side of the neighbouring micro-batches on the main thread: ``parse`` (Arrow's JSON reader), then
``score`` (one model call, the outputs written by Arrow). Both release the GIL for most of their
work. Neither touches a Kafka client: only the messages' values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from ..errors import InputError, LakeinferError, WorkerLostError
from ..runtime import ModelRuntime, Scored
from ..runtime.batcher import score_group
from . import codec


@dataclasses.dataclass
class Outcome:
    """``encoded[i]`` is the output of message ``good[i]``; ``bad`` maps positions to reasons."""

    good: list[int]
    encoded: list[bytes]
    bad: dict[int, str]
    rows: pa.RecordBatch | None = None  # with a ledger: the good messages' features, kept fields, outputs


@dataclasses.dataclass
class Parsed:
    values: list[Any]
    columns: tuple[pa.Table, dict[int, str]] | None  # None: the record path decodes them


class MessageScorer:
    """Message values in, JSON outputs out, every bad message set aside with its reason."""

    def __init__(self, runtime: ModelRuntime, keep: Sequence[str]) -> None:
        self.runtime = runtime
        self.keep = list(keep)
        # a pipeline that is the model alone reads only its feature columns: checked per message
        self.features = list(runtime.input_columns) if runtime.model_only else None
        self._schema = runtime.input_schema()
        self._text = frozenset(f.name for f in self._schema if pa.types.is_string(f.type))
        self._vectors = frozenset(f.name for f in self._schema if pa.types.is_list(f.type))
        # parse may run on two threads at once (a lone batch on a model thread while the parse
        # thread finishes the backlog's last one): the types only gain entries, the same from either
        self._keep_types: dict[str, pa.DataType] = {}
        self.ledger: object = None  # a stream's ledger: when set, outcomes carry their rows (Outcome.rows)

    def parse(self, messages: Sequence[Any]) -> Parsed:
        values = [m.value() for m in messages]
        if self.features is None:
            return Parsed(values, None)
        return Parsed(values, codec.decode_columns(values, self._schema, keep=self.keep, keep_types=self._keep_types))

    def score(self, parsed: Parsed | Future[Parsed] | Sequence[Any]) -> Outcome:
        """The outcome of messages parsed (or being parsed on another thread), or of raw messages."""
        if isinstance(parsed, Future):
            parsed = parsed.result()
        elif not isinstance(parsed, Parsed):
            parsed = self.parse(parsed)
        done = self._columns(parsed.values, parsed.columns) if parsed.columns is not None else None
        return done if done is not None else self._records(parsed.values)

    def _columns(self, values: list[Any], parsed: tuple[pa.Table, dict[int, str]]) -> Outcome | None:
        """The fast path: Arrow parsed the whole batch, one model call, Arrow writes the outputs."""
        assert self.features is not None
        table, bad = parsed
        bad = dict(bad)
        good = [i for i in range(len(values)) if i not in bad]
        if bad:
            table = table.take(pa.array(good, pa.int64()))
        if not good:
            return Outcome([], [], bad)
        features = table.select(self.features).combine_chunks().to_batches()[0]
        (result,) = score_group(self.runtime.score, [features])
        if isinstance(result, WorkerLostError):  # no record's fault: stop, committing nothing of it
            raise result
        if isinstance(result, BaseException):
            return None  # a record the model refuses as a whole: the record path finds which
        encoded = codec.encode_table(table, result.outputs, self.keep)
        if result.errors is not None:  # bad values (the missing-value rule): dead letters
            for i, reason in enumerate(result.errors):
                if reason is not None:
                    bad[good[i]] = reason
            encoded = [e for e, reason in zip(encoded, result.errors, strict=True) if reason is None]
            good = [g for g, reason in zip(good, result.errors, strict=True) if reason is None]
        if not self.ledger:
            return Outcome(good, encoded, bad)
        rows = _joined(table.select([*self.features, *(k for k in self.keep if k not in self.features)]),
                       result.outputs)
        if result.errors is not None:
            rows = rows.filter(pa.array([reason is None for reason in result.errors]))
        return Outcome(good, encoded, bad, rows)

    def _records(self, values: list[Any]) -> Outcome:
        """Message by message: exact reasons for every bad one."""
        records, good, bad = codec.decode(values, self.features, self._text, self._vectors)
        outputs: list[dict[str, Any]] = []
        if records:
            outputs, failed = self._score(records)
            for position, reason in failed.items():
                bad[good[position]] = reason
            keep = [i for i in range(len(records)) if i not in failed]
            records, good = [records[i] for i in keep], [good[i] for i in keep]
        rows = None
        if self.ledger and records:
            rows = _joined(pa.Table.from_batches([self.runtime.records(records, keep=self.keep)]),
                           pa.RecordBatch.from_pylist(outputs))
        return Outcome(good, codec.encode(records, outputs, self.keep), bad, rows)

    def _score(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, str]]:
        """Outputs of the good records (in order) and {position: reason} of records the model refused."""
        try:
            batch = self.runtime.records(records, keep=self.keep)
        except InputError:  # records whose fields do not line up: one by one, each with its reason
            return self._score_each(records)
        (result,) = score_group(self.runtime.score, [batch])
        if isinstance(result, BaseException):
            return self._score_each(records)  # one record failed the merged call: find which
        return _split(result)

    def _score_each(self, records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, str]]:
        outputs: list[dict[str, Any]] = []
        failed: dict[int, str] = {}
        batches: list[pa.RecordBatch | None] = []
        for i, record in enumerate(records):
            try:
                batches.append(self.runtime.records([record], keep=self.keep))
            except InputError as exc:
                failed[i] = str(exc)
                batches.append(None)
        todo = [b for b in batches if b is not None]
        results = iter(score_group(self.runtime.score, todo) if todo else [])
        for i, batch in enumerate(batches):
            if batch is None:
                continue
            result = next(results)
            if isinstance(result, WorkerLostError):  # no record's fault: stop, committing nothing of it
                raise result
            if isinstance(result, BaseException):
                # a record no rule foresaw goes to the dead letters with its reason; the stream goes on
                failed[i] = str(result) if isinstance(result, LakeinferError) else (
                    f"internal error: {type(result).__name__}: {result}")
            elif result.errors is not None:
                failed[i] = str(result.errors[0])
            else:
                outputs.extend(result.outputs.to_pylist())
        return outputs, failed


def _joined(inputs: pa.Table, outputs: pa.RecordBatch) -> pa.RecordBatch:
    """The inputs' columns, then the outputs', as one batch (a ledger's rows)."""
    batch = inputs.combine_chunks().to_batches()
    columns = list(batch[0].columns) if batch else [pa.nulls(0, f.type) for f in inputs.schema]
    return pa.RecordBatch.from_arrays([*columns, *outputs.columns], names=[*inputs.column_names,
                                                                         *outputs.schema.names])


def _split(result: Scored) -> tuple[list[dict[str, Any]], dict[int, str]]:
    rows = result.outputs.to_pylist()
    if result.errors is None:
        return rows, {}
    failed = {i: str(e) for i, e in enumerate(result.errors) if e is not None}
    return [r for r, e in zip(rows, result.errors, strict=True) if e is None], failed
