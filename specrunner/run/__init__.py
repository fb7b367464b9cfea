"""Stage 3: run a Plan against Runware, another base URL, or the in-process local server.

    runner = Runner(plan, local=True)        # or api_key=..., base_url=...
    result = runner.run_sync()               # or `await runner.run()` inside anyio
    result.status, result.counters.done, result.counters.spent

The run's record (<out>/.specrunner/run.db) makes it resumable: run the same plan again and
done tasks are skipped, tasks in doubt are reconciled with the server before anything is sent
again. `drain()` stops dispatching (the tasks in flight finish); `cancel()` stops them too.
"""

from __future__ import annotations

import contextlib
import json
import platform
import random
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from specrunner import __version__, runware
from specrunner.errors import (
    EXIT_BUDGET,
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TASKS_FAILED,
    UsageError,
)
from specrunner.plan.build import Plan
from specrunner.plan.shard import Shard, shard_plan
from specrunner.plan.task import Task
from specrunner.provenance import Provenance, provenance
from specrunner.record import Record, RunMeta, open_record, record_dir, record_path
from specrunner.redact import Redactor
from specrunner.run.budget import campaign_budget, table_price_of
from specrunner.run.context import (
    STATUSES,
    Counters,
    RunOutcome,
    Sleep,
    default_sleep,
    set_testing,
)

if TYPE_CHECKING:
    import httpx

    from specrunner.local import FaultConfig, LocalServer
    from specrunner.record import Standing
    from specrunner.run.executor import Executor

__all__ = ["EXIT_CODES", "STATUSES", "Counters", "RunResult", "Runner", "check_base_url",
           "local_server",
           "set_testing"]

EXIT_CODES = {"complete": EXIT_OK, "failed": EXIT_TASKS_FAILED, "stopped": EXIT_TASKS_FAILED,
              "incomplete": EXIT_INCOMPLETE, "budget": EXIT_BUDGET,
              "interrupted": EXIT_INTERRUPTED}
LOCAL_URL = "http://local.specrunner/v1"


@dataclass(frozen=True)
class RunResult:
    """How a run ended: status (one of STATUSES), its exit code, the figures, where it is."""

    status: str
    exit_code: int
    counters: Counters
    out_dir: Path
    record: Path
    max_usd: Decimal
    message: str = ""
    provenance: Provenance | None = None  # git commit, uncommitted changes, lock, version


def check_base_url(url: str) -> str:
    """`url` if the key may travel to it: https, or http to this machine only (the local
    server), and no user:password in it. UsageError otherwise."""
    import httpx

    try:
        parts = httpx.URL(url)
    except httpx.InvalidURL:
        raise UsageError(f"base URL {url!r} is not a URL") from None
    if parts.userinfo:
        raise UsageError("the base URL carries a user name or password: credentials in a "
                         "URL leak into logs; give the key with RUNWARE_API_KEY or --key-file")
    if parts.scheme == "https" and parts.host:
        return url
    if parts.scheme == "http" and runware.is_loopback(parts.host):
        return url
    raise UsageError(f"base URL {url!r} refused: the key may travel only over https, or over "
                     "http to this machine (localhost, 127.0.0.1, ::1)")


def _single(group: BaseExceptionGroup) -> BaseException:
    """The one error of a task group's failure (a record error every worker saw once), or the
    group itself when its errors differ."""
    leaves: list[BaseException] = []
    stack: list[BaseException] = [group]
    while stack:
        e = stack.pop()
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)
        else:
            leaves.append(e)
    kinds = {type(e) for e in leaves}
    return leaves[0] if len(kinds) == 1 else group


def local_server(faults: FaultConfig | None = None,
                 state_dir: Path | None = None) -> LocalServer:
    """The built-in Runware-compatible server a `local=True` run talks to, in-process.
    With `state_dir` it keeps its uploads, tasks and ledger there across runs, as Runware
    keeps them across a campaign's runs."""
    from specrunner import local

    return local.create_app(local.LocalConfig(faults=faults or local.FaultConfig(),
                                              state_dir=state_dir))


def _plan_json(tasks: Sequence[Task]) -> str:
    """What a run records of its plan (RunMeta.plan_json): the task keys, in plan order, as
    [{"task_key": ...}, ...]. (Variant ids and estimates are in the record's tasks; UUIDs
    follow from the keys.)"""
    return json.dumps([{"task_key": t.task_key} for t in tasks])


def _refuse_other_shards(record: Record, shard: str) -> None:
    """UsageError if the folder of `record` holds runs of a shard other than `shard`, or of
    the whole plan: one folder, one slice, so `merge` can tell which folder ran what."""
    other = sorted(s or "the whole plan (runs without --shard)"
                   for s in record.shards() if s != shard)
    if other:
        held = ", ".join(f"shard {s}" if "/" in s else s for s in other)
        raise UsageError(f"the run folder {record.out_dir} holds {held}; this run is shard "
                         f"{shard}: give each shard its own --out, then join them with "
                         "`specrunner merge`")


class Runner:
    """One run of a plan: where it sends, where it writes, under what limits.

    Backend: `local=True` (the built-in server, in-process; `faults` injects failures; or
    `local=<a LocalServer>` to use that one and read its ledger afterwards), else
    `base_url` (default Runware's) with `api_key`, which travels only in the Authorization
    header. `out_dir` defaults to the spec's output.dir; `concurrency` and `max_usd` override
    the spec's. `transport` replaces the network entirely (tests). Raises UsageError for bad
    options and RecordError for a locked or damaged record, before any request.

    `shard` ("K/N") runs only that slice of `plan` (plan/shard.py), under its share of the
    budget unless `max_usd` is given; pass the whole plan: the run records it (its task keys
    say which campaign the folder belongs to, which `merge` checks) and the shard it ran. A
    folder that holds runs of another shard, or of the whole plan, refuses a shard
    (UsageError, before any request); a run of the whole plan is welcome anywhere.
    """

    def __init__(self, plan: Plan, *, out_dir: str | Path | None = None,
                 api_key: str | None = None, base_url: str | None = None,
                 local: bool | LocalServer = False,
                 faults: FaultConfig | None = None, concurrency: int | None = None,
                 max_usd: Decimal | None = None, jitter_seed: int | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Sleep = default_sleep, shard: str | None = None) -> None:
        if concurrency is not None and not 1 <= concurrency <= 1024:
            raise UsageError("concurrency must be between 1 and 1024")
        if max_usd is not None and (not max_usd.is_finite() or max_usd <= 0):
            raise UsageError("max_usd must be a positive number")
        self.shard = None if shard is None else Shard.parse(shard)
        part = plan if self.shard is None else shard_plan(plan, self.shard, max_usd)
        spec = part.spec.with_limits(max_usd=None if self.shard else max_usd,
                                     concurrency=concurrency)
        if faults is not None and not local:
            raise UsageError("faults only apply to the local server (local=True)")
        if not local and transport is None and not api_key:
            raise UsageError("no API key: set RUNWARE_API_KEY or pass --key-file (or use --local)")
        self.plan, self.part, self.spec = plan, part, spec
        self.out_dir = Path(out_dir).resolve() if out_dir is not None else spec.output.dir
        self.api_key = api_key or ("local" if local else None)
        if local:
            self.base_url = LOCAL_URL
        elif transport is not None:  # it decides where the bytes go: no network to check
            self.base_url = base_url or runware.API_URL
        else:
            self.base_url = check_base_url(base_url or runware.API_URL)
        self.redact = Redactor([self.api_key or ""])
        self.local, self.faults, self.transport = bool(local), faults, transport
        self._server = None if isinstance(local, bool) else local
        self.rng = random.Random(jitter_seed) if jitter_seed is not None else random.Random()
        self.sleep = sleep
        self.executor: Executor | None = None
        self._counters = Counters(total=len(part.tasks), limit=spec.execution.concurrency)

    @property
    def counters(self) -> Counters:
        """The run's live figures (what the progress line shows)."""
        return self.executor.counters if self.executor is not None else self._counters

    def drain(self) -> None:
        """Stop dispatching; the tasks in flight finish."""
        if self.executor is not None:
            self.executor.drain()

    def cancel(self) -> None:
        """Stop the tasks in flight too; they stay in doubt and the next run reconciles them."""
        if self.executor is not None:
            self.executor.cancel()

    def run_sync(self) -> RunResult:
        """`run()` in a fresh event loop."""
        return anyio.run(self.run)

    async def run(self) -> RunResult:
        """Record the run and its plan, send every task not done yet, record how it ended.
        Raises RecordError if the record cannot be opened or written."""
        try:
            return await self._run()
        except BaseExceptionGroup as group:
            raise _single(group) from None

    async def _run(self) -> RunResult:
        spec, tasks = self.spec, list(self.part.tasks)
        record = open_record(self.out_dir)
        try:
            if self.shard is not None:
                _refuse_other_shards(record, str(self.shard))
            shared = {id(t.local_inputs): t.local_inputs for t in tasks}  # a few, shared
            where = provenance(spec.path, {img.path for local in shared.values()
                                           for img in local.values()})
            run_id = record.begin_run(RunMeta(
                spec_path=str(spec.path), spec_text=spec.path.read_text(encoding="utf-8"),
                spec_sha256=spec.source_sha256, plan_json=_plan_json(self.plan.tasks),
                max_usd=spec.budget.max_usd, git_commit=where.commit, git_dirty=where.dirty,
                lock_sha256=where.lock_sha256, provenance=where.to_json(),
                shard=None if self.shard is None else str(self.shard),
                versions={"specrunner": __version__, "python": platform.python_version(),
                          "sqlite": sqlite3.sqlite_version}))
            record.plan(run_id, tasks)
            standing = record.standing()
            if any(t.task_key in standing.open for t in tasks):
                outcome = await self._send(record, run_id, tasks, standing)
            else:  # every task is done: nothing to send, so no client, server or executor
                outcome = self._finished(record, tasks, standing)
            code = EXIT_CODES[outcome.status]
            c = outcome.counters
            record.end_run(run_id, outcome.status, code, c.spent,
                           price={"table": str(c.table_price), "learned": str(c.price),
                                  "source": c.price_source})
        finally:
            record.close()
        return RunResult(outcome.status, code, outcome.counters, self.out_dir,
                         record_path(self.out_dir), spec.budget.max_usd, outcome.message, where)

    async def _send(self, record: Record, run_id: int, tasks: list[Task],
                    standing: Standing) -> RunOutcome:
        """Run the Executor over `tasks` (some not done) against the run's backend."""
        import httpx

        from specrunner.run.client import RunwareClient
        from specrunner.run.executor import Executor

        spec = self.spec
        conc = spec.execution.concurrency
        # Requests of the tasks in flight, as many downloads, and the poller's batches.
        pool = 2 * conc + 8
        limits = httpx.Limits(max_connections=pool, max_keepalive_connections=pool)
        transport, server = self._transport(limits)
        async with contextlib.AsyncExitStack() as stack:
            if server is not None:  # ours: released (its state journal) when the run ends
                stack.callback(server.close)
            http = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, limits=limits))
            client = RunwareClient(http, self.base_url, self.api_key)
            self.executor = Executor(tasks, record, client, spec.execution,
                                     spec.budget.max_usd, run_id,
                                     price=spec.prices.get(spec.model), sleep=self.sleep,
                                     rng=self.rng, wall=time.time, redact=self.redact,
                                     standing=standing)
            return await self.executor.run()

    def _finished(self, record: Record, tasks: list[Task], standing: Standing) -> RunOutcome:
        """How a run whose tasks are all done ends, as the Executor would end it: every
        task skipped, the campaign's spend and price from the record. (No backend is
        reached: the local server would replay its whole journal first.)"""
        spec = self.spec
        price = spec.prices.get(spec.model)
        budget = campaign_budget(record, standing, spec.budget.max_usd,
                                 price if price is not None else table_price_of(tasks), ())
        self._counters.skipped = len(tasks)
        self._counters.follow(budget)
        return RunOutcome("complete", self._counters)

    def _transport(self, limits: httpx.Limits
                   ) -> tuple[httpx.AsyncBaseTransport, LocalServer | None]:
        """How the run reaches its backend, and the local server it started (to close)."""
        import httpx

        if self.transport is not None:
            return self.transport, None
        if self.local:
            if self._server is not None:
                return httpx.ASGITransport(app=self._server), None
            # Beside the record: a rerun finds its uploads and tasks, as it would on Runware.
            mine = local_server(self.faults, record_dir(self.out_dir) / "local-server")
            return httpx.ASGITransport(app=mine), mine
        from specrunner.run.client import PooledTransport

        # (A client's `limits` apply only to a transport it makes itself: the pools are
        # sized here. At httpx's default of 100 connections a run at concurrency 256 waited
        # for connections.)
        return PooledTransport(limits.max_connections or 100), None
