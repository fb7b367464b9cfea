"""Progress of a run: a live line on a terminal, periodic plain lines otherwise, a summary.

Pure formatting over `Counters`; the caller decides when to tick and where to write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Callable, TextIO

from tabulate import tabulate

from specrunner.money import money, usd
from specrunner.run.context import Counters


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def status_line(c: Counters, max_usd: Decimal, elapsed: float) -> str:
    """One line: done/total, failed, retrying, in flight, spend vs budget, ETA."""
    finished = c.done + c.failed + c.in_doubt
    rate = finished / elapsed if elapsed > 0 and finished else 0.0
    eta = c.remaining / rate if rate else None
    return (f"{c.skipped + c.done}/{c.total} done, {c.failed} failed, {c.in_doubt} in doubt, "
            f"{c.retrying} retrying, {c.in_flight} in flight (limit {c.limit}), "
            f"{money(c.spent)} of {money(max_usd)}, ETA {_eta(eta)}")


@dataclass
class Progress:
    """Writes status lines to `stream`: rewritten in place on a TTY, every `every_s` otherwise."""

    stream: TextIO
    max_usd: Decimal
    clock: Callable[[], float]
    tty: bool = False
    every_s: float = 10.0
    _start: float = field(default=0.0, init=False)
    _last: float = field(default=float("-inf"), init=False)
    _width: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self._start = self.clock()

    def tick(self, c: Counters, force: bool = False) -> None:
        """Show the current figures (throttled to `every_s` when not a terminal)."""
        now = self.clock()
        line = status_line(c, self.max_usd, now - self._start)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
            self.stream.flush()
        elif force or now - self._last >= self.every_s:
            self._last = now
            self.stream.write(line + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A one-off line that must not be overwritten by the live line."""
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line."""
        if self.tty and self._width:
            self.stream.write("\n")
            self._width = 0
            self.stream.flush()


def summary_table(c: Counters, max_usd: Decimal, status: str) -> str:
    """The closing table of a run."""
    rows = [
        ("tasks", c.total),
        ("done before this run", c.skipped),
        ("done in this run", c.done),
        ("failed", c.failed),
        ("in doubt (resume reconciles)", c.in_doubt),
        ("not started", c.remaining),
        ("requests sent (imageInference)", c.sends),
        ("retries", c.retries),
        ("polls", c.polls),
        ("spent (USD)", f"{usd(c.spent)} of {usd(max_usd)}"),
        ("status", status),
    ]
    return tabulate(rows, tablefmt="simple", disable_numparse=True)
