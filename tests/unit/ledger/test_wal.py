"""The WAL's frames and locks, and the committer's exactly-once shipping to a real Delta table."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from lakeinfer.ledger.committer import Committer, read_status
from lakeinfer.ledger.table import LEDGER_STATE, LedgerTable
from lakeinfer.ledger.wal import WalWriter, encode_frame, is_final, read_segment, segments

pytest.importorskip("deltalake")


def _rows(start: int, n: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"request_id": [f"r{i}" for i in range(start, start + n)],
                                       "row": pa.array([0] * n, pa.int32()),
                                       "prediction": pa.array(range(start, start + n), pa.int64())})


def test_a_torn_frame_ends_the_read(tmp_path: Path) -> None:
    writer = WalWriter(str(tmp_path))
    writer.append_now(_rows(0, 2))
    writer.append_now(_rows(2, 3))
    (name,) = segments(str(tmp_path))
    path = str(tmp_path / name)
    whole = os.path.getsize(path)
    with open(path, "ab") as fh:  # a kill in the middle of the third frame
        fh.write(encode_frame(_rows(5, 4))[:-7])
    read = read_segment(path, 0)
    assert [b.num_rows for b in read.batches] == [2, 3] and read.end == whole
    assert read_segment(path, read.ends[0]).batches[0].column("request_id").to_pylist() == ["r2", "r3", "r4"]
    assert not is_final(path)  # its writer holds it
    writer.close()
    assert is_final(path)


def test_the_committer_ships_each_row_once_across_restarts(tmp_path: Path) -> None:
    wal, uri = str(tmp_path / "wal"), f"delta:{tmp_path / 'ledger'}"
    table = LedgerTable(uri)
    writer = WalWriter(wal)
    writer.append_now(_rows(0, 3))
    first = Committer(table, wal, interval=60)
    assert first.ship()
    writer.append_now(_rows(3, 2))
    with pytest.raises(Exception, match="another process ships"):
        Committer(table, wal, interval=60)
    first.close()  # ships the two new rows; then a "restart" reads its offsets back from the table
    writer.append_now(_rows(5, 1))
    writer.close()
    second = Committer(table, wal, interval=60)
    assert second.ship() and second.ship()
    second.close()
    ids = table.read().column("request_id").to_pylist()
    assert sorted(ids) == [f"r{i}" for i in range(6)]
    assert segments(wal) == []  # final and shipped: gone
    assert table.state()["rows"] == 6 and read_status(wal)["rows_committed"] == 6
    assert LEDGER_STATE == "lakeinfer.ledger.state"
