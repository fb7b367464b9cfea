"""The anyio fan-out of a run: dispatch the planned tasks under a concurrency limit and a
budget, one worker per task, drain or cancel on request, and say how the run ended.

One task group owns every worker. Before a task is dispatched it takes a slot of the adaptive
limit and a reservation of the budget; its cost is settled before its slot is freed, so no
interleaving can spend past `max_usd`. Expected per-task failures end the task (recorded),
never the run; auth and quota refusals (StopRun) stop dispatch; the tasks in flight end as they will. One
task's life is run/task.py.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Callable, Sequence

import anyio

from specrunner import runware
from specrunner.plan.task import Task
from specrunner.record import IN_DOUBT_STATES, Record, TaskState
from specrunner.run.client import RunwareClient
from specrunner.run.context import (Backoff, Counters, GiveUp, RetryBudget, RunContext, Sleep,
                                    StopRun, default_sleep)
from specrunner.run.inputs import Inputs
from specrunner.run.limit import AdaptiveLimit
from specrunner.run.task import Job, TaskRun
from specrunner.runware import RunnerCode
from specrunner.spec.types import Execution

# How a run ended -> the status it records and shows (the CLI maps them to exit codes).
STATUSES = ("complete", "failed", "incomplete", "budget", "interrupted", "stopped")


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended (`status`, one of STATUSES), its counters, and a message."""

    status: str
    counters: Counters
    message: str = ""


class Budget:
    """The run's money: the cap, what was spent, what the tasks in flight have reserved."""

    def __init__(self, max_usd: Decimal, spent: Decimal = Decimal(0)) -> None:
        self.max_usd = max_usd
        self.spent = spent
        self.reserved = Decimal(0)

    def reserve(self, task: Task) -> Decimal | None:
        """Reserve what `task` may cost; None when that would pass `max_usd`."""
        need = task.est_cost
        if self.spent + self.reserved + need > self.max_usd:
            return None
        self.reserved += need
        return need

    def settle(self, reservation: Decimal, charged: Decimal | None) -> None:
        """The task's cost is known (None: the server reported none; the estimate counts)."""
        self.reserved -= reservation
        self.spent += reservation if charged is None else charged

    def release(self, reservation: Decimal, maybe_charged: bool) -> None:
        """The task ended without a cost: it may have been charged (counted) or not."""
        self.reserved -= reservation
        if maybe_charged:
            self.spent += reservation


class Executor:
    """Runs `tasks` (already in the record's plan) to completion, recording everything."""

    def __init__(self, tasks: Sequence[Task], record: Record, client: RunwareClient,
                 execution: Execution, max_usd: Decimal, run_id: int, *,
                 sleep: Sleep = default_sleep, rng: random.Random | None = None,
                 wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic,
                 backoff: Backoff = Backoff(),
                 redact: Callable[[str], str] = lambda s: s) -> None:
        self.tasks, self.record, self.client = tasks, record, client
        self.execution, self.run_id = execution, run_id
        self.sleep, self.rng, self.wall, self.clock = sleep, rng or random.Random(), wall, clock
        self.backoff, self.redact = backoff, redact
        self.budget = Budget(max_usd)
        self.counters = Counters(total=len(tasks), limit=execution.concurrency)
        self.limit = AdaptiveLimit(execution.concurrency, clock, on_change=self._limit_changed)
        self._draining = False
        self._budget_hit = False
        self._stop_message: str | None = None
        self._interrupted = False
        self._work: anyio.CancelScope | None = None

    def _limit_changed(self, limit: int, reason: str) -> None:
        self.counters.limit, self.counters.limit_reason = limit, reason

    # -- control ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Stop dispatching; let the tasks in flight finish (first Ctrl-C)."""
        self._draining = self._interrupted = True

    def cancel(self) -> None:
        """Cancel the tasks in flight too (second Ctrl-C); they stay in doubt in the record."""
        self._draining = self._interrupted = True
        if self._work is not None:
            self._work.cancel()

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> RunOutcome:
        """Dispatch every task not done yet; return how the run ended."""
        log = self.record.run_log(self.run_id, wall=self.wall, redact=self.redact)
        inputs = Inputs(self.record.uploads(), client=self.client, log=log,
                        execution=self.execution, wall=self.wall, sleep=self.sleep,
                        backoff=self.backoff, rng=self.rng)
        self.ctx = RunContext(client=self.client, log=log, execution=self.execution,
                              limit=self.limit, inputs=inputs,
                              out_dir=self.record.out_dir, counters=self.counters,
                              retry_budget=RetryBudget(self.execution.retry_budget_ratio),
                              backoff=self.backoff, sleep=self.sleep, rng=self.rng,
                              wall=self.wall)
        jobs = self._jobs(self.record.task_states())
        async with anyio.create_task_group() as outer:
            outer.start_soon(log.serve)
            try:
                with anyio.CancelScope() as self._work:
                    async with anyio.create_task_group() as work:
                        await self._dispatch(jobs, work)
            finally:
                await log.close()
        return self._outcome()

    def _jobs(self, states: dict[str, TaskState]) -> list[Job]:
        """The jobs still to do, in plan order; done tasks are counted and skipped."""
        jobs = []
        for t in self.tasks:
            st = states[t.task_key]
            if st.state == "done":
                self.counters.skipped += 1
                continue
            job = Job(t, st.state, st.generation, st.task_uuid,
                      recorded=st.results if st.state in ("received", "failed") else ())
            if st.state == "failed" and not st.results:
                # A finished failure, documented as not charged: again, under a fresh UUID
                # (recorded before it is sent).
                job.generation += 1
                job.uuid = runware.task_uuid(t.task_key, job.generation)
            jobs.append(job)
        return jobs

    async def _dispatch(self, jobs: list[Job], work: anyio.abc.TaskGroup) -> None:
        """Start each job once a slot is free and the budget takes it; stop at the first job
        refused (draining, or the budget is reached)."""
        limiter = self.limit.limiter
        for job in jobs:
            token = object()
            await limiter.acquire_on_behalf_of(token)
            if self._draining:
                limiter.release_on_behalf_of(token)
                return
            reservation = self.budget.reserve(job.task)
            if reservation is None:
                limiter.release_on_behalf_of(token)
                self._budget_hit = True
                return
            self.counters.in_flight += 1
            work.start_soon(self._worker, job, token, reservation)

    async def _worker(self, job: Job, token: object, reservation: Decimal) -> None:
        c, log = self.counters, self.ctx.log
        held = [token]  # the slot, until given back (once)
        settled = False

        def release() -> None:
            if held:
                self.limit.limiter.release_on_behalf_of(held.pop())

        def settle(cost: Decimal | None) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self.budget.settle(reservation, cost)

        try:
            with anyio.move_on_after(self.execution.task_deadline_s) as deadline:
                try:
                    await TaskRun(self.ctx, job, release=release, settle=settle).run()
                except GiveUp as g:
                    await log.ended(job.key, job.state, g.state, g.code, str(g))
                    job.state = g.state
                except StopRun as s:
                    # The others in flight get the same answer and end the same way: no
                    # cancelling, so no task is left wondering whether its request left.
                    self._stop_message = self._stop_message or str(s)
                    self._draining = True
                    state = job.ends()
                    await log.ended(job.key, job.state, state, s.code, str(s))
                    job.state = state
            if deadline.cancelled_caught:
                sent = job.sends > 0 or job.state in IN_DOUBT_STATES
                state = "in_doubt" if sent else "failed"
                await log.ended(job.key, job.state, state, RunnerCode.DEADLINE.value,
                                "the task deadline passed")
                job.state = state
        finally:
            c.in_flight -= 1
            if not settled:
                self.budget.release(reservation, maybe_charged=job.state in IN_DOUBT_STATES
                                    and (job.sends > 0 or bool(job.recorded)))
            if job.state == "done":
                c.done += 1
            elif job.state == "failed":
                c.failed += 1
            elif job.state != "planned":
                c.in_doubt += 1
            c.spent = self.budget.spent
            release()

    def _outcome(self) -> RunOutcome:
        c = self.counters
        c.spent = self.budget.spent
        if self._stop_message:
            return RunOutcome("stopped", c, self._stop_message)
        if self._interrupted:
            return RunOutcome("interrupted", c)
        if self._budget_hit:
            return RunOutcome("budget", c, f"budget of ${self.budget.max_usd} reached")
        if c.failed or c.in_doubt:
            return RunOutcome("failed", c)
        return RunOutcome("complete", c)

