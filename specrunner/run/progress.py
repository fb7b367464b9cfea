"""Progress of a run: a live line on a terminal (fitted to its width, rewritten in place),
periodic plain lines otherwise, a line whenever the concurrency limit changes (with why),
and the closing summary.

Pure formatting over `Counters`; the caller decides when to tick and where to write.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TextIO

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


def _fields(c: Counters, max_usd: Decimal, elapsed: float) -> list[tuple[str, str, bool]]:
    """(long form, short form, may be left out) of each figure, most important first."""
    finished = c.done + c.failed + c.in_doubt
    rate = finished / elapsed if elapsed > 0 and finished else 0.0
    eta = _eta(c.remaining / rate if rate else None)
    spent = c.campaign_spent if c.campaign_spent else c.spent
    return [
        (f"{c.skipped + c.done}/{c.total} done", f"{c.skipped + c.done}/{c.total}", False),
        (f"{c.failed} failed", f"{c.failed}F", not c.failed),
        (f"{c.in_doubt} in doubt", f"{c.in_doubt}?", not c.in_doubt),
        (f"{c.retrying} retrying", f"{c.retrying}R", not c.retrying),
        (f"{c.in_flight} in flight (limit {c.limit})", f"{c.in_flight}/{c.limit} busy", False),
        (f"{money(spent)} of {money(max_usd)}", f"{money(spent)}/{money(max_usd)}", False),
        (f"ETA {eta}", eta, False),
    ]


def status_line(c: Counters, max_usd: Decimal, elapsed: float, width: int | None = None) -> str:
    """One line: done/total, failed, in doubt, retrying, in flight and the limit, the
    campaign's spend against the budget, ETA. With `width`, it fits: figures that are zero
    go first, then short forms replace long ones from the least important up, then it is
    cut."""
    fields = _fields(c, max_usd, elapsed)
    line = ", ".join(long for long, _, _ in fields)
    if width is None or len(line) <= width:
        return line
    kept = [f for f in fields if not f[2]]
    parts = [long for long, _, _ in kept]
    for i in range(len(kept) - 1, -1, -1):
        line = ", ".join(parts)
        if len(line) <= width:
            return line
        parts[i] = kept[i][1]
    line = " ".join(parts)
    return line if len(line) <= width else line[:max(0, width - 1)] + "…"


def _columns(stream: TextIO) -> int:
    """The terminal's width (read at every tick: a window may be resized)."""
    try:
        import os

        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return shutil.get_terminal_size((80, 24)).columns


@dataclass
class Progress:
    """Writes status lines to `stream`: rewritten in place on a TTY (never wider than it, so
    it never wraps), every `every_s` otherwise; a line of its own when the limit changes."""

    stream: TextIO
    max_usd: Decimal
    clock: Callable[[], float]
    tty: bool = False
    every_s: float = 10.0
    width: Callable[[TextIO], int] = _columns
    _start: float = field(default=0.0, init=False)
    _last: float = field(default=float("-inf"), init=False)
    _shown: int = field(default=0, init=False)  # length of the live line on screen
    _limit: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._start = self.clock()

    def tick(self, c: Counters, force: bool = False) -> None:
        """Show the current figures (throttled to `every_s` when not a terminal)."""
        if self._limit is not None and c.limit != self._limit:
            self.message(f"concurrency limit {self._limit} -> {c.limit} ({c.limit_reason})")
        self._limit = c.limit
        now = self.clock()
        if self.tty:
            line = status_line(c, self.max_usd, now - self._start, self.width(self.stream) - 1)
            pad = max(0, self._shown - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._shown = len(line)
            self.stream.flush()
        elif force or now - self._last >= self.every_s:
            self._last = now
            self.stream.write(status_line(c, self.max_usd, now - self._start) + "\n")
            self.stream.flush()

    def message(self, text: str) -> None:
        """A one-off line that must not be overwritten by the live line."""
        if self.tty and self._shown:
            self.stream.write("\r" + " " * self._shown + "\r")
            self._shown = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the live line."""
        if self.tty and self._shown:
            self.stream.write("\n")
            self._shown = 0
            self.stream.flush()


def summary_table(c: Counters, max_usd: Decimal, status: str) -> str:
    """The closing table of a run."""
    rows = [
        ("tasks", c.total),
        ("done before this run", c.skipped),
        ("done in this run", c.done),
        ("failed", c.failed),
        ("in doubt (the next run asks about them)", c.in_doubt),
        ("not started", c.remaining),
        ("requests sent (imageInference)", c.sends),
        ("retries", c.retries),
        ("polls (getResponse requests)", c.polls),
        ("spent by this run (USD)", usd(c.spent)),
        ("campaign spent (USD)", f"{usd(c.campaign_spent)} of {usd(max_usd)}"),
    ]
    if c.price_source == "reported" and c.price != c.table_price:
        rows.append(("price per image (USD)", f"{usd(c.price)} as billed (table "
                                              f"{usd(c.table_price)})"))
    elif c.price_source == "unreported":
        rows.append(("price per image (USD)", f"{usd(c.table_price)} (table price: the "
                                              "provider reported no cost)"))
    rows.append(("status", status))
    return tabulate(rows, tablefmt="simple", disable_numparse=True)
