"""The output folder: claimed by one job, parts under temporary names until committed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeinfer.errors import OutputError
from lakeinfer.io.sinks import MANIFEST, SUCCESS, OutputFolder, part_name

SCHEMA = pa.schema([("id", pa.int64()), ("prediction", pa.float64())])
JOB = {"input": "/data/in", "pipeline": {"model_digest": "0123456789abcdef"}}


def _batch(start: int, rows: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"id": list(range(start, start + rows)),
                                       "prediction": [0.5] * rows}, schema=SCHEMA)


def test_part_name() -> None:
    assert part_name(7) == "part-00007.parquet"


def test_a_new_folder_is_claimed_and_holds_the_manifest(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path / "out"))
    assert folder.check(JOB, overwrite=False) == {}
    folder.claim(JOB, overwrite=False)
    assert os.listdir(tmp_path / "out") == [MANIFEST]
    assert json.loads((tmp_path / "out" / MANIFEST).read_text()) == {"fingerprint": JOB}


def test_a_part_appears_under_its_name_only_on_commit(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path))
    folder.claim(JOB, overwrite=False)
    writer = folder.open_part(3, SCHEMA)
    writer.write(_batch(0, 4))
    writer.write(_batch(4, 2))
    temp = [n for n in os.listdir(tmp_path) if n != MANIFEST]
    assert temp == [f".tmp-{os.getpid()}-part-00003.parquet"]
    writer.commit({"rows_out": 6, "rows_skipped": 1})
    assert sorted(os.listdir(tmp_path)) == [MANIFEST, "part-00003.parquet"]
    assert pq.read_table(tmp_path / "part-00003.parquet").column("id").to_pylist() == [0, 1, 2, 3, 4, 5]
    # a rerun of the same job finds the part done, with its stats
    assert folder.check(JOB, overwrite=False) == {3: {"rows_out": 6, "rows_skipped": 1}}


def test_abort_removes_the_temporary_part(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path))
    folder.claim(JOB, overwrite=False)
    writer = folder.open_part(0, SCHEMA)
    writer.write(_batch(0, 3))
    writer.abort()
    assert os.listdir(tmp_path) == [MANIFEST]
    assert folder.check(JOB, overwrite=False) == {}


def test_finish_writes_the_success_marker(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path))
    folder.claim(JOB, overwrite=False)
    folder.finish({"rows": 6})
    assert json.loads((tmp_path / SUCCESS).read_text()) == {"rows": 6}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_another_jobs_folder_is_refused(tmp_path: Path) -> None:
    OutputFolder(str(tmp_path)).claim(JOB, overwrite=False)
    other = {**JOB, "input": "/data/other"}
    with pytest.raises(OutputError) as caught:
        OutputFolder(str(tmp_path)).check(other, overwrite=False)
    assert str(caught.value) == (f"output folder {tmp_path} holds another job's results (model 0123456789ab, "
                                 "input /data/in); choose another folder or pass --overwrite")


def test_a_folder_of_other_files_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputError) as caught:
        OutputFolder(str(tmp_path)).check(JOB, overwrite=False)
    assert str(caught.value) == (f"output folder {tmp_path} is not empty and holds no lakeinfer job; "
                                 "choose an empty folder or pass --overwrite")


def test_overwrite_clears_the_folder_and_claims_it(tmp_path: Path) -> None:
    first = OutputFolder(str(tmp_path))
    first.claim(JOB, overwrite=False)
    writer = first.open_part(0, SCHEMA)
    writer.write(_batch(0, 2))
    writer.commit({"rows_out": 2})
    (tmp_path / "notes.txt").write_text("mine")
    other = {**JOB, "input": "/data/other"}
    folder = OutputFolder(str(tmp_path))
    assert folder.check(other, overwrite=True) == {}
    folder.claim(other, overwrite=True)
    assert os.listdir(tmp_path) == [MANIFEST]
    assert json.loads((tmp_path / MANIFEST).read_text()) == {"fingerprint": other}


def test_a_killed_runs_temporary_files_are_dropped_on_claim(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path))
    folder.claim(JOB, overwrite=False)
    (tmp_path / ".tmp-999-part-00001.parquet").write_bytes(b"half")
    folder.claim(JOB, overwrite=False)
    assert os.listdir(tmp_path) == [MANIFEST]


def test_output_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(OutputError) as caught:
        OutputFolder(str(tmp_path / "out")).check(JOB, overwrite=False)
    assert str(caught.value) == f"output {tmp_path}/out is a file; give a folder"


def _encodings(path: Path) -> dict[str, set[str]]:
    meta = pq.ParquetFile(path).metadata
    group = meta.row_group(0)
    return {group.column(i).path_in_schema: set(group.column(i).encodings) for i in range(meta.num_columns)}


def test_only_columns_whose_values_repeat_get_a_dictionary(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("city", pa.string()),
                        ("score", pa.float64()), ("probability", pa.list_(pa.float64()))])
    rows = 10_000
    batch = pa.RecordBatch.from_pydict({
        "id": list(range(rows)), "label": [i % 2 for i in range(rows)], "city": ["Oslo", "Lima"] * (rows // 2),
        "score": [i / rows for i in range(rows)], "probability": [[i / rows, 1 - i / rows] for i in range(rows)],
    }, schema=schema)
    folder = OutputFolder(str(tmp_path))
    folder.claim(JOB, overwrite=False)
    writer = folder.open_part(0, schema)
    writer.write(batch)
    writer.commit({"rows_out": rows})
    encodings = _encodings(tmp_path / part_name(0))
    dictionary = {name for name, found in encodings.items() if "RLE_DICTIONARY" in found}
    assert dictionary == {"label", "city"}
    assert pq.read_table(tmp_path / part_name(0)).to_batches()[0].equals(batch)


def test_an_empty_part_is_a_parquet_file_with_the_schema(tmp_path: Path) -> None:
    folder = OutputFolder(str(tmp_path))
    folder.claim(JOB, overwrite=False)
    writer = folder.open_part(1, SCHEMA)
    writer.commit({"rows_out": 0})
    table = pq.read_table(tmp_path / part_name(1))
    assert table.num_rows == 0 and table.schema.equals(SCHEMA)
