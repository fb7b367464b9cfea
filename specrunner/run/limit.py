"""The adaptive concurrency limit of a run: AIMD over an anyio CapacityLimiter."""

from __future__ import annotations

from typing import Callable

import anyio


class AdaptiveLimit:
    """AIMD over an anyio CapacityLimiter: halve-ish on overload, +1 after a window of successes.

    Overload is a 429/503/504 or a latency EWMA above `growth` x the best seen.
    """

    def __init__(self, maximum: int, clock: Callable[[], float], *, minimum: int = 1,
                 decrease: float = 0.7, growth: float = 3.0, floor_s: float = 0.05,
                 on_change: Callable[[int, str], None] | None = None) -> None:
        self.limiter = anyio.CapacityLimiter(maximum)
        self.on_change = on_change  # told every new limit (the progress line shows it)
        self.maximum, self.minimum, self.clock = maximum, minimum, clock
        self.decrease, self.growth, self.floor_s = decrease, growth, floor_s
        self.limit = maximum
        self._streak = 0
        self._ewma: float | None = None
        self._best: float | None = None
        self._last_cut = float("-inf")
        self.cuts = 0

    def _set(self, value: int, reason: str) -> None:
        self.limit = max(self.minimum, min(self.maximum, value))
        self.limiter.total_tokens = self.limit
        if self.on_change is not None:
            self.on_change(self.limit, reason)

    def on_overload(self, reason: str = "overload") -> None:
        """Multiplicative decrease, at most once per cool-down window; `reason` is shown."""
        self._streak = 0
        now = self.clock()
        if now - self._last_cut < max(1.0, 2 * (self._ewma or 0)):
            return
        self._last_cut = now
        self.cuts += 1
        self._set(int(self.limit * self.decrease), reason)

    def on_success(self, latency: float) -> None:
        """Feed a successful request's latency; additive increase after `limit` successes."""
        self._ewma = latency if self._ewma is None else 0.8 * self._ewma + 0.2 * latency
        self._best = self._ewma if self._best is None else min(self._best, self._ewma)
        if self._ewma > self.growth * self._best and self._ewma - self._best > self.floor_s:
            self.on_overload("latency")
            return
        self._streak += 1
        if self._streak >= self.limit and self.limit < self.maximum:
            self._streak = 0
            self._set(self.limit + 1, "recovering")
