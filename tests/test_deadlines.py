"""Deadlines: many cancel scopes' deadlines enforced by one watcher, never lost."""

from __future__ import annotations

import asyncio
import math

import anyio

from specrunner.deadlines import Deadlines


def test_a_scope_past_its_deadline_is_cancelled_by_the_watcher() -> None:
    async def main() -> tuple[bool, bool, float, float]:
        d = Deadlines()
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.watch)
            await anyio.sleep(0)
            late, early = d.enter(0.05), d.enter(30)
            assert math.isinf(late.deadline)  # no timer of its own: the watcher's job
            t0 = anyio.current_time()
            with early:
                with late:
                    await anyio.sleep(10)
            took = anyio.current_time() - t0
            d.leave(late)
            d.leave(early)
            d.stop()
        return late.cancelled_caught, early.cancelled_caught, took, d.wakeups

    late, early, took, wakeups = anyio.run(main)
    assert late and not early
    assert 0.05 <= took < 2.0
    assert wakeups <= 4  # start, the first scope, its deadline (and at most one more)


def _timers_armed(d: Deadlines, watching: bool) -> int:
    """Loop timers armed (loop.call_at) while 300 scopes that all end in time run."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        armed = 0
        call_at = loop.call_at

        def counting_call_at(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal armed
            armed += 1
            return call_at(*args, **kwargs)

        async with anyio.create_task_group() as tg:
            if watching:
                tg.start_soon(d.watch)
            await anyio.sleep(0)
            loop.call_at = counting_call_at  # type: ignore[method-assign]
            for _ in range(300):
                scope = d.enter(60)
                try:
                    with scope:
                        await anyio.sleep(0)
                finally:
                    d.leave(scope)
            loop.call_at = call_at  # type: ignore[method-assign]
            d.stop()
        return armed

    return anyio.run(main)


def test_scopes_that_end_in_time_arm_no_loop_timer_while_watched() -> None:
    assert _timers_armed(Deadlines(), watching=False) >= 300  # anyio's own: one each
    assert _timers_armed(Deadlines(), watching=True) <= 1


def test_a_scope_still_open_when_the_watcher_stops_keeps_its_deadline() -> None:
    async def main() -> tuple[bool, float]:
        d = Deadlines()
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.watch)
            await anyio.sleep(0)
            scope = d.enter(0.2)
            t0 = anyio.current_time()
            with scope:
                d.stop()  # the run ends while this request is still going
                await anyio.sleep(10)
            d.leave(scope)
        return scope.cancelled_caught, anyio.current_time() - t0

    caught, took = anyio.run(main)
    assert caught and 0.2 <= took < 2.0


def test_stopped_before_it_started_the_watcher_returns_and_can_run_again() -> None:
    async def main() -> tuple[bool, bool]:
        d = Deadlines()
        d.stop()
        with anyio.fail_after(2):
            await d.watch()  # returns at once
        async with anyio.create_task_group() as tg:
            tg.start_soon(d.watch)
            await anyio.sleep(0)
            scope = d.enter(0.05)
            with scope:
                await anyio.sleep(10)
            d.leave(scope)
            d.stop()
        outside = d.enter(0.05)  # no watcher: anyio's own deadline
        with outside:
            await anyio.sleep(10)
        return scope.cancelled_caught, outside.cancelled_caught

    assert anyio.run(main) == (True, True)
