"""Input discovery: which files of a folder are the data set, and in which format."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakeinfer.errors import InputError
from lakeinfer.io.sources import list_input, plan_units, read_unit


def _folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".parquet"):
            pq.write_table(pa.table({"x": [1, 2]}), path)
        else:
            path.write_text("x\n1\n2\n")
    return folder


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "a.parquet", "b.parquet", "extra.csv")
    with pytest.raises(InputError) as caught:
        list_input(str(folder), "parquet")
    assert str(caught.value) == (f"input {folder} holds {folder}/extra.csv, a csv file, among its parquet files; "
                                 "remove it or give a glob that leaves it out")


def test_hidden_and_underscore_files_stay_ignored(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "a.parquet", ".b.csv", "_c.csv", "_meta/d.csv", ".cache/e.jsonl")
    _, files, fmt = list_input(str(folder), "parquet")
    assert fmt == "parquet"
    assert [f.path for f in files] == [f"{folder}/a.parquet"]
    _, files, fmt = list_input(str(folder))
    assert (fmt, [f.path for f in files]) == ("parquet", [f"{folder}/a.parquet"])


def test_mixed_formats_without_input_format_name_both(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "a.parquet", "b.csv", "c.csv")
    with pytest.raises(InputError) as caught:
        list_input(str(folder))
    assert str(caught.value) == (f"input {folder} mixes formats: csv ({folder}/b.csv), "
                                 f"parquet ({folder}/a.parquet); give a folder or glob of one format")


def test_a_glob_that_leaves_the_other_format_out(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "a.parquet", "b.parquet", "extra.csv")
    _, files, fmt = list_input(f"{folder}/*.parquet", "parquet")
    assert fmt == "parquet"
    assert [f.path for f in files] == [f"{folder}/a.parquet", f"{folder}/b.parquet"]


def test_one_format_folder_lists_every_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path, "a.csv", "b.csv")
    _, files, fmt = list_input(str(folder), "csv")
    assert fmt == "csv"
    assert [f.path for f in files] == [f"{folder}/a.csv", f"{folder}/b.csv"]


def test_read_unit_projects_unless_a_requested_column_is_missing(tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "x": [0.5, 1.5], "y": [2.5, 3.5]}), tmp_path / "t.parquet")
    fs, files, fmt = list_input(str(tmp_path / "t.parquet"))
    (unit,) = plan_units(fs, files, fmt)
    projected = next(read_unit(fs, unit, fmt, batch_size=10, columns=["y", "id"]))
    assert projected.schema.names == ["y", "id"]
    # the caller reports the missing column with what the file really holds
    whole = next(read_unit(fs, unit, fmt, batch_size=10, columns=["id", "z"]))
    assert whole.schema.names == ["id", "x", "y"]
