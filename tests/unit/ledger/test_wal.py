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


def test_requests_answered_in_one_turn_of_the_loop_share_a_frame(tmp_path: Path) -> None:
    import asyncio

    writer = WalWriter(str(tmp_path))

    async def requests() -> None:
        await asyncio.gather(*(writer.append(_rows(i, 1)) for i in range(5)))  # a batch the batcher answered
        await writer.append(_rows(5, 2))  # then one alone

    asyncio.run(requests())
    (name,) = segments(str(tmp_path))
    read = read_segment(str(tmp_path / name), 0)
    assert [b.num_rows for b in read.batches] == [5, 2]
    assert [r for b in read.batches for r in b.column("request_id").to_pylist()] == [f"r{i}" for i in range(7)]
    writer.close()


def test_a_group_that_cannot_be_one_frame_is_written_frame_by_frame(tmp_path: Path) -> None:
    import asyncio

    writer = WalWriter(str(tmp_path))
    odd = pa.RecordBatch.from_pydict({"request_id": ["x"], "row": pa.array([0], pa.int32()),
                                      "prediction": pa.array(["not a number"])})

    async def requests() -> list[BaseException | None]:
        return await asyncio.gather(writer.append(_rows(0, 1)), writer.append(odd), writer.append(_rows(1, 1)),
                                    return_exceptions=True)

    outcomes = asyncio.run(requests())
    assert outcomes == [None, None, None]
    (name,) = segments(str(tmp_path))
    frames = read_segment(str(tmp_path / name), 0).batches
    assert [b.column("request_id").to_pylist() for b in frames] == [["r0"], ["x"], ["r1"]]
    writer.close()


def test_the_committer_ships_runs_of_frames_alike_in_their_order(tmp_path: Path) -> None:
    wal, uri = str(tmp_path / "wal"), f"delta:{tmp_path / 'ledger'}"
    writer = WalWriter(wal)
    for start in range(0, 40, 4):
        writer.append_now(_rows(start, 4))
    writer.close()
    committer = Committer(LedgerTable(uri), wal, interval=60)
    assert committer.ship()
    committer.close()
    assert LedgerTable(uri).read().column("request_id").to_pylist() == [f"r{i}" for i in range(40)]
