"""bulk.paused_gc: the cyclic GC off inside, and the caller's GC state exactly as it was after."""

from __future__ import annotations

import gc

from specrunner.bulk import paused_gc


def _state() -> tuple[bool, tuple[int, ...], int]:
    return gc.isenabled(), gc.get_threshold(), gc.get_freeze_count()


def test_the_gc_is_off_inside_and_as_it_was_after() -> None:
    before = _state()
    assert before[0]
    with paused_gc():
        assert not gc.isenabled()
        made = [[i] for i in range(1000)]
        with paused_gc():  # nested: still off, and the inner one leaves it off
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert _state() == before and len(made) == 1000
    assert gc.is_tracked(made[0])


def test_a_disabled_gc_stays_disabled_and_a_callers_frozen_objects_stay_frozen() -> None:
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
    kept = [[1], [2]]
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        assert frozen > 0
        with paused_gc():
            more = [[3]]
        assert gc.get_freeze_count() == frozen and gc.isenabled() and more
    finally:
        gc.unfreeze()
    assert kept


def test_the_gc_is_restored_when_the_block_raises() -> None:
    before = _state()
    try:
        with paused_gc():
            raise KeyError("x")
    except KeyError:
        pass
    assert _state() == before
