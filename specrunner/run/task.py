"""One task's life in a run: reconcile what an earlier run left in doubt, send (the same UUID
on every retry), poll, move to a fresh recorded UUID when the provider fails it, and finish:
record every result, fetch the outputs, place the files and mark the task done.

Every reply is read once into an `Outcome` (`read_reply`); what the task does next is a match
on its `Kind`. The rules (which error sends the same UUID again, which mints a new one, which
stops the run, which leaves the task in doubt) are runware.ACTIONS and MAY_FOLLOW_BILLING.
Expected failures end the task with GiveUp (the state it ends in: failed, in_doubt or
received) or the whole run with StopRun; the executor records them.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from specrunner import runware
from specrunner.plan.task import Task
from specrunner.record import IN_DOUBT_STATES, Result
from specrunner.run.client import OVERLOAD_STATUS, DownloadError, Fault, Reply, inline_output
from specrunner.run.context import GiveUp, RunContext, StopRun
from specrunner.run.inputs import substitute
from specrunner.runware import Action, Category, RunnerCode

_EXT = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
_NOT_FOUND = frozenset({"taskNotFound", "taskFailedOrNotFound", "taskExpired"})
# Transport faults that say the server is overloaded (besides 429/503/504): it did not answer
# in time, or refused the connection.
_OVERLOAD_CODES = frozenset({RunnerCode.REQUEST_TIMEOUT.value, RunnerCode.CONNECT_ERROR.value,
                             RunnerCode.CONNECT_TIMEOUT.value})


class Kind(enum.Enum):
    """What a reply says about one task."""

    RESULTS = "results"  # result items for the task (maybe not all of them yet)
    PENDING = "pending"  # acknowledged, or still processing: poll it
    FETCH = "fetch"  # conflictTaskUUID: the server already has this UUID: poll it
    RETRY = "retry"  # transient: the same UUID again after a backoff
    NEW_UUID = "new_uuid"  # the provider failed this UUID (not charged): a fresh one
    STOP = "stop"  # auth or quota: the whole run stops
    FINAL = "final"  # the task failed (documented as not charged)


@dataclass(frozen=True)
class Outcome:
    """A reply read for one task: its kind, the error (if any) and the result items."""

    kind: Kind
    code: str | None = None
    message: str | None = None
    items: tuple[Mapping[str, Any], ...] = ()
    refused: int = 0  # results refused by the content policy (not charged)
    refused_code: str | None = None
    may_be_billed: bool = False  # a RETRY after which the task may have been billed
    overload: bool = False  # a 429/503/504 or a rate-limit error
    processing: bool = False  # the server says the task is still running


def _is_result(item: Mapping[str, Any]) -> bool:
    return isinstance(item.get("imageUUID"), str) and item.get("status") != "processing"


_ACTION_KIND = {Action.FINAL: Kind.FINAL, Action.FETCH: Kind.FETCH, Action.STOP: Kind.STOP,
                Action.RETRY: Kind.RETRY, Action.NEW_UUID: Kind.NEW_UUID}


def read_reply(reply: Reply, uuid: str, number_results: int) -> Outcome:
    """Read `reply` (to imageInference or getResponse) for the task sent as `uuid`."""
    env = reply.envelope
    errs = runware.errors_for(env, uuid)
    mine = runware.items_for(env, uuid)
    items = tuple(i for i in mine if _is_result(i))
    processing = any(i.get("status") == "processing" for i in mine)
    cats = [runware.category(e, reply.status) for e in errs]
    refused = [e for e, c in zip(errs, cats, strict=True) if c == Category.SAFETY]
    if refused and len(refused) == len(errs) and len(refused) < number_results:
        # Some results were refused by the content policy; the others are paid for: keep them.
        code = str(refused[0].get("code") or "contentPolicyViolation")
        return Outcome(Kind.RESULTS if items else Kind.PENDING, items=items,
                       refused=len(refused), refused_code=code, processing=processing)
    if errs:
        err, cat = errs[0], cats[0]
        code = str(err.get("code") or cat.value)
        message = str(err.get("message", ""))[:300]
        action = runware.ACTIONS[cat]
        overload = action is Action.RETRY and (reply.status in OVERLOAD_STATUS
                                               or cat is Category.RATE_LIMIT)
        return Outcome(_ACTION_KIND[action], code, message,
                       may_be_billed=cat in runware.MAY_FOLLOW_BILLING, overload=overload)
    return Outcome(Kind.RESULTS if items else Kind.PENDING, items=items, processing=processing)


@dataclass
class Job:
    """One task's progress inside this run."""

    task: Task
    state: str
    generation: int
    uuid: str
    recorded: tuple[Result, ...] = ()  # results an earlier run recorded
    sends: int = 0
    maybe_billed: bool = False  # the current UUID may have been accepted and billed
    results: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # by imageUUID
    refused: int = 0
    refused_code: str | None = None
    durable: set[str] = field(default_factory=set)  # UUIDs the record holds for this task
    accepted_at: float | None = None  # when the server acknowledged it (poller's clock)
    running_at: float | None = None  # the last answer that it was still running (same clock)
    poll_wait: float | None = None  # the last wait between two questions about it

    def __post_init__(self) -> None:
        self.durable.add(self.uuid)  # the record's current UUID for the task

    @property
    def key(self) -> str:
        return self.task.task_key

    @property
    def may_be_billed(self) -> bool:
        """Whether the server may have the current UUID (and have billed it): then the task
        ends in doubt, to be asked about, never failed (which would mint a new UUID)."""
        return self.maybe_billed or self.state in ("accepted", "received")

    def ends(self) -> str:
        """The state the task ends in when it cannot go on in this run."""
        return "in_doubt" if self.may_be_billed else "failed"

    def complete(self) -> list[Mapping[str, Any]] | None:
        """Every result item the server returned, once all that were asked for are in.
        (A server that returns more than numberResults: every one is kept and counted.)"""
        if self.results and len(self.results) + self.refused >= self.task.number_results:
            return list(self.results.values())
        return None

    def take(self, out: Outcome) -> list[Mapping[str, Any]] | None:
        """Keep `out`'s result items; `complete()` after them."""
        for item in out.items:
            self.results.setdefault(str(item["imageUUID"]), item)
        if out.refused:
            self.refused, self.refused_code = max(self.refused, out.refused), out.refused_code
        return self.complete()


class TaskRun:
    """Takes one job to done (`run()`), or raises GiveUp / StopRun.

    `release` gives the task's concurrency slot back as soon as its requests are over (its
    files are written after that); `settle(cost, images)` is told what the task cost (None:
    the answers said nothing) and how many images came back, as soon as its results are in.
    """

    def __init__(self, ctx: RunContext, job: Job, *, release: Callable[[], None],
                 settle: Callable[[Decimal | None, int], None]) -> None:
        self.ctx, self.job = ctx, job
        self.release, self.settle = release, settle
        self.ex = ctx.execution

    async def run(self) -> Decimal | None:
        """The task's life; returns its cost (None when the answers carried none)."""
        job = self.job
        if job.recorded and all(isinstance(r.url, str) for r in job.recorded):
            try:  # an earlier run has the results: fetch the files only
                return await self._finish([r.item() for r in job.recorded], recorded=True)
            except GiveUp:
                pass  # the URLs expired or fail: ask the server again below
        if job.state in IN_DOUBT_STATES:
            items = await self._reconcile()
            if items is not None:
                return await self._finish(items)
        resolved = {name: await self.ctx.inputs.resolve(img)
                    for name, img in job.task.local_inputs.items()}
        while True:
            items = await self._send(resolved)
            if items is None:
                items = await self._poll()
            if items is not None:
                return await self._finish(items)
            await self._new_generation()  # the provider failed this UUID

    # -- sending ----------------------------------------------------------------------------
    async def _send(self, resolved: dict[str, str]) -> list[Mapping[str, Any]] | None:
        """Send until results (returned), an acknowledgement (None: poll next) or a final
        error. Retries carry the same UUID; a provider failure moves to a fresh, recorded one."""
        job, ctx, c = self.job, self.ctx, self.ctx.counters
        tries = 0
        retry_after: float | None = None
        while True:
            if tries:
                if job.sends >= self.ex.max_attempts:
                    if job.may_be_billed:  # ask once more before leaving it in doubt
                        found = await self._ask()
                        if found is not None or job.state == "accepted":
                            return found
                    raise GiveUp(job.ends(), RunnerCode.ATTEMPTS_EXHAUSTED,
                                 f"no answer after {job.sends} sends")
                await self._backoff(tries - 1, retry_after)
            tries += 1
            if job.uuid not in job.durable:  # a fresh UUID is durable before it leaves
                await ctx.log.new_uuid(job.key, job.state, job.uuid, job.generation)
                job.durable.add(job.uuid)
                job.state = "planned"
            if job.state != "sending":
                ctx.log.sending(job.key, job.state, job.uuid, job.generation, job.sends + 1)
                job.state = "sending"
            job.sends += 1
            c.sends += 1
            if tries == 1:
                ctx.retry_budget.on_send()
            started = ctx.wall()
            retry_after = None
            try:
                reply = await ctx.client.send([substitute(job.task, job.uuid, resolved)],
                                              self.ex.request_timeout_s)
            except Fault as f:
                job.maybe_billed = job.maybe_billed or f.ambiguous
                retry_after = f.retry_after
                self._fault("send", started, f)
                continue
            out = read_reply(reply, job.uuid, job.task.number_results)
            self._attempt("send", started, reply, out)
            if out.kind is Kind.RESULTS:
                found = job.take(out)
                if found is not None:
                    return found
                out = Outcome(Kind.PENDING)  # some results are still processing: poll
            if out.kind in (Kind.PENDING, Kind.FETCH):
                ctx.log.accepted(job.key, job.state, out.kind.value)  # polling needs no wait
                job.state = "accepted"
                job.accepted_at = ctx.poller.clock()
                return None
            if out.kind is Kind.RETRY:
                job.maybe_billed = job.maybe_billed or out.may_be_billed
                continue
            if out.kind is Kind.NEW_UUID:
                await self._new_generation()
                tries = 0
                continue
            if out.kind is Kind.STOP:
                raise StopRun(out.code or "refused", out.message or "")
            if ctx.inputs.forget_reused(job.task, resolved) and (out.code or "").startswith(
                    ("invalidSeed", "invalidMask", "invalidImage")):
                # An upload recorded by an earlier run is gone on the server: upload it again.
                resolved.update({n: await ctx.inputs.resolve(i)
                                 for n, i in job.task.local_inputs.items()})
                await self._new_generation()
                tries = 0
                continue
            raise GiveUp("failed", out.code or "error", out.message or "")

    async def _new_generation(self) -> None:
        """The provider failed this UUID: move to the next one, durable before it is sent."""
        job = self.job
        if job.sends >= self.ex.max_attempts:
            raise GiveUp("failed", RunnerCode.ATTEMPTS_EXHAUSTED,
                         "the provider kept failing the task")
        job.generation += 1
        job.uuid = runware.task_uuid(job.key, job.generation)
        job.maybe_billed = False
        job.results.clear()
        job.refused, job.refused_code = 0, None
        await self.ctx.log.new_uuid(job.key, job.state, job.uuid, job.generation)
        job.durable.add(job.uuid)
        job.state = "planned"

    async def _backoff(self, retry: int, retry_after: float | None) -> None:
        ctx, c = self.ctx, self.ctx.counters
        if not ctx.retry_budget.try_spend():
            raise GiveUp(self.job.ends(), RunnerCode.RETRY_BUDGET_EXHAUSTED,
                         "the run-wide retry budget is exhausted")
        c.retries += 1
        c.retrying += 1
        try:
            await ctx.sleep(ctx.backoff.delay(retry, ctx.rng, retry_after))
        finally:
            c.retrying -= 1

    # -- asking ------------------------------------------------------------------------------
    async def _poll(self) -> list[Mapping[str, Any]] | None:
        """Ask (getResponse, batched and paced by the poller) until every result is in; None
        if the provider failed the UUID."""
        job, poller = self.job, self.ctx.poller
        empty = 0
        first = True
        while True:
            found = job.complete()
            if found is not None:
                return found
            now = poller.clock()
            if first and job.accepted_at is not None:
                due = job.accepted_at + poller.first_wait()
            else:
                job.poll_wait = poller.next_wait(job.poll_wait if not first else None,
                                                 now - (job.accepted_at or now))
                due = now + job.poll_wait
            first = False
            out = await self._get_response(due)
            if out is None or out.kind in (Kind.RETRY, Kind.FETCH):
                continue
            if out.kind is Kind.PENDING and out.processing:
                job.running_at = poller.clock()
            if out.kind is Kind.RESULTS:
                if job.take(out) is not None and job.accepted_at is not None:
                    start = job.accepted_at
                    poller.observe(None if job.running_at is None else job.running_at - start,
                                   poller.clock() - start)
            elif out.kind is Kind.PENDING:
                # An empty answer cannot tell "unknown" from "running" (one that says
                # "processing" can): every eighth, ask getTaskDetails, which is not batched.
                if not out.processing:
                    empty += 1
                    if empty % 8 == 0:
                        await self._details()
            elif out.kind is Kind.NEW_UUID:
                return None
            elif out.kind is Kind.STOP:
                raise StopRun(out.code or "refused", out.message or "")
            else:  # FINAL: not found (expired?) or refused
                if out.code in _NOT_FOUND and await self._details() is not None:
                    return job.complete()
                # The server had accepted this UUID: "not found" does not prove it never ran.
                raise GiveUp("in_doubt" if out.code in _NOT_FOUND else "failed",
                             out.code or "error", out.message or "")

    async def _reconcile(self) -> list[Mapping[str, Any]] | None:
        """A task an earlier run left in doubt: what does the server have for its UUID?

        Its results (returned), or None: then the caller sends the same UUID again, which the
        server answers with conflictTaskUUID if it has it (then it is polled, never paid twice).
        """
        job = self.job
        out = await self._get_response()
        if out is not None:
            if out.kind is Kind.RESULTS:
                found = job.take(out)
                return found if found is not None else await self._poll()
            if out.kind is Kind.PENDING and out.processing:
                return await self._poll()
            if out.kind is Kind.NEW_UUID:
                await self._new_generation()
                return None
            if out.kind is Kind.STOP:
                raise StopRun(out.code or "refused", out.message or "")
        return await self._details()

    async def _ask(self) -> list[Mapping[str, Any]] | None:
        """Does the server have this UUID? Its results (returned), or None; the job is left
        "accepted" when the server says it is still running (the caller polls it then)."""
        job = self.job
        out = await self._get_response()
        if out is not None:
            if out.kind is Kind.RESULTS:
                found = job.take(out)
                if found is not None:
                    return found
            if out.kind is Kind.RESULTS or (out.kind is Kind.PENDING and out.processing):
                self.ctx.log.accepted(job.key, job.state, "running")
                job.state = "accepted"
                return None
        return await self._details()

    async def _get_response(self, due: float | None = None) -> Outcome | None:
        """getResponse for the job (now, or at `due` on the poller's clock), in the poller's
        next batch; recorded as a poll. None after a transient fault."""
        job, ctx = self.job, self.ctx
        started = ctx.wall()
        try:
            reply, started = await ctx.poller.ask(job.uuid, ctx.poller.clock()
                                                  if due is None else due)
        except Fault as f:
            self._fault("poll", started, f)
            return None
        out = read_reply(reply, job.uuid, job.task.number_results)
        self._attempt("poll", started, reply, out)
        return out

    async def _details(self) -> list[Mapping[str, Any]] | None:
        """Ask getTaskDetails for results the client may have lost; complete results or None."""
        job, ctx = self.job, self.ctx
        started = ctx.wall()
        try:
            reply = await ctx.client.send([{"taskType": "getTaskDetails", "taskUUID": job.uuid}],
                                          self.ex.request_timeout_s)
        except Fault as f:
            self._fault("details", started, f)
            return None
        ctx.log.attempt(job.key, job.uuid, "details", started, reply.status, "ok")
        found: list[Mapping[str, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if _is_result(node) and node.get("taskUUID") in (job.uuid, None):
                    found.append({**node, "taskUUID": job.uuid})
                    return
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(reply.envelope.data)
        return job.take(Outcome(Kind.RESULTS, items=tuple(found)))

    def _attempt(self, kind: str, started: float, reply: Reply, out: Outcome) -> None:
        """Record the request and tell the concurrency limit how it went."""
        self.ctx.log.attempt(self.job.key, self.job.uuid, kind, started, reply.status,
                             out.kind.value, out.code, out.message)
        if out.overload:
            self.ctx.limit.on_overload(f"{out.code or reply.status}")
        elif out.kind is not Kind.RETRY:
            self.ctx.limit.on_success()

    def _fault(self, kind: str, started: float, f: Fault | DownloadError) -> None:
        self.ctx.log.attempt(self.job.key, self.job.uuid, kind, started, f.status, "fault",
                             f.code, str(f))
        if isinstance(f, Fault) and (f.status in OVERLOAD_STATUS or f.code in _OVERLOAD_CODES):
            self.ctx.limit.on_overload(f.code)

    # -- finishing ---------------------------------------------------------------------------
    async def _finish(self, items: Sequence[Mapping[str, Any]], *,
                      recorded: bool = False) -> Decimal | None:
        """Record the results, fetch every output, then place the files and mark it done.

        The result rows are queued at once (committed while the downloads run, and always no
        later than "done"); the files are placed and the task marked done in one commit.
        """
        job, ctx = self.job, self.ctx
        if not recorded:
            ctx.log.results(job.key, job.state, items)
            job.state = "received"
        costs = [it.get("cost") for it in items]
        cost = (sum((Decimal(str(c)) for c in costs), Decimal(0))
                if all(isinstance(c, (int, float, str)) for c in costs) else None)
        self.settle(cost, len(items))  # what it cost counts before anything else is sent
        self.release()  # the API's part is over: the slot goes to the next task
        files: list[tuple[str, bytes, str]] = []
        async with ctx.downloads:  # as many downloads at once as tasks in flight, no more
            for i, item in enumerate(items):
                data, fmt = await self._output(item)
                files.append((self._path(i, fmt), data, hashlib.sha256(data).hexdigest()))
        partial = (f"{job.refused} of {job.task.number_results} results refused"
                   if job.refused else None)
        try:
            await ctx.log.done(job.key, job.state, files, cost,
                               job.refused_code if job.refused else None, partial)
        except OSError as exc:
            raise GiveUp("received", RunnerCode.OUTPUT_WRITE_FAILED,
                         f"could not write an output file ({exc.strerror or type(exc).__name__}); "
                         "results recorded, resume writes it") from None
        job.state = "done"
        return cost

    def _path(self, index: int, fmt: str) -> str:
        """Where result `index` goes: the plan's name (its extension following the bytes);
        results beyond numberResults get `-extra<k>` names."""
        t = self.job.task
        ext = _EXT.get(fmt, t.output_ext)
        if index < t.number_results:
            stem = t.output_paths()[index].rsplit(".", 1)[0]
        else:
            stem = f"{t.output_stem}-extra{index - t.number_results + 1}"
        return f"{stem}.{ext}"

    async def _output(self, item: Mapping[str, Any]) -> tuple[bytes, str]:
        """The bytes of one result (inline, or downloaded with retries) and their format."""
        ctx, job = self.ctx, self.job
        cap = self.ex.max_download_bytes
        last: DownloadError | None = None
        for attempt in range(max(3, self.ex.max_attempts)):
            if attempt:
                await ctx.sleep(ctx.backoff.delay(attempt - 1, ctx.rng))
            url: str | None = None
            started = ctx.wall()
            try:
                inline = inline_output(dict(item), cap)
                if inline is not None:
                    return inline
                url = item.get("imageURL")
                if not isinstance(url, str):
                    raise GiveUp("received", RunnerCode.NO_OUTPUT, "result item carries no image")
                got = await ctx.client.download(url, cap, self.ex.request_timeout_s)
                ctx.log.attempt(job.key, job.uuid, "download", started, 200, "ok")
                return got
            except DownloadError as exc:
                last = exc  # even "too large": the result is paid for, keep it re-fetchable
                if url is not None:
                    self._fault("download", started, exc)
        assert last is not None
        raise GiveUp("received", last.code, f"{last} (results recorded; resume re-fetches)")
