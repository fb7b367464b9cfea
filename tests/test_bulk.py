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


def test_the_library_leaves_the_gc_alone_only_the_cli_pauses_it(tmp_path, monkeypatch) -> None:
    """Plan, run, snapshot and report through the library never touch the GC; `specrunner
    plan` (a short command) runs with it paused."""
    from pathlib import Path

    import specrunner
    from specrunner import cli
    from specrunner.record import read_snapshot

    example = Path(__file__).resolve().parent.parent / "specs/examples/storefront-local.yaml"
    calls: list[str] = []
    monkeypatch.setattr(gc, "disable", lambda: calls.append("disable"))
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    plan = specrunner.build_plan(specrunner.load_spec(example))
    result = specrunner.run_plan(plan, out_dir=tmp_path / "out", local=True)
    assert result.exit_code == 0
    read_snapshot(tmp_path / "out")
    specrunner.read_report(tmp_path / "out")
    assert calls == []
    assert cli.run(["plan", str(example)], out=open(tmp_path / "plan.txt", "w")) == 0
    assert calls and calls[0] == "disable"
