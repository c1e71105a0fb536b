"""The output folder: Parquet parts written under a temporary name and renamed when complete,
a job manifest that says whose results they are, and a success marker written last.

A part's existence under its final name means it is complete, so a rerun after a crash skips
the finished units and redoes the rest: every input row lands in the output exactly once.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ..errors import OutputError
from .sources import filesystem_for

__all__ = ["MANIFEST", "SUCCESS", "OutputFolder", "part_name"]

MANIFEST = "_lakeinfer_job.json"
SUCCESS = "_SUCCESS"
_TMP_PREFIX = ".tmp-"
_STATS_KEY = b"lakeinfer.stats"
ROW_GROUP_ROWS = 1 << 17
# A column gets a dictionary where its first rows repeat: at most one distinct value in
# DICTIONARY_RATIO of DICTIONARY_SAMPLE rows (class labels, categories, a tree's leaf values).
DICTIONARY_SAMPLE = 1 << 13
DICTIONARY_RATIO = 8


def part_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


class OutputFolder:
    """The folder a job writes; ``claim`` binds it to one job's fingerprint."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.path = filesystem_for(uri)

    def _join(self, name: str) -> str:
        return f"{self.path.rstrip('/')}/{name}"

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            with self.fs.open_input_stream(self._join(name)) as fh:
                content = json.loads(fh.read().decode())
        except (FileNotFoundError, ValueError):  # ValueError: not (yet) a record, e.g. Spark's empty _SUCCESS
            return None
        return content if isinstance(content, dict) else None

    def _write_json(self, name: str, content: dict[str, Any]) -> None:
        tmp = self._join(f"{_TMP_PREFIX}{uuid.uuid4().hex}-{name}")
        with self.fs.open_output_stream(tmp) as fh:
            fh.write(json.dumps(content, indent=2, sort_keys=True).encode())
        self.fs.move(tmp, self._join(name))

    def _entries(self) -> set[str]:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.File:
            raise OutputError(f"output {self.uri} is a file; give a folder")
        if info.type != pafs.FileType.Directory:
            return set()
        return {os.path.basename(e.path) for e in self.fs.get_file_info(pafs.FileSelector(self.path))}

    def _same_job(self, manifest: dict[str, Any], fingerprint: dict[str, Any]) -> None:
        theirs = manifest.get("fingerprint", {})
        if theirs != fingerprint:
            raise OutputError(
                f"output folder {self.uri} holds another job's results (model "
                f"{str(theirs.get('pipeline', {}).get('model_digest', '?'))[:12]}, input {theirs.get('input', '?')}); "
                "choose another folder or pass --overwrite"
            )

    def completed(self, fingerprint: dict[str, Any], *, overwrite: bool,
                  redone: Callable[[str], bool] = lambda name: False) -> dict[str, Any] | None:
        """Read-only, for an engine that writes the whole folder at once: the record of this very
        job if it completed here, else None (the folder is empty, holds only what ``redone`` names,
        e.g. a failed attempt's leftovers, or ``overwrite``). Raises if it holds anything else."""
        try:
            names = self._entries()
            if not names or overwrite:
                return None
            manifest = self._read_json(MANIFEST)
            if manifest is None:
                foreign = sorted(n for n in names if not redone(n))
                if not foreign:
                    return None
                raise OutputError(f"output folder {self.uri} is not empty and holds no lakeinfer job ({foreign[0]}); "
                                  "choose an empty folder or pass --overwrite")
            self._same_job(manifest, fingerprint)
            return self._read_json(SUCCESS) if SUCCESS in names else None
        except OSError as exc:
            raise OutputError(f"cannot read output folder {self.uri}: {exc}") from exc

    def record(self, fingerprint: dict[str, Any], summary: dict[str, Any]) -> None:
        """Write the record of a job whose engine wrote the whole folder (its parts and their
        marker): the manifest, then the completed job's summary."""
        try:
            self._write_json(MANIFEST, {"fingerprint": fingerprint})
            self.finish({**summary, "fingerprint": fingerprint})
        except OSError as exc:
            raise OutputError(f"cannot write output folder {self.uri}: {exc}") from exc

    def count_parts(self) -> int:
        """The Parquet parts under the folder, partition folders included."""
        found = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return sum(1 for e in found if e.type == pafs.FileType.File and os.path.basename(e.path).startswith("part-"))

    def check(self, fingerprint: dict[str, Any], *, overwrite: bool) -> dict[int, dict[str, int]]:
        """Read-only: the stats of parts a previous run of this job completed.

        Raises if the folder holds anything else, unless ``overwrite``.
        """
        try:
            names = self._entries()
            if not names or overwrite:
                return {}
            manifest = self._read_json(MANIFEST)
            if manifest is None:
                raise OutputError(f"output folder {self.uri} is not empty and holds no lakeinfer job; "
                                  "choose an empty folder or pass --overwrite")
            self._same_job(manifest, fingerprint)
            return self._finished_parts(names)
        except OSError as exc:
            raise OutputError(f"cannot read output folder {self.uri}: {exc}") from exc

    def claim(self, fingerprint: dict[str, Any], *, overwrite: bool) -> None:
        """Make the folder this job's: clear it (``overwrite``), write the manifest, drop stale temp files."""
        try:
            names = self._entries()
            if names and overwrite:
                self.fs.delete_dir_contents(self.path)
                names = set()
            if not names:
                self.fs.create_dir(self.path, recursive=True)
                self._write_json(MANIFEST, {"fingerprint": fingerprint})
            for name in names:  # a killed run's half-written files
                if name.startswith(_TMP_PREFIX):
                    self.fs.delete_file(self._join(name))
        except OSError as exc:
            raise OutputError(f"cannot write output folder {self.uri}: {exc}") from exc

    def _finished_parts(self, names: Iterable[str]) -> dict[int, dict[str, int]]:
        done = {}
        for name in names:
            if name.startswith("part-") and name.endswith(".parquet"):
                with self.fs.open_input_file(self._join(name)) as fh:
                    meta = pq.ParquetFile(fh).metadata.metadata or {}
                done[int(name[5:10])] = json.loads(meta.get(_STATS_KEY, b"{}"))
        return done

    def finish(self, summary: dict[str, Any]) -> None:
        """Mark the job complete; written only after every part is in place."""
        self._write_json(SUCCESS, summary)

    def open_part(self, index: int, schema: pa.Schema) -> PartWriter:
        return PartWriter(self, index, schema)


class PartWriter:
    """Streams one unit's batches into a Parquet file that appears under its name only when closed.

    Small batches are gathered into row groups of about ``ROW_GROUP_ROWS`` rows, so the batch
    size suits the model while the file suits its readers. The Parquet writer starts with the
    first row group, whose rows choose the columns worth a dictionary: for distinct values
    (ids, scores) building one only costs time, as the writer drops it after a megabyte anyway.
    """

    def __init__(self, folder: OutputFolder, index: int, schema: pa.Schema) -> None:
        self.folder = folder
        self.final = folder._join(part_name(index))
        self.tmp = folder._join(f"{_TMP_PREFIX}{os.getpid()}-{part_name(index)}")
        self.schema = schema
        self._stream = folder.fs.open_output_stream(self.tmp)
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        if self._pending_rows >= ROW_GROUP_ROWS:
            self._flush()

    def _open(self, first: pa.Table | None) -> pq.ParquetWriter:
        if self._writer is None:
            dictionary = True if first is None else _repeating(first)
            self._writer = pq.ParquetWriter(self._stream, self.schema, compression="snappy", use_dictionary=dictionary)
        return self._writer

    def _flush(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, schema=self.schema)
            self._open(table).write_table(table, row_group_size=max(1, table.num_rows))
        self._pending, self._pending_rows = [], 0

    def commit(self, stats: dict[str, int]) -> None:
        self._flush()
        self._writer = self._open(None)
        self._writer.add_key_value_metadata({_STATS_KEY: json.dumps(stats).encode()})
        self._writer.close()
        self._stream.close()
        self.folder.fs.move(self.tmp, self.final)

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            self._stream.close()
            self.folder.fs.delete_file(self.tmp)
        except OSError:
            pass


def _repeating(table: pa.Table) -> list[str]:
    """The flat columns of ``table`` whose first rows repeat enough to pay for a dictionary."""
    sample = table.slice(0, DICTIONARY_SAMPLE)
    names = []
    for name, column in zip(table.column_names, sample.columns, strict=True):
        if pa.types.is_nested(column.type):
            continue  # vectors (probabilities): numbers that rarely repeat
        if pc.count_distinct(column, mode="all").as_py() * DICTIONARY_RATIO <= max(1, len(column)):
            names.append(name)
    return names
