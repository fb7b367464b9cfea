"""The poller's pacing: one POST per expected completion at most, every due task in it."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from specrunner.run.client import Reply
from specrunner.run.context import Counters
from specrunner.run.poll import POSTS_PER_S, Poller
from specrunner.spec.types import Execution


class _Client:
    """Answers every getResponse POST with an empty envelope, and keeps the bodies."""

    def __init__(self) -> None:
        self.bodies: list[list[dict[str, Any]]] = []

    async def send(self, body: list[dict[str, Any]], timeout: float) -> Reply:
        self.bodies.append(body)
        return Reply(200, {"data": []}, 0.0)  # type: ignore[arg-type]


def _poller(observed: list[float]) -> tuple[Poller, _Client]:
    client = _Client()
    poller = Poller(client, Execution(), Counters())  # type: ignore[arg-type]
    for seconds in observed:
        poller.observe(None, seconds)
    return poller, client


def test_spacing_keeps_posts_near_one_per_completion() -> None:
    poller, _ = _poller([])
    assert poller.spacing(16) == pytest.approx(1 / POSTS_PER_S)  # nothing observed yet
    poller, _ = _poller([5.0, 15.0])  # mean 10 s
    assert poller.spacing(4) == pytest.approx(10 / 20)  # a twentieth of it, at most
    assert poller.spacing(64) == pytest.approx(10 / (0.5 * 64))  # half a POST per task
    assert poller.spacing(10_000) == pytest.approx(1 / POSTS_PER_S)  # the cap a second


def test_questions_due_before_the_next_post_ride_in_one_post() -> None:
    # 10 tasks of ~2 s each, acknowledged at scattered moments: their questions fall due over
    # 0.09 s. The next POST could leave only 2 / 20 = 0.1 s later, so one POST asks about all
    # of them (it took two when only questions due within 50 ms rode along).
    poller, client = _poller([2.0, 2.0])
    answered: list[str] = []

    async def ask(uuid: str, due: float) -> None:
        await poller.ask(uuid, due)
        answered.append(uuid)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(poller.serve)
            now = time.monotonic()
            async with anyio.create_task_group() as asks:
                for i in range(10):
                    asks.start_soon(ask, f"u{i}", now + 0.01 * i)
            poller.close()

    anyio.run(main)
    assert sorted(answered) == sorted(f"u{i}" for i in range(10))
    assert [len(b) for b in client.bodies] == [10]
    assert {t["taskUUID"] for t in client.bodies[0]} == set(answered)


def test_first_question_comes_before_the_shortest_edit_seen() -> None:
    poller, _ = _poller([])
    assert poller.first_wait() == 0.5  # nothing observed: every half second
    poller, _ = _poller([13.0])  # only the price probe's edit, maybe a long one: half of it
    assert poller.first_wait() == pytest.approx(6.5)
    # edits of 5-15 s: asked at 95% of the shortest, not of a typical one (a task found done
    # by its first question counts as taking that long, so a typical time only grows)
    poller, _ = _poller([5.2, 6.0, 7.5, 9.0, 11.0, 12.0, 14.0, 15.0])
    assert poller.first_wait() == pytest.approx(0.95 * 5.2)
