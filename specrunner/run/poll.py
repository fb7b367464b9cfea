"""getResponse for every task waiting on its results, many in one request, paced by the
processing time the run observes.

Runware answers an async imageInference with an acknowledgement; the results come from
getResponse, and one POST may carry the getResponse tasks of many UUIDs. A task waiting for
its results asks the poller (`await poller.ask(...)`); the poller gathers every task that is
due into one request (at most BATCH tasks per POST, at most POSTS_PER_S POSTs a second) and
hands each task the reply.

When a task is due. A slot idle after the edit is done costs far more than a poll (polls of
many tasks share one POST), so the pacing errs early:
- First question: at 95% of the shortest processing time observed (of the last _KEEP), half
  of it while fewer than _FEW were observed (the price probe's one edit may be a long one),
  or after half a second before any was observed. Not a typical time: a task its first
  question finds done counts as taking until that question (all the run knows), so first
  questions planned from a typical time find every shorter edit late and then learn their
  own lateness (measured with 5-15 s edits: the probe took 13 s, the first wave's edits
  done at 5 s were found at 12 s, and later waves stalled the same way: makespan 1.26x).
- Then at a steady short step: a twentieth of the expected time (0.1 s to poll_interval_s),
  or half a second before any was observed; past twice the expected time (or 10 s with
  nothing observed) the step grows x1.5 up to poll_max_interval_s.
- How often a POST leaves: at most every twentieth of the mean processing time (a finished
  edit then waits a fortieth of it on average), and where many tasks wait, no more often
  than half a POST per task expected to complete (mean processing time / (0.5 x tasks
  waiting)); never more than POSTS_PER_S a second. Each POST carries every task due
  before the next may leave: asking a fraction of a second early costs nothing, while
  tasks acknowledged at scattered moments with edits of uneven length (5-15 s) otherwise
  made nearly every question its own POST (6.5 POSTs per task at concurrency 16).
- What is observed: a task's processing time lies between the last answer that said it was
  still running and the answer with its results; the midpoint counts (the upper bound alone
  when the first question already found it done). Growing steps as in the official clients
  (x1.5 from 1 s) would find a 10 s edit at 14 s, and a run that learned "14 s" would idle
  every slot 4 s per wave (measured: makespan 1.43x the ideal).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel

from specrunner.run import context
from specrunner.run.client import Fault, Reply, RunwareClient

if TYPE_CHECKING:
    from specrunner.run.context import Counters
    from specrunner.spec.types import Execution

BATCH = 100  # getResponse tasks per POST
POSTS_PER_S = 20.0  # at most this many poll POSTs a second, whatever the concurrency
POSTS_PER_COMPLETION = 0.5  # poll POSTs per completed task, where many tasks wait
_KEEP = 200  # completions remembered to estimate the processing time
_FEW = 8  # fewer processing times observed than this: a first question at half the shortest
_MIN_STEP = 0.1  # the shortest wait between two questions about one task
# Before any processing time was observed (the price probe runs alone): every half second for
# 10 s, then growing. A 2 s edit is found by 2.5 s, not 3 s; a minute-long one costs its
# probe ~30 polls in all.
_UNKNOWN_STEP, _UNKNOWN_PATIENCE = 0.5, 10.0


@dataclass
class _Question:
    uuid: str
    due: float
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Reply | Fault | None = None
    sent_at: float = 0.0  # wall clock, when its POST left


class Poller:
    """Batches and paces getResponse (see the module docstring); `serve()` in the run's task
    group, `close()` when the run ends."""

    def __init__(self, client: RunwareClient, execution: Execution, counters: Counters, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.client, self.execution, self.counters = client, execution, counters
        self.clock, self.wall = clock, wall
        self._waiting: list[_Question] = []
        self._wake = anyio.Event()
        self._closed = False
        self._observed: list[float] = []
        self._last_post = -math.inf
        self.posts = 0

    # -- pacing ------------------------------------------------------------------------------
    def observe(self, running_until: float | None, done_by: float) -> None:
        """A task's processing time: still running `running_until` seconds after its
        acknowledgement (None: not seen running), done by `done_by`."""
        seconds = done_by if running_until is None else (running_until + done_by) / 2
        self._observed.append(seconds)
        if len(self._observed) > _KEEP:
            del self._observed[0]

    def spacing(self, waiting: int) -> float:
        """The least time between two POSTs while `waiting` tasks wait for their results
        (see the module docstring)."""
        floor = 1 / POSTS_PER_S
        if not self._observed or waiting <= 0:
            return floor
        mean = sum(self._observed) / len(self._observed)
        return max(floor, min(mean / 20, mean / (POSTS_PER_COMPLETION * waiting)))

    def expected(self) -> float | None:
        """The processing time to plan for: the 25th percentile of those observed."""
        if not self._observed:
            return None
        ordered = sorted(self._observed)
        return ordered[len(ordered) // 4]

    def first_wait(self) -> float:
        """How long after its acknowledgement a task is first asked about."""
        if not self._observed:
            return _UNKNOWN_STEP
        shortest = min(self._observed)
        return (0.5 if len(self._observed) < _FEW else 0.95) * shortest

    def next_wait(self, previous: float | None, waited: float) -> float:
        """How long to wait before asking again about a task still running `waited` seconds
        after its acknowledgement (`previous`: the last wait, None after the first question)."""
        expected = self.expected()
        if expected is None:  # the first tasks (the price probe): one, or a few, at a time
            step, patience = _UNKNOWN_STEP, _UNKNOWN_PATIENCE
        else:
            step = min(max(_MIN_STEP, expected / 20), self.execution.poll_interval_s)
            patience = 2 * expected
        if waited < patience or previous is None:
            return step
        return min(max(previous, step) * 1.5, self.execution.poll_max_interval_s)

    # -- asking ------------------------------------------------------------------------------
    async def ask(self, uuid: str, due: float) -> tuple[Reply, float]:
        """The reply of the getResponse POST that carried `uuid`, sent once `due` (on the
        poller's clock) has come, and when it left (wall clock); raises Fault when that POST
        failed."""
        q = _Question(uuid, due)
        self._waiting.append(q)
        self._wake.set()
        try:
            await q.done.wait()
        finally:
            if q in self._waiting:  # cancelled before its POST left: not asked any more
                self._waiting.remove(q)
        if isinstance(q.reply, Fault):
            raise q.reply
        assert q.reply is not None
        return q.reply, q.sent_at

    async def serve(self) -> None:
        """Send the due questions, batch after batch, until `close()`."""
        async with anyio.create_task_group() as tg:
            while not self._closed:
                if not self._waiting:
                    self._wake = anyio.Event()
                    await self._wake.wait()
                    continue
                now = self.clock()
                earliest = min(q.due for q in self._waiting)
                spacing = self.spacing(len(self._waiting))
                start = max(earliest, self._last_post + spacing)
                if start > now and not context.testing():
                    self._wake = anyio.Event()
                    with anyio.move_on_after(start - now):
                        await self._wake.wait()  # or a question due sooner came in
                    continue
                cut = now + spacing  # due before the next POST may leave: ask them now
                due = sorted((q for q in self._waiting if q.due <= cut or context.testing()),
                             key=lambda q: q.due)[:BATCH]
                for q in due:
                    self._waiting.remove(q)
                self._last_post = now
                tg.start_soon(self._post, due)
                await anyio.lowlevel.checkpoint()  # let the batch leave before gathering the next
            tg.cancel_scope.cancel()

    def close(self) -> None:
        """Stop serving (the run is over: nobody is waiting any more)."""
        self._closed = True
        self._wake.set()

    async def _post(self, questions: list[_Question]) -> None:
        self.posts += 1
        self.counters.polls += 1
        body = [{"taskType": "getResponse", "taskUUID": q.uuid} for q in questions]
        sent = self.wall()
        for q in questions:
            q.sent_at = sent
        try:
            result: Reply | Fault = await self.client.send(body, self.execution.request_timeout_s)
        except Fault as f:
            result = f
        for q in questions:
            q.reply = result
            q.done.set()
