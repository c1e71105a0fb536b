"""Input discovery and streaming reads of Parquet, CSV and JSON Lines, local or remote.

A data set is planned into *units*: a whole file, or a run of a Parquet file's row groups.
Units are the grain of parallelism and of resume, and their plan depends only on the
input's metadata, so a rerun of the same job finds the same units.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.fs as pafs
import pyarrow.json as pjson
import pyarrow.parquet as pq

from ..errors import InputError

__all__ = ["FORMATS", "InputFile", "Unit", "filesystem_for", "list_input", "plan_units", "read_unit"]

FORMATS = ("parquet", "csv", "jsonl")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
             ".json": "jsonl", ".ndjson": "jsonl"}
UNIT_ROWS = 1 << 19
MIN_UNIT_ROWS = 1 << 16


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    mtime_ns: int | None


@dataclass(frozen=True)
class Unit:
    """One piece of work: ``row_groups`` of a Parquet file (None: the whole file)."""

    index: int
    path: str
    row_groups: tuple[int, ...] | None
    first_row: int
    num_rows: int | None
    task: Any = field(default=None, compare=False, repr=False)  # an Iceberg file scan task


def filesystem_for(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system and the path inside it; fsspec serves schemes pyarrow lacks."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        from ..errors import require

        fsspec = require("fsspec", "fsspec", f"reading {uri}")
        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _format_of(path: str) -> str | None:
    return _SUFFIXES.get(os.path.splitext(path)[1].lower())


def _hidden(path: str, root: str) -> bool:
    rel = os.path.relpath(path, root) if root else path
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def list_input(uri: str, input_format: str | None = None) -> tuple[pafs.FileSystem, list[InputFile], str]:
    """The files of ``uri`` (a file, a directory or a glob), sorted, and their format."""
    if input_format is not None and input_format not in FORMATS:
        raise InputError(f"unknown input format '{input_format}'; choose one of {', '.join(FORMATS)}")
    fs, path = filesystem_for(uri)
    has_glob = any(c in path for c in "*?[")
    listing = has_glob
    if has_glob:
        if isinstance(fs, pafs.LocalFileSystem):
            candidates = sorted(glob.glob(path, recursive=True))
        else:
            base = path[: min(path.find(c) for c in "*?[" if c in path)].rsplit("/", 1)[0]
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            candidates = sorted(i.path for i in infos if fnmatch.fnmatch(i.path, path))
        infos = [i for i in fs.get_file_info(candidates) if i.type == pafs.FileType.File]
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise InputError(f"input {uri} does not exist")
        if info.type == pafs.FileType.Directory:
            listing = True
            found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
            infos = sorted((i for i in found if i.type == pafs.FileType.File and not _hidden(i.path, path)),
                           key=lambda i: i.path)
        else:
            infos = [info]
    if input_format is None:
        first: dict[str, str] = {}  # format -> its first file, to show what is mixed
        for i in infos:
            first.setdefault(_format_of(i.path) or "", i.path)
        first.pop("", None)
        if len(first) > 1:
            shown = ", ".join(f"{fmt} ({path})" for fmt, path in sorted(first.items()))
            raise InputError(f"input {uri} mixes formats: {shown}; give a folder or glob of one format")
        input_format = next(iter(first), None)
        if input_format is None and infos:
            raise InputError(f"cannot tell the format of {infos[0].path}; pass --input-format parquet|csv|jsonl")
    if listing:
        # Data files of another format would be dropped without a word, so half the data set
        # would go unscored; files of no data format (README) are left to the readers as before.
        other = next((i.path for i in infos if _format_of(i.path) not in (input_format, None)), None)
        if other is not None:
            raise InputError(f"input {uri} holds {other}, a {_format_of(other)} file, among its "
                             f"{input_format} files; remove it or give a glob that leaves it out")
    if not infos:
        raise InputError(f"no input files match {uri}")
    files = [InputFile(i.path, int(i.size or 0), i.mtime_ns) for i in infos]
    return fs, files, input_format  # type: ignore[return-value]


def plan_units(fs: pafs.FileSystem, files: Sequence[InputFile], input_format: str,
               *, unit_rows: int | None = None) -> list[Unit]:
    """Split the input into units of about ``unit_rows`` rows (whole row groups, whole text files).

    By default a unit is a sixteenth of the input, between 64Ki and 512Ki rows: enough units to
    keep every worker busy to the end, few enough that each part file is worth opening.
    """
    if input_format != "parquet":
        return [Unit(i, file.path, None, 0, None) for i, file in enumerate(files)]
    metas = [(file, _parquet_metadata(fs, file.path)) for file in files]
    if unit_rows is None:
        total = sum(m.num_rows for _, m in metas)
        unit_rows = min(UNIT_ROWS, max(MIN_UNIT_ROWS, total // 16))
    units: list[Unit] = []
    for file, metadata in metas:
        group: list[int] = []
        rows = first = 0
        for rg in range(metadata.num_row_groups):
            group.append(rg)
            rows += metadata.row_group(rg).num_rows
            if rows >= unit_rows:
                units.append(Unit(len(units), file.path, tuple(group), first, rows))
                first, group, rows = first + rows, [], 0
        if group or metadata.num_row_groups == 0:
            units.append(Unit(len(units), file.path, tuple(group), first, rows))
    return units


def _parquet_metadata(fs: pafs.FileSystem, path: str) -> pq.FileMetaData:
    try:
        with fs.open_input_file(path) as fh:
            return pq.ParquetFile(fh).metadata
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read input file {path} as Parquet: {exc}") from exc


def read_schema(fs: pafs.FileSystem, path: str) -> pa.Schema:
    """The Arrow schema of a Parquet file."""
    return _parquet_metadata(fs, path).schema.to_arrow_schema()


def read_unit(fs: pafs.FileSystem, unit: Unit, input_format: str, *, batch_size: int,
              columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream the unit's rows as record batches of at most ``batch_size`` rows."""
    try:
        with fs.open_input_file(unit.path) as fh:
            if input_format == "parquet":
                reader = pq.ParquetFile(fh)
                names = reader.schema_arrow.names
                # A requested column the file lacks is an error the caller reports with the
                # columns it finds: read them all then, or it would list only the projection.
                wanted = list(columns) if columns is not None and set(columns) <= set(names) else None
                yield from reader.iter_batches(batch_size=batch_size, row_groups=list(unit.row_groups or []),
                                               columns=wanted, use_threads=False)
            elif input_format == "csv":
                stream = pcsv.open_csv(fh, read_options=pcsv.ReadOptions(block_size=1 << 22))
                yield from _rechunk(stream, batch_size)
            else:
                stream = pjson.open_json(fh, read_options=pjson.ReadOptions(block_size=1 << 22))
                yield from _rechunk(stream, batch_size)
    except (OSError, pa.ArrowException) as exc:
        raise InputError(f"cannot read input file {unit.path} as {input_format}: {exc}") from exc


def _rechunk(stream: Iterator[pa.RecordBatch], batch_size: int) -> Iterator[pa.RecordBatch]:
    for batch in stream:
        for start in range(0, batch.num_rows, batch_size):
            yield batch.slice(start, batch_size)
