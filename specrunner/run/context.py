"""What every task of a run shares: the client, the record's log, the limits, the counters,
and the injected clock, sleep and randomness (so tests drive time and jitter).

`set_testing(True)` switches every backoff and polling wait off (stamina's idea); the test
suite turns it on for all tests (tests/conftest.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from specrunner.runware import RunnerCode

if TYPE_CHECKING:
    from specrunner.record import RunLog
    from specrunner.run.budget import Budget
    from specrunner.run.client import RunwareClient
    from specrunner.run.inputs import Inputs
    from specrunner.run.limit import AdaptiveLimit
    from specrunner.run.poll import Poller
    from specrunner.spec.types import Execution

Sleep = Callable[[float], Awaitable[None]]
# How a run ended -> the status it records and shows (the CLI maps them to exit codes).
STATUSES = ("complete", "failed", "incomplete", "budget", "interrupted", "stopped")
RETRY_AFTER_CAP_S = 120.0  # a Retry-After above this is read as this (openai-python's cap)

_testing = False


def set_testing(on: bool) -> None:
    """Turn every backoff and polling wait off (tests) or back on."""
    global _testing
    _testing = on


def testing() -> bool:
    """Whether waits are switched off (`set_testing`)."""
    return _testing


async def default_sleep(seconds: float) -> None:
    """anyio.sleep, skipped entirely in testing mode."""
    await anyio.sleep(0 if _testing else seconds)


@dataclass(frozen=True)
class Backoff:
    """Full-jitter exponential backoff: sleep = random(0, min(cap, base * 2**n))."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, retry: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `retry` (0-based); honours a capped Retry-After."""
        d = rng.uniform(0, min(self.cap, self.base * (2 ** retry)))
        if retry_after is not None:
            d = max(d, min(retry_after, RETRY_AFTER_CAP_S))
        return d


class RetryBudget:
    """A run-wide retry budget (Google SRE): retries may add at most `ratio` of first sends.

    Every first send earns `ratio` of a retry; every retry spends one. `floor` retries are
    available from the start so a small run can still retry. Counted from integers (a float
    running sum would lose a retry to rounding: 50 x 0.2 < 10.0).
    """

    def __init__(self, ratio: float, floor: float = 10.0) -> None:
        self.ratio = ratio
        self.floor = floor
        self.sends = 0
        self.spent = 0

    @property
    def tokens(self) -> float:
        """Retries still allowed (may be fractional)."""
        return self.floor + self.ratio * self.sends - self.spent

    def on_send(self) -> None:
        """Count a first send (it earns `ratio` of a retry)."""
        self.sends += 1

    def try_spend(self) -> bool:
        """Take one retry; False when the budget is exhausted."""
        if self.tokens >= 1.0 - 1e-9:
            self.spent += 1
            return True
        return False


class GiveUp(Exception):
    """The task cannot progress in this run; it ends in `state` (failed, in_doubt, received)."""

    def __init__(self, state: str, code: str | RunnerCode, message: str) -> None:
        super().__init__(message)
        self.state = state
        self.code = str(code.value if isinstance(code, RunnerCode) else code)


class StopRun(Exception):
    """Auth or quota: the API refused the run; no new task starts (`code`: the API's)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"the API refused the run: {code} ({message})")
        self.code = code


@dataclass
class Counters:
    """Live figures of a run (what the progress line and the summary show)."""

    total: int = 0
    skipped: int = 0  # already done before this run
    done: int = 0
    failed: int = 0
    in_doubt: int = 0
    in_flight: int = 0
    retrying: int = 0
    sends: int = 0
    retries: int = 0
    polls: int = 0
    spent: Decimal = Decimal(0)  # this run's tasks, reported costs (estimates where unknown)
    campaign_spent: Decimal = Decimal(0)  # every run of the output folder, this one included
    price: Decimal = Decimal(0)  # per image: the table's, or the highest the provider reported
    table_price: Decimal = Decimal(0)
    price_source: str = "table"  # table (nothing known yet) | reported | unreported
    limit: int = 0  # the concurrency limit now
    limit_reason: str = ""  # why it last changed

    @property
    def remaining(self) -> int:
        """Tasks neither done (before or in this run), failed nor left in doubt."""
        return self.total - self.skipped - self.done - self.failed - self.in_doubt

    def follow(self, budget: Budget) -> None:
        """Take the money figures of `budget` (spent, price and where it comes from)."""
        self.spent, self.campaign_spent = budget.spent, budget.campaign_spent
        self.price, self.table_price, self.price_source = (budget.price, budget.table_price,
                                                           budget.source)


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended (`status`, one of STATUSES), its counters, and a message."""

    status: str
    counters: Counters
    message: str = ""


@dataclass
class RunContext:
    """The services one run's tasks share."""

    client: RunwareClient
    log: RunLog
    execution: Execution
    limit: AdaptiveLimit
    inputs: Inputs
    poller: Poller
    downloads: anyio.CapacityLimiter  # output downloads at once (they hold no task slot)
    out_dir: Path
    counters: Counters = field(default_factory=Counters)
    retry_budget: RetryBudget = field(default_factory=lambda: RetryBudget(0.2))
    backoff: Backoff = Backoff()
    sleep: Sleep = default_sleep
    rng: random.Random = field(default_factory=random.Random)
    wall: Callable[[], float] = time.time
