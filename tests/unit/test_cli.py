"""The command line's option parsing."""

from __future__ import annotations

from lakeinfer.cli import build_parser


def test_repeated_keep_accumulates_in_batch() -> None:
    args = build_parser().parse_args(["batch", "--keep", "id", "--keep", "tag,region"])
    assert args.keep == ["id", "tag", "region"]


def test_repeated_keep_accumulates_in_stream() -> None:
    args = build_parser().parse_args(["stream", "--keep", "id,tag", "--keep", "region"])
    assert args.keep == ["id", "tag", "region"]


def test_keep_absent_stays_unset() -> None:
    assert build_parser().parse_args(["batch"]).keep is None
