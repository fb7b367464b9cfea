"""The anyio fan-out of a run: dispatch the planned tasks under a concurrency limit and a
budget, one worker per task, drain or cancel on request, and say how the run ended.

One task group owns every worker. Before a task is dispatched it takes a slot of the adaptive
limit and a reservation of the budget (run/budget.py: the campaign's cap, the learned price,
one task at a time until the price is known); its cost is settled before its slot is freed,
so no interleaving can spend past `max_usd`. A run whose tasks cannot all fit the campaign's
remaining budget stops before sending anything. Expected per-task failures end the task
(recorded), never the run; auth and quota refusals (StopRun) stop dispatch, and the tasks in
flight end as they will. One task's life is run/task.py.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from decimal import Decimal

import anyio

from specrunner import runware
from specrunner.money import money
from specrunner.plan.task import Task
from specrunner.record import IN_DOUBT_STATES, Record, Standing, TaskState
from specrunner.run.budget import Budget, campaign_budget, table_price_of
from specrunner.run.client import RunwareClient
from specrunner.run.context import (
    Backoff,
    Counters,
    GiveUp,
    RetryBudget,
    RunContext,
    RunOutcome,
    Sleep,
    StopRun,
    default_sleep,
)
from specrunner.run.inputs import Inputs
from specrunner.run.limit import AdaptiveLimit
from specrunner.run.poll import Poller
from specrunner.run.task import Job, TaskRun
from specrunner.runware import RunnerCode
from specrunner.spec.types import Execution

_BACKOFF = Backoff()  # the default schedule (a frozen value, so one is shared by every run)


class Executor:
    """Runs `tasks` (already in the record's plan) to completion, recording everything.

    `max_usd` caps the whole campaign of the record (earlier runs included); `price` is the
    table price per image (default: the plan's estimate per image).
    """

    def __init__(self, tasks: Sequence[Task], record: Record, client: RunwareClient,
                 execution: Execution, max_usd: Decimal, run_id: int, *,
                 price: Decimal | None = None,
                 sleep: Sleep = default_sleep, rng: random.Random | None = None,
                 wall: Callable[[], float] = time.time,
                 clock: Callable[[], float] = time.monotonic,
                 backoff: Backoff = _BACKOFF,
                 redact: Callable[[str], str] = lambda s: s,
                 standing: Standing | None = None) -> None:
        self.tasks, self.record, self.client = tasks, record, client
        self.standing = standing  # the record's, read after the plan was (default: at run())
        self.execution, self.run_id = execution, run_id
        self.sleep, self.rng, self.wall, self.clock = sleep, rng or random.Random(), wall, clock
        self.backoff, self.redact = backoff, redact
        self.max_usd = max_usd
        self.table_price = price if price is not None else table_price_of(tasks)
        self.budget = Budget(max_usd, self.table_price)
        self._settled = anyio.Event()  # set whenever a task's cost becomes known
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
        self._settled.set()  # a dispatcher waiting for the first price goes on to stop

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
        poller = Poller(self.client, self.execution, self.counters, clock=self.clock,
                        wall=self.wall)
        self.ctx = RunContext(client=self.client, log=log, execution=self.execution,
                              limit=self.limit, inputs=inputs, poller=poller,
                              downloads=anyio.CapacityLimiter(self.execution.concurrency),
                              out_dir=self.record.out_dir, counters=self.counters,
                              retry_budget=RetryBudget(self.execution.retry_budget_ratio),
                              backoff=self.backoff, sleep=self.sleep, rng=self.rng,
                              wall=self.wall)
        standing = self.standing or self.record.standing()
        jobs = self._jobs(standing.open)
        self._budget_for(standing, jobs)
        need = sum(j.task.number_results for j in jobs)
        if jobs and not self.budget.fits(need):
            self._budget_hit = True
            self._stop_message = (
                f"budget: the campaign has spent {money(self.budget.campaign_spent)} of its "
                f"{money(self.max_usd)}; the {len(jobs):,} task(s) still to run need "
                f"{money(self.budget.cost_of(need))} more: nothing was sent (raise --max-usd "
                f"to at least {money(self.budget.campaign_spent + self.budget.cost_of(need))}"
                " to run them)")
            return self._outcome()
        async with anyio.create_task_group() as outer:
            outer.start_soon(log.serve)
            outer.start_soon(poller.serve)
            try:
                with anyio.CancelScope() as self._work:
                    async with anyio.create_task_group() as work:
                        await self._dispatch(jobs, work)
            finally:
                poller.close()
                await log.close()
        return self._outcome()

    def _jobs(self, states: dict[str, TaskState]) -> list[Job]:
        """The jobs still to do, in plan order (`states`: the recorded tasks not done; the
        plan's others are done: Record.plan recorded every task); done tasks are counted
        and skipped."""
        jobs = []
        for t in self.tasks:
            st = states.get(t.task_key)
            if st is None:
                self.counters.skipped += 1
                continue
            job = Job(t, st.state, st.generation, st.task_uuid,
                      recorded=st.results if st.state in ("received", "failed") else ())
            if st.state == "failed" and not st.results:
                if runware.documented_not_charged(st.error_code):
                    # Again, under a fresh UUID (recorded before it is sent).
                    job.generation += 1
                    job.uuid = runware.task_uuid(t.task_key, job.generation)
                else:  # it may have run and been billed: ask about its UUID first
                    job.state = "in_doubt"
            jobs.append(job)
        return jobs

    def _budget_for(self, standing: Standing, jobs: list[Job]) -> None:
        """The run's Budget, from what the record says the campaign spent."""
        self.budget = campaign_budget(self.record, standing, self.max_usd, self.table_price,
                                      {j.key for j in jobs})
        self._update()

    def _update(self) -> None:
        """The counters the progress line and the summary show, from the budget."""
        self.counters.follow(self.budget)

    async def _dispatch(self, jobs: list[Job], work: anyio.abc.TaskGroup) -> None:
        """Start each job once a slot is free and the budget takes it; stop at the first job
        refused (draining, or the budget is reached)."""
        limiter = self.limit.limiter
        for job in jobs:
            while not self.budget.may_dispatch() and not self._draining:
                self._settled = anyio.Event()
                await self._settled.wait()  # slow start: the first price is not known yet
            token = object()
            try:  # free slots are taken without yielding: one loop pass per task is costly
                limiter.acquire_on_behalf_of_nowait(token)
            except anyio.WouldBlock:
                await limiter.acquire_on_behalf_of(token)
            if self._draining:
                limiter.release_on_behalf_of(token)
                return
            if not self.budget.reserve(job.task.number_results):
                limiter.release_on_behalf_of(token)
                self._budget_hit = True
                return
            self.counters.in_flight += 1
            work.start_soon(self._worker, job, token)

    async def _worker(self, job: Job, token: object) -> None:
        c, log = self.counters, self.ctx.log
        held = [token]  # the slot, until given back (once)
        settled = False
        asked = job.task.number_results

        def release() -> None:
            if held:
                self.limit.limiter.release_on_behalf_of(held.pop())

        def settle(cost: Decimal | None, returned: int) -> None:
            nonlocal settled
            if not settled:
                settled = True
                self.budget.settle(asked, cost, returned)
                self._update()
                self._settled.set()

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
                self.budget.release(asked, maybe_charged=job.state in IN_DOUBT_STATES
                                    and (job.sends > 0 or bool(job.recorded)))
                self._settled.set()
            if job.state == "done":
                c.done += 1
            elif job.state == "failed":
                c.failed += 1
            elif job.state != "planned":
                c.in_doubt += 1
            self._update()
            release()

    def _outcome(self) -> RunOutcome:
        c = self.counters
        self._update()
        if self._stop_message:  # it may quote the server, which may quote the request
            self._stop_message = self.redact(self._stop_message)
        if self._budget_hit and self._stop_message:
            return RunOutcome("budget", c, self._stop_message)
        if self._stop_message:
            return RunOutcome("stopped", c, self._stop_message)
        if self._interrupted:
            return RunOutcome("interrupted", c)
        if self._budget_hit:
            return RunOutcome("budget", c, f"budget: the campaign reached its "
                              f"{money(self.max_usd)} (spent {money(c.campaign_spent)})")
        if c.failed:
            return RunOutcome("failed", c)
        if c.in_doubt:
            return RunOutcome("incomplete", c, f"{c.in_doubt} task(s) in doubt: run again to "
                              "finish (the next run asks the server about them first)")
        return RunOutcome("complete", c)

