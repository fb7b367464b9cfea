"""The run's concurrency limit: full while the server is healthy, cut when it says it is not.

The rule (README "run"):
- The limit starts at execution.concurrency and moves only on overload signals: a 429 or a
  rate-limit error, a 503 or 504, a request that timed out, a connection refused. Each cuts
  the limit to 70% (at least 1), at most once per cool-down (COOL_DOWN_S), so one burst of
  errors from one moment is one cut.
- Latency never moves it. An acknowledgement's latency says nothing about processing, and
  an edit's processing takes seconds by nature: a limit that read slow answers as overload
  throttled a healthy server (measured: 64 cut to 21 with no error at all).
- After a cut, each window of `limit` successful answers adds 1, back up to the maximum.
Every change is reported with its reason (`on_change(limit, reason)`; the progress line shows
it).
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

COOL_DOWN_S = 2.0  # one cut per this many seconds, however many signals come in it


class AdaptiveLimit:
    """AIMD on overload signals only, over an anyio CapacityLimiter (see the module doc)."""

    def __init__(self, maximum: int, clock: Callable[[], float], *, minimum: int = 1,
                 decrease: float = 0.7,
                 on_change: Callable[[int, str], None] | None = None) -> None:
        self.limiter = anyio.CapacityLimiter(maximum)
        self.on_change = on_change
        self.maximum, self.minimum, self.clock = maximum, minimum, clock
        self.decrease = decrease
        self.limit = maximum
        self._streak = 0
        self._last_cut = float("-inf")
        self.cuts = 0

    def _set(self, value: int, reason: str) -> None:
        self.limit = max(self.minimum, min(self.maximum, value))
        self.limiter.total_tokens = self.limit
        if self.on_change is not None:
            self.on_change(self.limit, reason)

    def on_overload(self, reason: str) -> None:
        """An overload signal (`reason` names it, e.g. "http503"): cut, once per cool-down."""
        self._streak = 0
        now = self.clock()
        if now - self._last_cut < COOL_DOWN_S:
            return
        self._last_cut = now
        self.cuts += 1
        self._set(int(self.limit * self.decrease), f"cut: {reason}")

    def on_success(self) -> None:
        """A successful answer; after a window of `limit` of them, one more slot."""
        self._streak += 1
        if self._streak >= self.limit and self.limit < self.maximum:
            self._streak = 0
            self._set(self.limit + 1, "recovering")
