"""The adaptive concurrency limit (AIMD), driven by an injected clock and events: no sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from specrunner.spec.types import Execution
from specrunner.run.limit import AdaptiveLimit
from specrunner.run.executor import Executor
from test_run_support import Fake, make_tasks, run_executor

pytestmark = pytest.mark.usefixtures("no_waiting")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(maximum: int = 20, **kw) -> tuple[AdaptiveLimit, Clock]:
    clock = Clock()
    return AdaptiveLimit(maximum, clock, **kw), clock


def test_starts_at_the_maximum_and_the_limiter_follows() -> None:
    lim, _ = make(20)
    assert lim.limit == 20 and lim.limiter.total_tokens == 20


def test_overload_cuts_multiplicatively_once_per_cooldown() -> None:
    lim, clock = make(20)
    lim.on_overload()
    assert lim.limit == 14 and lim.limiter.total_tokens == 14 and lim.cuts == 1
    lim.on_overload()  # same instant: a burst of 429s is one congestion event
    clock.now += 0.5
    lim.on_overload()
    assert lim.limit == 14 and lim.cuts == 1
    clock.now += 0.6  # past the 1 s cool-down
    lim.on_overload()
    assert lim.limit == 9 and lim.cuts == 2  # int(14 x 0.7)


def test_cuts_never_go_below_the_minimum() -> None:
    lim, clock = make(10, minimum=2)
    for _ in range(20):
        clock.now += 5
        lim.on_overload()
    assert lim.limit == 2 and lim.limiter.total_tokens == 2


def test_cool_down_grows_with_the_observed_latency() -> None:
    lim, clock = make(20)
    for _ in range(5):
        lim.on_success(3.0)  # slow but steady: no growth, no cut
    assert lim.cuts == 0
    lim.on_overload()
    clock.now += 2.0  # > 1 s but < 2 x latency EWMA (6 s): still the same congestion event
    lim.on_overload()
    assert lim.cuts == 1
    clock.now += 4.5
    lim.on_overload()
    assert lim.cuts == 2


def test_recovers_additively_after_sustained_success() -> None:
    lim, clock = make(20)
    lim.on_overload()
    assert lim.limit == 14
    for _ in range(13):
        lim.on_success(0.1)
    assert lim.limit == 14  # one full window of `limit` successes is needed
    lim.on_success(0.1)
    assert lim.limit == 15 and lim.limiter.total_tokens == 15
    for _ in range(15 + 16 + 17 + 18 + 19):
        lim.on_success(0.1)
    assert lim.limit == 20
    for _ in range(100):
        lim.on_success(0.1)
    assert lim.limit == 20  # never above the configured maximum


def test_an_overload_resets_the_success_streak() -> None:
    lim, clock = make(20)
    lim.on_overload()
    for _ in range(13):
        lim.on_success(0.1)
    clock.now += 0.1
    lim.on_overload()  # inside the cool-down: no cut, but the streak starts over
    assert lim.limit == 14
    for _ in range(13):
        lim.on_success(0.1)
    assert lim.limit == 14
    lim.on_success(0.1)
    assert lim.limit == 15


def test_latency_growth_counts_as_overload() -> None:
    lim, clock = make(32)
    for _ in range(10):
        lim.on_success(0.2)
    assert lim.cuts == 0
    for _ in range(20):  # the server slows down to 2 s: EWMA climbs past 3 x best
        lim.on_success(2.0)
    assert lim.cuts == 1 and lim.limit == 22
    clock.now += 100  # past any cool-down: still slow, so it keeps backing off
    lim.on_success(2.0)
    assert lim.cuts == 2 and lim.limit == 15


def test_small_absolute_latency_jitter_is_not_overload() -> None:
    lim, clock = make(16)
    for _ in range(10):
        lim.on_success(0.001)
    for _ in range(30):  # 10x slower, but only 9 ms more: below the 50 ms floor
        clock.now += 5
        lim.on_success(0.01)
    assert lim.cuts == 0 and lim.limit == 16


# -- wired into the executor ---------------------------------------------------------------
def run_with(tmp: Path, fake: Fake, n: int, concurrency: int) -> Executor:
    outcome, ex = run_executor(tmp, fake.transport(), make_tasks(n),
                               Execution(concurrency=concurrency, max_attempts=4),
                               seed=0, clock=Clock())
    assert outcome.status == "complete"
    return ex


@pytest.mark.parametrize("fault", ["http503", "http429", "ratecode"])
def test_executor_backs_off_on_overload_replies(tmp_path: Path, fault: str) -> None:
    fake = Fake(script=lambda kind, uuid, n: fault if kind == "imageInference" and n == 1
                else None)
    ex = run_with(tmp_path, fake, 12, concurrency=10)
    assert ex.limit.cuts == 1  # the clock never moves: one congestion event, one cut
    assert ex.limit.limit < 10 and ex.counters.limit == ex.limit.limit  # the progress line's


def test_executor_keeps_full_concurrency_without_overload(tmp_path: Path) -> None:
    fake = Fake(script=lambda kind, uuid, n: "http500" if kind == "imageInference" and n == 1
                else None)  # a plain 500 is a fault to retry, not a capacity signal
    ex = run_with(tmp_path, fake, 12, concurrency=10)
    assert ex.limit.cuts == 0 and ex.limit.limit == 10 == ex.counters.limit
