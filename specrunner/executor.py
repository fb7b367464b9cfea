"""The anyio fan-out: dispatch planned tasks under a capacity and a budget, retry safely.

One task group owns every worker; an adaptive capacity limiter (AIMD) bounds the tasks in
flight; each task's cost is reserved before dispatch. Every UUID is committed to the record
before it is sent, and results are committed before a task counts as done, so a crash at any
moment leaves only tasks in doubt, which the next run reconciles (getResponse, getTaskDetails)
before re-sending the same UUID. Expected per-task failures are records, not exceptions.

Here: dispatch, admission (slot and budget), the workers, drain/cancel and the outcome. The
per-task protocol is task_flow.py (replies.py reads replies and polls); the limiter is
adaptive.py, local inputs inputs.py, the "sending" recorded ahead send_window.py.
"""

from __future__ import annotations

import contextlib
import gc
import random
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import anyio

from specrunner import store as st
from specrunner.adaptive import AdaptiveLimit
from specrunner.batching import Writer
from specrunner.spec.types import Execution
from specrunner.plan.task import Task
from specrunner.errors import RecordError
from specrunner.client import Backoff, RetryBudget, RunwareClient, Sleep, default_sleep
from specrunner.inputs import Inputs
from specrunner.outputs import FileSink
from specrunner.run_types import Counters, GiveUp, Job, StopRun
from specrunner.send_window import SendWindow
from specrunner.store import Store
from specrunner.task_flow import TaskFlow

# The public entry (Counters is defined in run_types, shared with the per-task modules).
__all__ = ["Counters", "Executor", "RunOutcome"]


@dataclass(frozen=True)
class RunOutcome:
    """How a run ended: `status` is complete | failed | budget | interrupted | stopped."""

    status: str
    counters: Counters
    message: str = ""


GC_YOUNG_THRESHOLD = 20_000  # CPython's default is 700 allocations


@contextlib.contextmanager
def _young_garbage_collected_less() -> Iterator[None]:
    """Run with the plan frozen out of the cyclic GC and fewer young collections; restore.

    A run is allocation-heavy (requests, responses, coroutine frames) while every task in
    flight keeps its state alive: with the default threshold the collector ran ~450 times in
    a 3,000-task run, re-scanning those live objects each time, ~8% of the event loop's time
    (gc.callbacks, bench/bench_run.py). The plan and the record's rows are long-lived and
    acyclic: `gc.freeze()` moves them out of every collection. Garbage is still collected,
    in fewer, larger young collections. Nested or concurrent runs: the outermost restores.
    """
    global _gc_depth, _gc_saved, _gc_froze
    with _gc_lock:
        if _gc_depth == 0:
            _gc_saved = gc.get_threshold()
            # A program that froze objects itself (a pre-fork server) keeps its own freeze:
            # unfreezing afterwards would undo it, so then only the threshold changes.
            _gc_froze = gc.get_freeze_count() == 0
            if _gc_froze:
                gc.freeze()
            gc.set_threshold(max(_gc_saved[0], GC_YOUNG_THRESHOLD), *_gc_saved[1:])
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0:
                gc.set_threshold(*_gc_saved)
                if _gc_froze:
                    gc.unfreeze()


_gc_lock = threading.Lock()  # runs in several threads of one process share the settings
_gc_depth = 0
_gc_froze = False
_gc_saved: tuple[int, ...] = gc.get_threshold()


class Executor:
    """Runs `tasks` (already recorded as planned) to completion, recording everything."""

    def __init__(self, tasks: list[Task], store: Store, client: RunwareClient,
                 execution: Execution, max_usd: Decimal, out_dir: Path, run_id: int, *,
                 sleep: Sleep = default_sleep, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 backoff: Backoff = Backoff()) -> None:
        self.tasks, self.store, self.client = tasks, store, client
        self.execution, self.max_usd, self.out_dir, self.run_id = execution, max_usd, out_dir, run_id
        self.sleep, self.rng, self.wall = sleep, rng or random.Random(), wall
        self.backoff = backoff
        self.writer = Writer(store)
        self.files = FileSink(self.writer, lock_fd=store.lock_fd)
        self.c = Counters(total=len(tasks), limit=execution.concurrency)
        self.limit = AdaptiveLimit(execution.concurrency, clock,
                                   on_change=lambda n: setattr(self.c, "limit", n))
        self.retry_budget = RetryBudget(execution.retry_budget_ratio)
        self._draining = False
        self._budget_hit = False
        self._stop_message: str | None = None
        self._interrupted = False
        self._work: anyio.CancelScope | None = None

    # -- control ---------------------------------------------------------------------------
    def drain(self) -> None:
        """Stop dispatching; let tasks in flight finish (first Ctrl-C)."""
        self._draining = self._interrupted = True

    def cancel(self) -> None:
        """Cancel tasks in flight too (second Ctrl-C); they stay in doubt in the record."""
        self._draining = self._interrupted = True
        if self._work is not None:
            self._work.cancel()

    async def run(self) -> RunOutcome:
        """Dispatch every task not done yet; return how the run ended."""
        self.writer.start_helper()  # they boot while the record is read
        self.files.start_helper()
        try:
            todo = self._prepare()
        except BaseException:  # the helpers hold the folder's lock: let them go
            self.files.stop_helper()
            self.writer.stop_helper()
            raise
        with _young_garbage_collected_less():
            return await self._run(todo)

    def _prepare(self) -> list[Job]:
        """Read the record: the run's shared services, and the jobs still to do."""
        rows = self.store.task_rows()
        self.inputs = Inputs(self.store.uploads(), client=self.client, writer=self.writer,
                             execution=self.execution, wall=self.wall, sleep=self.sleep,
                             backoff=self.backoff, rng=self.rng)
        self._recorded: dict[str, list[dict[str, Any]]] = {}
        for r in self.store.results():
            if rows[r.task_key].state in ("received", "failed"):
                self._recorded.setdefault(r.task_key, []).append(
                    {"taskUUID": r.task_uuid, "imageUUID": r.image_uuid, "imageURL": r.url,
                     "seed": r.seed, "cost": None if r.cost is None else str(r.cost),
                     "NSFWContent": r.nsfw})
        self.flow = TaskFlow(client=self.client, writer=self.writer, files=self.files,
                             limit=self.limit, retry_budget=self.retry_budget, counters=self.c,
                             execution=self.execution, run_id=self.run_id, out_dir=self.out_dir,
                             inputs=self.inputs, recorded=self._recorded,
                             release_slot=self._release_slot, sleep=self.sleep, rng=self.rng,
                             wall=self.wall, backoff=self.backoff)
        todo: list[Job] = []
        for t in self.tasks:
            row = rows[t.task_key]
            if row.state == "done":
                self.c.skipped += 1
                self.c.spent += row.cost if row.cost is not None else t.est_cost
                continue
            job = Job(t, row.state, row.generation, row.task_uuid)
            if row.state == "failed" and t.task_key not in self._recorded:
                job.state = "planned"  # a finished failure: try again under a fresh UUID
                job.next_generation()
            todo.append(job)
        return todo

    async def _run(self, todo: list[Job]) -> RunOutcome:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.writer.run)
            outer.start_soon(self.files.run)
            outer.start_soon(self.client.deadlines.watch)  # one timer for every deadline
            window = SendWindow(todo, max(32, 2 * self.execution.concurrency), outer,
                                writer=self.writer, run_id=self.run_id, wall=self.wall)
            try:
                with anyio.CancelScope() as self._work:
                    async with anyio.create_task_group() as work:
                        await self._dispatch_all(todo, work, window)
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(RecordError):
                    await window.release()  # unsent tasks are not in doubt: planned again
                self.client.deadlines.stop()
                await self.files.close()
                await self.writer.close()
        return self._outcome()

    def _outcome(self) -> RunOutcome:
        c = self.c
        if self._stop_message:
            return RunOutcome("stopped", c, self._stop_message)
        if self._interrupted:
            return RunOutcome("interrupted", c)
        if self._budget_hit:
            return RunOutcome("budget", c, f"budget of ${self.max_usd} reached")
        if c.failed or c.in_doubt:
            return RunOutcome("failed", c)
        return RunOutcome("complete", c)

    async def _dispatch_all(self, todo: list[Job], work: anyio.abc.TaskGroup,
                            window: SendWindow) -> None:
        """Start each task once a slot is free, the budget takes it and the send window has
        its "sending" durable; stop at the first task refused (draining or budget)."""
        limiter = self.limit.limiter
        for job in todo:
            token = object()
            try:  # no checkpoint while slots are free: a checkpoint is a loop pass
                limiter.acquire_on_behalf_of_nowait(token)
            except anyio.WouldBlock:
                await limiter.acquire_on_behalf_of(token)
            if not self._admit(job, token):
                return
            await window.ready(job)
            job.started = True
            work.start_soon(self._worker, job)

    def _admit(self, job: Job, token: object) -> bool:
        """Reserve the task's estimated cost on its slot `token`; False (slot given back)
        when draining or when the budget cannot take it."""
        if self._draining:
            self.limit.limiter.release_on_behalf_of(token)
            return False
        est = job.task.est_cost
        if self.c.spent + self.c.reserved + est > self.max_usd:
            self.limit.limiter.release_on_behalf_of(token)
            self._budget_hit = True
            return False
        self.c.reserved += est
        self.c.in_flight += 1
        job.token = token
        return True

    def _release_slot(self, job: Job) -> None:
        """Give back the task's concurrency slot (once): its requests are over."""
        if job.token is not None:
            self.limit.limiter.release_on_behalf_of(job.token)
            job.token = None

    # -- one task --------------------------------------------------------------------------
    async def _worker(self, job: Job) -> None:
        t = job.task
        charged: Decimal | None = None
        try:
            with self.client.deadlines.bound(self.execution.task_deadline_s) as deadline:
                try:
                    charged = await self.flow.run_job(job)
                except GiveUp as g:
                    await self.flow.set_state(job, g.state, detail=g.code, error_code=g.code,
                                              error_message=str(g)[:500])
                except StopRun as s:
                    self._stop_message = str(s)
                    self._draining = True
                    if self._work is not None:
                        self._work.cancel()
            if deadline.cancelled_caught:
                sent = job.state != "planned"
                await self.flow.set_state(job, "in_doubt" if sent else "failed", detail="deadline",
                                          error_code="deadline",
                                          error_message="task deadline passed")
        finally:
            self.c.in_flight -= 1
            self.c.reserved -= t.est_cost
            if job.state == "done":
                self.c.done += 1
                self.c.spent += charged if charged is not None else t.est_cost
            elif job.state == "failed":
                self.c.failed += 1
                if job.sends and job.ambiguous:
                    self.c.spent += t.est_cost  # it may have been charged: count it
            elif job.state in st.IN_DOUBT_STATES and job.sends:
                self.c.in_doubt += 1
                self.c.spent += t.est_cost
            self._release_slot(job)
