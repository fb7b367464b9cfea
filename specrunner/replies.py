"""One job's replies: what each means, and polling the server until its results are in."""

from __future__ import annotations

from typing import Any, Callable

from specrunner import runware
from specrunner.adaptive import AdaptiveLimit
from specrunner.batching import Writer
from specrunner.spec.types import Execution
from specrunner.client import (OVERLOAD_STATUS, DownloadError, Fault, Reply, RunwareClient, Sleep,
                               category, errors_for, items_for)
from specrunner.run_types import Counters, GiveUp, Job, refused
from specrunner.runware import Category
from specrunner.store import op_attempt


class Replies:
    """Reads a job's replies (kind, result items) and asks again (getResponse, getTaskDetails).

    classify() also feeds the adaptive limit; every request made here is recorded as an attempt.
    """

    def __init__(self, *, client: RunwareClient, writer: Writer, execution: Execution,
                 limit: AdaptiveLimit, counters: Counters, sleep: Sleep,
                 wall: Callable[[], float], run_id: int) -> None:
        self.client, self.writer, self.execution = client, writer, execution
        self.limit, self.c = limit, counters
        self.sleep, self.wall, self.run_id = sleep, wall, run_id

    def classify(self, job: Job, reply: Reply) -> tuple[str, str | None, str | None]:
        """(kind, error code, message) of a reply to imageInference or getResponse."""
        env = reply.envelope
        errs = errors_for(env, job.uuid)
        blocked = [e for e in errs if category(e, reply.status) == Category.SAFETY]
        if blocked and len(blocked) == len(errs) and len(blocked) < job.task.number_results:
            # Some results were refused by the content policy; the others are paid for: keep them.
            job.blocked = len(blocked)
            job.blocked_code = str(blocked[0].get("code") or "contentPolicyViolation")
            items = items_for(env, job.uuid)
            return ("results" if any(self._is_result(i) for i in items) else "accepted"), \
                None, None
        if errs:
            err = errs[0]
            code, msg = err.get("code"), str(err.get("message", ""))[:300]
            cat = category(err, reply.status)
            code = str(code) if code else cat.value
            if cat == Category.CONFLICT:
                return "conflict", code, msg
            if cat in runware.STOP_RUN:
                return "stop", code, msg
            if cat in runware.RETRY_NEW_UUID:
                return "new_uuid", code, msg
            if cat in runware.RETRY_SAME_UUID:
                job.ambiguous = job.ambiguous or cat != Category.RATE_LIMIT
                if reply.status in OVERLOAD_STATUS or cat == Category.RATE_LIMIT:
                    self.limit.on_overload()
                return "retry", code, msg
            return "final", code, msg
        self.limit.on_success(reply.latency)
        items = items_for(env, job.uuid)
        if any(self._is_result(i) for i in items):
            return "results", None, None
        return "accepted", None, None

    @staticmethod
    def _is_result(item: dict[str, Any]) -> bool:
        return isinstance(item.get("imageUUID"), str) and item.get("status") != "processing"

    def take_items(self, job: Job, reply: Reply) -> list[dict[str, Any]] | None:
        """Keep `reply`'s result items; every result of `job` once all are in, else None."""
        for item in items_for(reply.envelope, job.uuid):
            if self._is_result(item):
                job.results.setdefault(item["imageUUID"], item)
        return self._complete(job)

    @staticmethod
    def _complete(job: Job) -> list[dict[str, Any]] | None:
        want = job.task.number_results - job.blocked
        if job.results and len(job.results) >= want:
            return list(job.results.values())[:want]
        return None

    async def poll(self, job: Job) -> list[dict[str, Any]] | None:
        """Poll getResponse until every result is in; None if the provider failed the UUID."""
        interval = self.execution.poll_interval_s
        empty = 0
        while True:
            found = self._complete(job)
            if found is not None:
                return found
            await self.sleep(interval)
            interval = min(interval * 1.5, self.execution.poll_max_interval_s)
            answer = await self.get_response(job)
            if answer is None:
                continue
            reply, kind, code, msg = answer
            if kind == "results":
                found = self.take_items(job, reply)
                if found is not None:
                    return found
            elif kind == "new_uuid":
                return None
            elif kind == "stop":
                raise refused(code, msg)
            elif kind == "final":
                if code in ("taskNotFound", "taskFailedOrNotFound", "taskExpired"):
                    details = await self.details(job)
                    if details is not None:
                        return details
                raise GiveUp("failed", code or "error", msg or "")
            elif kind == "accepted":
                empty += 1
                # getResponse cannot tell "unknown" from "running": ask getTaskDetails sometimes.
                if empty % 8 == 0:
                    details = await self.details(job)
                    if details is not None:
                        return details

    async def details(self, job: Job) -> list[dict[str, Any]] | None:
        """Ask getTaskDetails for results the client may have lost; None if it has none."""
        started = self.wall()
        try:
            reply = await self.client.send([{"taskType": "getTaskDetails",
                                             "taskUUID": job.uuid}],
                                           self.execution.request_timeout_s)
        except Fault as f:
            self.fault(job, "details", started, f)
            return None
        self.attempt(job, "details", started, reply.status, "ok")
        found: list[dict[str, Any]] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                if self._is_result(node) and node.get("taskUUID") in (job.uuid, None):
                    found.append({**node, "taskUUID": job.uuid})
                    return
                for v in node.values():
                    walk(v)
            elif isinstance(node, list):
                for v in node:
                    walk(v)

        walk(reply.envelope.data)
        for item in found:
            job.results.setdefault(item["imageUUID"], item)
        return self._complete(job)

    async def get_response(self, job: Job) -> tuple[Reply, str, str | None, str | None] | None:
        """One getResponse for `job`, recorded as a poll attempt; None after a transient fault."""
        self.c.polls += 1
        started = self.wall()
        try:
            reply = await self.client.send([{"taskType": "getResponse", "taskUUID": job.uuid}],
                                           self.execution.request_timeout_s)
        except Fault as f:
            self.fault(job, "poll", started, f)
            return None
        kind, code, msg = self.classify(job, reply)
        self.attempt(job, "poll", started, reply.status, kind, code, msg)
        return reply, kind, code, msg

    def attempt(self, job: Job, kind: str, started: float, status: int | None, outcome: str,
                code: str | None = None, message: str | None = None) -> None:
        """Log one request made for `job` (send, poll, details, download), ended now."""
        self.writer.queue([op_attempt(job.task.task_key, self.run_id, job.uuid, kind, started,
                                      self.wall(), status, outcome, code, message)])

    def fault(self, job: Job, kind: str, started: float, f: Fault | DownloadError) -> None:
        """Log one request of `job` that ended in a transient fault."""
        self.attempt(job, kind, started, f.status, "fault", f.code, str(f))
