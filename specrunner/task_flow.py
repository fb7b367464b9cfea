"""One task's way through a run: reconcile what an earlier run left in doubt, send (same UUID
on every retry), poll, move to a fresh recorded UUID when the provider fails it, and finish:
record the results, fetch the outputs, write the files and mark the task done.
"""

from __future__ import annotations

import hashlib
import random
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from specrunner import store as st
from specrunner.adaptive import AdaptiveLimit
from specrunner.batching import Writer
from specrunner.spec.types import Execution
from specrunner.client import (OVERLOAD_STATUS, Backoff, DownloadError, Fault, RetryBudget,
                               RunwareClient, Sleep, inline_output, items_for)
from specrunner.inputs import Inputs
from specrunner.outputs import FileSink, OutputFile
from specrunner.replies import Replies
from specrunner.run_types import Counters, GiveUp, Job, refused
from specrunner.store import op_new_uuid, op_output, op_result, op_state


class TaskFlow:
    """The per-task protocol over the run's shared services; `run_job` takes one task to done.

    Expected failures raise GiveUp (the task ends in the state it names) or StopRun (the
    whole run stops), which the caller records. `release_slot` gives the task's concurrency
    slot back as soon as its requests are over.
    """

    def __init__(self, *, client: RunwareClient, writer: Writer, files: FileSink,
                 limit: AdaptiveLimit, retry_budget: RetryBudget, counters: Counters,
                 execution: Execution, run_id: int, out_dir: Path, inputs: Inputs,
                 recorded: dict[str, list[dict[str, Any]]],
                 release_slot: Callable[[Job], None], sleep: Sleep, rng: random.Random,
                 wall: Callable[[], float], backoff: Backoff) -> None:
        self.client, self.writer, self.files = client, writer, files
        self.limit, self.retry_budget, self.c = limit, retry_budget, counters
        self.execution, self.run_id, self.out_dir = execution, run_id, out_dir
        self.inputs, self._recorded, self._release_slot = inputs, recorded, release_slot
        self.sleep, self.rng, self.wall, self.backoff = sleep, rng, wall, backoff
        self.replies = Replies(client=client, writer=writer, execution=execution, limit=limit,
                               counters=counters, sleep=sleep, wall=wall, run_id=run_id)

    def _state_ops(self, job: Job, new: str, detail: str | None, extra: list[st.Op] | None,
                   cols: dict[str, Any]) -> list[st.Op]:
        return (extra or []) + op_state(job.task.task_key, self.run_id, job.state, new,
                                        detail=detail, now=self.wall(), **cols)

    async def set_state(self, job: Job, new: str, *, detail: str | None = None,
                        extra: list[st.Op] | None = None, **cols: Any) -> None:
        """Move `job` to `new` once the change is durable."""
        await self.writer.write(self._state_ops(job, new, detail, extra, cols))
        job.state = new

    def _queue_state(self, job: Job, new: str, *, detail: str | None = None,
                     extra: list[st.Op] | None = None, **cols: Any) -> None:
        """Move `job` to `new` without waiting: durable with (or before) its next write.

        Only for changes nothing depends on until that next write: the record may briefly
        lag (a crash leaves the task in its previous in-doubt state, which resume reconciles).
        """
        self.writer.queue(self._state_ops(job, new, detail, extra, cols))
        job.state = new

    def _request(self, job: Job, resolved: dict[str, str]) -> dict[str, Any]:
        req = dict(job.task.request)
        if resolved:
            req["inputs"] = {**req.get("inputs", {}), **resolved}
        req["taskUUID"] = job.uuid
        return req

    async def run_job(self, job: Job) -> Decimal | None:
        """Take `job` to done; its cost, or None when its results do not carry one."""
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
        job.next_generation()
        job.ambiguous = False
        job.blocked, job.blocked_code = 0, None
        job.results.clear()
        await self.set_state(job, "planned", detail=f"generation {job.generation}",
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
                await self.set_state(job, "sending", attempts=job.sends + 1,
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
                self.replies.fault(job, "send", started, f)
                continue
            outcome = self.replies.classify(job, reply)
            self.replies.attempt(job, "send", started, reply.status, *outcome)
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
                raise refused(outcome[1], outcome[2])
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
                raise refused(code, msg)
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
        files: list[OutputFile] = []
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
                self.replies.attempt(job, "download", started, 200, "ok")
                return data
            except DownloadError as exc:
                last = exc  # even "too large": the result is paid for, keep it re-fetchable
                if url is not None:
                    self.replies.fault(job, "download", started, exc)
        raise GiveUp("received", last.code, f"{last} (results recorded; resume re-fetches)")
