"""Small types shared by the executor's modules: a run's live counters, one task's progress
inside a run (Job), and the two exceptions that end a task (GiveUp) or the whole run (StopRun).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from specrunner import runware
from specrunner.plan.task import Task
@dataclass
class Counters:
    """Live figures of a run (read by the progress display)."""

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
    spent: Decimal = Decimal(0)
    reserved: Decimal = Decimal(0)
    limit: int = 0  # the concurrency limit now (the adaptive limit after a cut)

    @property
    def remaining(self) -> int:
        """Tasks neither done (before or in this run), failed nor left in doubt."""
        return self.total - self.skipped - self.done - self.failed - self.in_doubt


class StopRun(Exception):
    """Auth or quota failure: the whole run stops."""


def refused(code: str | None, message: str | None) -> StopRun:
    """The StopRun for an API that refused the run (auth, quota)."""
    return StopRun(f"the API refused the run: {code} ({message})")


class GiveUp(Exception):
    """A task cannot progress in this run; `state` is failed or in_doubt."""

    def __init__(self, state: str, code: str, message: str) -> None:
        super().__init__(message)
        self.state, self.code = state, code


@dataclass
class Job:
    """Mutable progress of one task inside this run."""

    task: Task
    state: str
    generation: int
    uuid: str
    sends: int = 0
    ambiguous: bool = False
    blocked: int = 0  # results refused by the content policy (not charged)
    blocked_code: str | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    token: object | None = None  # its slot of the concurrency limit, while it holds one
    precommitted: bool = False  # "sending" recorded ahead by the send window: not in doubt
    window: int = -1  # which chunk of the send window records its "sending" (-1: none)
    started: bool = False  # its worker was started in this run

    def next_generation(self) -> None:
        """Move to the task's next UUID (the provider failed this one; never for retries)."""
        self.generation += 1
        self.uuid = runware.task_uuid(self.task.task_key, self.generation)
