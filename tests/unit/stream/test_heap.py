"""The stream's heap: what lives on entry is out of the collector's walks until exit, the young
collected less often."""

from __future__ import annotations

import gc
import weakref

import pytest

from lakeinfer.stream.heap import YOUNG, frozen_heap


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector frees it


def _tracked(obj: object) -> bool:
    """In one of the collector's generations (not frozen)."""
    return any(o is obj for o in gc.get_objects())


def test_objects_alive_on_entry_are_frozen_until_exit() -> None:
    assert gc.get_freeze_count() == 0
    threshold = gc.get_threshold()
    assert threshold[0] < YOUNG
    before = _Node()
    with frozen_heap():
        assert gc.get_threshold() == (YOUNG, *threshold[1:])  # the young collected less often
        assert gc.get_freeze_count() > 0
        assert not _tracked(before)
        made = _Node()
        assert _tracked(made)  # made inside: collected as usual
        gone = weakref.ref(made)
        del made
        gc.collect()
        assert gone() is None
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold
    assert _tracked(before)


def test_an_exception_unfreezes_too() -> None:
    with pytest.raises(RuntimeError), frozen_heap():
        assert gc.get_freeze_count() > 0
        raise RuntimeError("the stream failed")
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold()[0] < YOUNG


def test_a_freeze_made_before_stays() -> None:
    # the count is no measure here: frozen objects freed by other threads leave it
    mine = _Node()
    gc.freeze()
    try:
        with frozen_heap():
            assert not _tracked(mine)
        assert not _tracked(mine)  # the caller's freeze outlives the stream's
    finally:
        gc.unfreeze()
    assert _tracked(mine)
