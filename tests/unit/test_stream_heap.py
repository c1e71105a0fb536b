"""The stream's frozen heap: what lives on entry is out of the collector's walks until exit."""

from __future__ import annotations

import gc

import pytest

from lakeinfer.stream.heap import frozen_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_objects_alive_on_entry_are_frozen_until_exit() -> None:
    assert gc.get_freeze_count() == 0
    before = _Node()
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert not any(o is before for o in gc.get_objects())  # the collector's generations only
        made = _Node()
        assert gc.get_freeze_count() == frozen  # made inside: collected as usual
        del made
        assert gc.collect() > 0
    assert gc.get_freeze_count() == 0
    assert any(o is before for o in gc.get_objects())


def test_an_exception_unfreezes_too() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        assert gc.get_freeze_count() > 0
        raise RuntimeError("the stream failed")
    assert gc.get_freeze_count() == 0


def test_a_freeze_made_before_stays() -> None:
    gc.freeze()
    try:
        outer = gc.get_freeze_count()
        with frozen_heap():
            assert gc.get_freeze_count() >= outer
        assert gc.get_freeze_count() >= outer > 0
    finally:
        gc.unfreeze()
