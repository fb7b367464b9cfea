"""Deadlines for many cancel scopes on one timer.

`anyio.CancelScope(deadline=...)` arms an event-loop timer per scope: a handle pushed on the
loop's heap, then cancelled and left there when the scope ends early, as nearly every request
does. A run holds one such scope per task and one per request (up to 3 x concurrency at once,
thousands per second): their timers were 40% of what the scopes cost the runner, 67,000 of
its 3.9 million instructions per task (callgrind, bench/README.md ## run).

`with deadlines.bound(seconds) as scope:` (or `enter` ... `leave`) gives a plain CancelScope
and notes its deadline here. While
`watch()` runs (the executor starts it for the length of a run) one task sleeps until the
earliest noted deadline and cancels every scope past its own: a scope that ends in time costs
a dict entry, not a timer. Outside `watch()` (a client used on its own, or after the run) and
for scopes still open when it stops, the scope gets anyio's own deadline, so a timeout is
never lost.
"""

from __future__ import annotations

import math
from typing import Any

import anyio


class Deadlines:
    """Cancel scopes with deadlines, enforced by one watcher task while it runs."""

    def __init__(self) -> None:
        self._live: dict[anyio.CancelScope, float] = {}
        self._watching = False
        self._stopped = False
        self._next = math.inf  # when the watcher wakes next
        self._wake: anyio.Event | None = None
        self.wakeups = 0  # watcher passes (tests and benches read it)

    def enter(self, seconds: float) -> anyio.CancelScope:
        """A scope cancelled `seconds` from now (use it in a `with`, then call `leave`)."""
        deadline = anyio.current_time() + seconds
        if not self._watching:
            return anyio.CancelScope(deadline=deadline)
        scope = anyio.CancelScope()
        self._live[scope] = deadline
        if deadline < self._next and self._wake is not None:
            self._wake.set()
        return scope

    def leave(self, scope: anyio.CancelScope) -> None:
        """Forget `scope` (it has ended)."""
        self._live.pop(scope, None)

    def bound(self, seconds: float) -> _Bound:
        """`with deadlines.bound(s) as scope:` enter(s), the scope's block, then leave."""
        return _Bound(self, self.enter(seconds))

    async def watch(self) -> None:
        """Enforce every noted deadline until `stop()`; then hand the open scopes their own."""
        if self._stopped:  # stopped before it started
            self._stopped = False
            return
        self._watching = True
        try:
            while not self._stopped:
                self.wakeups += 1
                now = anyio.current_time()
                earliest = math.inf
                for scope, deadline in list(self._live.items()):
                    if deadline <= now:
                        del self._live[scope]
                        scope.cancel()
                    elif deadline < earliest:
                        earliest = deadline
                self._next = earliest
                self._wake = anyio.Event()
                with anyio.move_on_after(earliest - now):
                    await self._wake.wait()
        finally:
            self._watching = self._stopped = False
            self._next = math.inf
            self._wake = None
            for scope, deadline in self._live.items():
                scope.deadline = deadline  # anyio arms its own timer from here on
            self._live.clear()

    def stop(self) -> None:
        """Make `watch()` return (at once if it has not started yet)."""
        self._stopped = True
        if self._wake is not None:
            self._wake.set()


class _Bound:
    """enter() ... leave() around one `with` block (a class: a generator-based context
    manager would cost more than the timer it saves)."""

    __slots__ = ("_deadlines", "_scope")

    def __init__(self, deadlines: Deadlines, scope: anyio.CancelScope) -> None:
        self._deadlines, self._scope = deadlines, scope

    def __enter__(self) -> anyio.CancelScope:
        return self._scope.__enter__()

    def __exit__(self, *exc: Any) -> bool:
        try:
            return bool(self._scope.__exit__(*exc))
        finally:
            self._deadlines.leave(self._scope)
