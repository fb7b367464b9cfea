"""The anyio fan-out: dispatch planned tasks under a capacity and a budget, retry safely.

One task group owns every worker; an adaptive capacity limiter (AIMD) bounds the tasks in
flight; each task's cost is reserved before dispatch. Every UUID is committed to the record
before it is sent, and results are committed before a task counts as done, so a crash at any
moment leaves only tasks in doubt, which the next run reconciles (getResponse, getTaskDetails)
before re-sending the same UUID. Expected per-task failures are records, not exceptions.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterator

import anyio

from specrunner import runware, store as st
from specrunner.adaptive import AdaptiveLimit
from specrunner.campaign import Execution, Task
from specrunner.errors import RecordError
from specrunner.client import (OVERLOAD_STATUS, Backoff, DownloadError, Fault, RetryBudget,
                               RunwareClient, Sleep, default_sleep, inline_output, items_for)
from specrunner.inputs import Inputs
from specrunner.replies import Replies
from specrunner.run_types import Counters, GiveUp, Job, StopRun
from specrunner.send_window import SendWindow
from specrunner.store import Store, Writer, op_attempt, op_new_uuid, op_output, op_result, op_state

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
    global _gc_depth, _gc_saved
    if _gc_depth == 0:
        _gc_saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(max(_gc_saved[0], GC_YOUNG_THRESHOLD), *_gc_saved[1:])
    _gc_depth += 1
    try:
        yield
    finally:
        _gc_depth -= 1
        if _gc_depth == 0:
            gc.set_threshold(*_gc_saved)
            gc.unfreeze()


_gc_depth = 0
_gc_saved: tuple[int, ...] = gc.get_threshold()


class Executor:
    """Runs `tasks` (already recorded as planned) to completion, recording everything."""

    def __init__(self, tasks: list[Task], store: Store, client: RunwareClient,
                 execution: Execution, max_usd: Decimal, out_dir: Path, run_id: int, *,
                 sleep: Sleep = default_sleep, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 notify: Callable[[str], None] = lambda msg: None,
                 backoff: Backoff = Backoff()) -> None:
        self.tasks, self.store, self.client = tasks, store, client
        self.execution, self.max_usd, self.out_dir, self.run_id = execution, max_usd, out_dir, run_id
        self.sleep, self.rng, self.clock, self.wall = sleep, rng or random.Random(), clock, wall
        self.notify, self.backoff = notify, backoff
        self.writer = Writer(store)
        self.files = st.FileSink(self.writer)
        self.limit = AdaptiveLimit(execution.concurrency, clock)
        self.retry_budget = RetryBudget(execution.retry_budget_ratio)
        self.c = Counters(total=len(tasks), limit=execution.concurrency)
        self.replies = Replies(client=client, writer=self.writer, execution=execution,
                               limit=self.limit, counters=self.c, sleep=self.sleep, wall=wall,
                               run_id=run_id)
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
        rows = self.store.task_rows()
        uploads = {(r[0], bool(r[1])): (r[2], r[3]) for r in self.store.conn.execute(
            "SELECT sha256, inverted, image_uuid, uploaded_at FROM uploads")}
        self.inputs = Inputs(uploads, client=self.client, writer=self.writer,
                             execution=self.execution, wall=self.wall, sleep=self.sleep,
                             backoff=self.backoff, rng=self.rng)
        has_results = {r[0] for r in self.store.conn.execute("SELECT DISTINCT task_key FROM results")}
        self._recorded: dict[str, list[dict[str, Any]]] = {}
        for r in self.store.results():
            if rows[r.task_key].state in ("received", "failed"):
                self._recorded.setdefault(r.task_key, []).append(
                    {"taskUUID": r.task_uuid, "imageUUID": r.image_uuid, "imageURL": r.url,
                     "seed": r.seed, "cost": None if r.cost is None else str(r.cost),
                     "NSFWContent": r.nsfw})
        todo: list[Job] = []
        for t in self.tasks:
            row = rows[t.task_key]
            if row.state == "done":
                self.c.skipped += 1
                self.c.spent += row.cost if row.cost is not None else t.est_cost
                continue
            job = Job(t, row.state, row.generation, row.task_uuid)
            if row.state == "failed" and t.task_key not in has_results:
                job.state = "planned"  # a finished failure: try again under a fresh UUID
                job.generation += 1
                job.uuid = runware.task_uuid(t.task_key, job.generation)
            todo.append(job)
        with _young_garbage_collected_less():
            return await self._run(todo)

    async def _run(self, todo: list[Job]) -> RunOutcome:
        async with anyio.create_task_group() as outer:
            outer.start_soon(self.writer.run)
            outer.start_soon(self.files.run)
            window = SendWindow(todo, max(32, 2 * self.execution.concurrency), outer,
                                writer=self.writer, run_id=self.run_id, wall=self.wall,
                                recorded=self._recorded)
            try:
                with anyio.CancelScope() as self._work:
                    async with anyio.create_task_group() as work:
                        await self._dispatch_all(todo, work, window)
            finally:
                with anyio.CancelScope(shield=True), contextlib.suppress(RecordError):
                    await window.release()  # unsent tasks are not in doubt: planned again
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
            with anyio.CancelScope(deadline=anyio.current_time()
                                   + self.execution.task_deadline_s) as deadline:
                try:
                    charged = await self._run_job(job)
                except GiveUp as g:
                    await self._set_state(job, g.state, detail=g.code, error_code=g.code,
                                          error_message=str(g)[:500])
                except StopRun as s:
                    self._stop_message = str(s)
                    self._draining = True
                    if self._work is not None:
                        self._work.cancel()
            if deadline.cancelled_caught:
                sent = job.state != "planned"
                await self._set_state(job, "in_doubt" if sent else "failed", detail="deadline",
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

    async def _set_state(self, job: Job, new: str, *, detail: str | None = None,
                         extra: list[st.Op] | None = None, **cols: Any) -> None:
        """Move `job` to `new` once the change is durable."""
        ops = op_state(job.task.task_key, self.run_id, job.state, new, detail=detail,
                       now=self.wall(), **cols)
        await self.writer.write((extra or []) + ops)
        job.state = new

    def _queue_state(self, job: Job, new: str, *, detail: str | None = None,
                     extra: list[st.Op] | None = None, **cols: Any) -> None:
        """Move `job` to `new` without waiting: durable with (or before) its next write.

        Only for changes nothing depends on until that next write: the record may briefly
        lag (a crash leaves the task in its previous in-doubt state, which resume reconciles).
        """
        ops = op_state(job.task.task_key, self.run_id, job.state, new, detail=detail,
                       now=self.wall(), **cols)
        self.writer.queue((extra or []) + ops)
        job.state = new

    def _request(self, job: Job, resolved: dict[str, str]) -> dict[str, Any]:
        req = dict(job.task.request)
        if resolved:
            req["inputs"] = {**req.get("inputs", {}), **resolved}
        req["taskUUID"] = job.uuid
        return req

    async def _run_job(self, job: Job) -> Decimal | None:
        t = job.task
        recorded = self._recorded.get(t.task_key)
        if recorded and all(isinstance(i.get("imageURL"), str) for i in recorded):
            try:
                return await self._finish(job, recorded)
            except GiveUp:
                pass  # the URLs expired or fail: ask the server again below
        if job.state in st.IN_DOUBT_STATES and not job.precommitted:
            items = await self._reconcile(job)
            if items is not None:
                return await self._finish(job, items)
        resolved = {name: await self.inputs.resolve(img) for name, img in t.local_inputs.items()}
        while True:
            items = await self._send_until_accepted(job, resolved)
            if items is None:
                items = await self.replies.poll(job)
            if items is not None:
                return await self._finish(job, items)
            # The provider failed this generation: a fresh UUID, recorded before it is sent.
            await self._new_generation(job)

    async def _new_generation(self, job: Job) -> None:
        if job.sends >= self.execution.max_attempts:
            raise GiveUp("failed", "attemptsExhausted", "provider kept failing the task")
        job.generation += 1
        job.uuid = runware.task_uuid(job.task.task_key, job.generation)
        job.ambiguous = False
        job.blocked, job.blocked_code = 0, None
        job.results.clear()
        await self._set_state(job, "planned", detail=f"generation {job.generation}",
                              extra=[op_new_uuid(job.task.task_key, self.run_id, job.uuid,
                                                 job.generation, self.wall())],
                              generation=job.generation, task_uuid=job.uuid)

    async def _retry_wait(self, job: Job, retry: int, retry_after: float | None = None) -> None:
        if not self.retry_budget.try_spend():
            raise GiveUp("in_doubt" if job.ambiguous else "failed", "retryBudgetExhausted",
                         "the run-wide retry budget is exhausted")
        self.c.retries += 1
        self.c.retrying += 1
        try:
            await self.sleep(self.backoff.delay(retry, self.rng, retry_after))
        finally:
            self.c.retrying -= 1

    async def _send_until_accepted(self, job: Job, resolved: dict[str, str]
                                   ) -> list[dict[str, Any]] | None:
        """Send (same UUID on every retry) until results, an acknowledgement or a final error.

        Returns result items, or None once the task is accepted (poll it next). A provider
        failure moves to a fresh, recorded UUID and sends again.
        """
        t = job.task
        timeout = self.execution.request_timeout_s
        tries = 0
        retry_after: float | None = None
        while True:
            if tries:
                if job.sends >= self.execution.max_attempts:
                    raise GiveUp("in_doubt" if job.ambiguous else "failed", "attemptsExhausted",
                                 f"no answer after {job.sends} sends")
                await self._retry_wait(job, tries - 1, retry_after)
            tries += 1
            if job.state != "sending":
                # The UUID about to be sent is durable before the request leaves (the plan's
                # own UUID, generation 0, was recorded with the plan).
                planned = job.generation == 0 and job.uuid == t.task_uuid
                await self._set_state(job, "sending", attempts=job.sends + 1,
                                      task_uuid=job.uuid, generation=job.generation,
                                      extra=None if planned else [
                                          op_new_uuid(t.task_key, self.run_id, job.uuid,
                                                      job.generation, self.wall())])
            job.sends += 1
            self.c.sends += 1
            if tries == 1:
                self.retry_budget.on_send()
            started = self.wall()
            retry_after = None
            try:
                reply = await self.client.send([self._request(job, resolved)], timeout)
            except Fault as f:
                job.ambiguous = job.ambiguous or f.ambiguous
                retry_after = f.retry_after
                if f.status in OVERLOAD_STATUS or f.code == "timeout":
                    self.limit.on_overload()
                self.writer.queue([op_attempt(t.task_key, self.run_id, job.uuid, "send",
                                              started, self.wall(), f.status, "fault", f.code,
                                              str(f))])
                continue
            outcome = self.replies.classify(job, reply)
            self.writer.queue([op_attempt(t.task_key, self.run_id, job.uuid, "send", started,
                                          self.wall(), reply.status, outcome[0], outcome[1],
                                          outcome[2])])
            kind = outcome[0]
            if kind == "results":
                return self.replies.take_items(job, reply)
            if kind in ("accepted", "conflict"):
                self._queue_state(job, "accepted", detail=kind)  # polling needs no record
                return None
            if kind == "retry":
                continue
            if kind == "new_uuid":
                await self._new_generation(job)
                tries = 0
                continue
            if kind == "stop":
                raise StopRun(f"the API refused the run: {outcome[1]} ({outcome[2]})")
            stale = self.inputs.forget_reused(t, resolved)
            if stale and (outcome[1] or "").startswith(("invalidSeed", "invalidMask", "invalidImage")):
                # An upload recorded by an earlier run is gone on the server: upload it again.
                resolved.update({n: await self.inputs.resolve(i)
                                 for n, i in t.local_inputs.items()})
                await self._new_generation(job)
                tries = 0
                continue
            raise GiveUp("failed", outcome[1] or "error", outcome[2] or "")

    async def _reconcile(self, job: Job) -> list[dict[str, Any]] | None:
        """A task left in doubt by an earlier run: fetch what the server has before re-sending.

        Returns the results if the server has them; otherwise None (the caller re-sends the
        same UUID, which the server answers with conflictTaskUUID if it already has it).
        """
        answer = await self.replies.get_response(job)
        if answer is not None:
            reply, kind, code, msg = answer
            if kind == "results":
                found = self.replies.take_items(job, reply)
                if found is not None:
                    return found
                return await self.replies.poll(job)
            if any(i.get("status") == "processing" for i in items_for(reply.envelope, job.uuid)):
                return await self.replies.poll(job)
            if kind == "new_uuid":
                await self._new_generation(job)
                return None
            if kind == "stop":
                raise StopRun(f"the API refused the run: {code} ({msg})")
        return await self.replies.details(job)

    async def _finish(self, job: Job, items: list[dict[str, Any]]) -> Decimal | None:
        """Record the results, fetch every output, then write the files and mark it done.

        The result rows are queued at once (committed while the downloads run, and always in
        a transaction no later than "done"); the files are written temp + fsync + rename +
        fsync(dir) and the task marked done in one group commit, which the task waits for.
        """
        t = job.task
        now = self.wall()
        if job.state != "received":
            self._queue_state(job, "received", extra=[op_result(t.task_key, i, it, now)
                                                      for i, it in enumerate(items)])
        paths = t.output_paths()
        ops: list[st.Op] = []
        files: list[st.OutputFile] = []
        for i, item in enumerate(items):
            data = await self._output_bytes(job, item)
            files.append((self.out_dir, paths[i], data))
            ops.append(op_output(t.task_key, i, paths[i], hashlib.sha256(data).hexdigest(),
                                 len(data)))
        costs = [it.get("cost") for it in items]
        cost = (sum((Decimal(str(c)) for c in costs), Decimal(0))
                if all(isinstance(c, (int, float, str)) for c in costs) else None)
        partial = f"{job.blocked} of {t.number_results} results refused" if job.blocked else None
        # Every request of this task is over: its slot goes to the next task while the files
        # and the "done" commit become durable (the budget reservation stays until then).
        self._release_slot(job)
        ops += op_state(t.task_key, self.run_id, job.state, "done", now=self.wall(),
                        cost=None if cost is None else str(cost),
                        error_code=job.blocked_code if job.blocked else None,
                        error_message=partial)
        try:
            # temp + fsync + rename + fsync(dir), then "done" in the batch's group commit
            await self.files.write(files, after=ops)
        except OSError as exc:
            raise GiveUp("received", "outputWriteFailed", "could not write an output file "
                         f"({exc.strerror or type(exc).__name__}); results recorded, resume "
                         "writes it") from None
        job.state = "done"
        return cost

    async def _output_bytes(self, job: Job, item: dict[str, Any]) -> bytes:
        cap = self.execution.max_download_bytes
        url: str | None = None
        started = 0.0
        for attempt in range(max(3, self.execution.max_attempts)):
            if attempt:
                await self.sleep(self.backoff.delay(attempt - 1, self.rng))
            try:
                inline = inline_output(item, cap)
                if inline is not None:
                    return inline
                url = item.get("imageURL")
                if not isinstance(url, str):
                    raise GiveUp("received", "noOutput", "result item carries no image")
                started = self.wall()
                data = await self.client.download(url, cap, self.execution.request_timeout_s)
                self.writer.queue([op_attempt(job.task.task_key, self.run_id, job.uuid,
                                              "download", started, self.wall(), 200, "ok")])
                return data
            except DownloadError as exc:
                last = exc  # even "too large": the result is paid for, keep it re-fetchable
                if url is not None:
                    self.writer.queue([op_attempt(
                        job.task.task_key, self.run_id, job.uuid, "download", started,
                        self.wall(), exc.status, "fault", exc.code, str(exc))])
        raise GiveUp("received", last.code, f"{last} (results recorded; resume re-fetches)")
