"""The adaptive concurrency limit (AIMD), driven by an injected clock and events: no sleeps."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_run_support import Fake, make_tasks, run_executor

from specrunner.run.executor import Executor
from specrunner.run.limit import AdaptiveLimit
from specrunner.spec.types import Execution

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
    changes: list[tuple[int, str]] = []
    lim, clock = make(20, on_change=lambda n, why: changes.append((n, why)))
    lim.on_overload("http503")
    assert lim.limit == 14 and lim.limiter.total_tokens == 14 and lim.cuts == 1
    lim.on_overload("http503")  # same instant: a burst of 503s is one congestion event
    clock.now += 1.5
    lim.on_overload("rateLimitExceeded")
    assert lim.limit == 14 and lim.cuts == 1
    clock.now += 0.6  # past the 2 s cool-down
    lim.on_overload("requestTimeout")
    assert lim.limit == 9 and lim.cuts == 2  # int(14 x 0.7)
    assert changes == [(14, "cut: http503"), (9, "cut: requestTimeout")]  # with their cause


def test_cuts_never_go_below_the_minimum() -> None:
    lim, clock = make(10, minimum=2)
    for _ in range(20):
        clock.now += 5
        lim.on_overload("http429")
    assert lim.limit == 2 and lim.limiter.total_tokens == 2


def test_recovers_additively_after_sustained_success() -> None:
    lim, _clock = make(20)
    lim.on_overload("http429")
    assert lim.limit == 14
    for _ in range(13):
        lim.on_success()
    assert lim.limit == 14  # one full window of `limit` successes is needed
    lim.on_success()
    assert lim.limit == 15 and lim.limiter.total_tokens == 15
    for _ in range(15 + 16 + 17 + 18 + 19):
        lim.on_success()
    assert lim.limit == 20
    for _ in range(100):
        lim.on_success()
    assert lim.limit == 20  # never above the configured maximum


def test_an_overload_resets_the_success_streak() -> None:
    lim, clock = make(20)
    lim.on_overload("http504")
    for _ in range(13):
        lim.on_success()
    clock.now += 0.1
    lim.on_overload("http504")  # inside the cool-down: no cut, but the streak starts over
    assert lim.limit == 14
    for _ in range(13):
        lim.on_success()
    assert lim.limit == 14
    lim.on_success()
    assert lim.limit == 15


def test_latency_alone_never_moves_the_limit() -> None:
    """Slow acknowledgements or slow edits are not overload: only 429/503/504, timeouts and
    refused connections are (a limit that read latency cut 64 to 21 on a healthy server)."""
    import inspect

    lim, clock = make(64)
    assert "latency" not in inspect.signature(lim.on_success).parameters
    for _ in range(1000):
        clock.now += 1
        lim.on_success()
    assert lim.cuts == 0 and lim.limit == 64


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
