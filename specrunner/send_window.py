"""The send window: a fresh task's "sending" made durable ahead of its dispatch, in chunks."""

from __future__ import annotations

from typing import Callable

import anyio

from specrunner import store as st
from specrunner.batching import Writer
from specrunner.errors import RecordError
from specrunner.run_types import Job
from specrunner.store import op_state


class SendWindow:
    """ "sending" recorded ahead of dispatch, a chunk of fresh tasks at a time.

    A fresh task (planned, the plan's own UUID, no recorded results, no local inputs) needs
    its "sending" durable before its request leaves. Instead of one commit per dispatch batch
    on the dispatcher's path (every freed slot then idles for a commit), chunks of `size`
    fresh tasks, in dispatch order, are committed in the background: chunks k+1 and k+2
    while chunk k is being dispatched (one chunk ahead still let the dispatcher overtake
    the record 12 times in a 3,000-task run, while file fsyncs slowed the commits). The
    dispatcher waits only when it overtakes the record. A task recorded but never started
    (a crash: at most three chunks) is in doubt on resume and reconciled like any other,
    with no charge; after a clean stop (Ctrl-C, budget, a stopping error) `release()`
    moves those back to planned.
    """

    LEAD = 2  # chunks recorded ahead of the one being dispatched

    def __init__(self, todo: list[Job], size: int, tg: anyio.abc.TaskGroup, *,
                 writer: Writer, run_id: int, wall: Callable[[], float]) -> None:
        self.tg = tg
        self.writer, self.run_id, self.wall = writer, run_id, wall
        # (a planned job never has recorded results: those are received or failed tasks)
        fresh = [j for j in todo if j.state == "planned" and j.generation == 0
                 and j.uuid == j.task.task_uuid and not j.task.local_inputs]
        self.chunks = [fresh[i:i + size] for i in range(0, len(fresh), size)]
        for k, chunk in enumerate(self.chunks):
            for j in chunk:
                j.window = k
        self.done = [anyio.Event() for _ in self.chunks]
        self.errors: list[BaseException | None] = [None] * len(self.chunks)
        self.started = 0  # chunks whose commit was started

    async def ready(self, job: Job) -> None:
        """Return once `job`'s "sending" is durable (at once if it is not in the window);
        start recording the next chunk ahead. RecordError if its chunk could not be written."""
        k = job.window
        if k < 0:
            return
        while self.started <= min(k + self.LEAD, len(self.chunks) - 1):
            self.tg.start_soon(self._commit, self.started)
            self.started += 1
        if not self.done[k].is_set():
            await self.done[k].wait()
        if self.errors[k] is not None:
            raise self.errors[k]  # type: ignore[misc]

    async def _commit(self, k: int) -> None:
        now = self.wall()
        ops: list[st.Op] = []
        for j in self.chunks[k]:
            ops += op_state(j.task.task_key, self.run_id, "planned", "sending", now=now,
                            attempts=1, task_uuid=j.uuid, generation=0)
        try:
            await self.writer.write(ops)
        except RecordError as exc:
            self.errors[k] = exc
        else:
            for j in self.chunks[k]:
                j.state, j.precommitted = "sending", True
        finally:
            self.done[k].set()

    async def release(self) -> None:
        """Back to planned: every task recorded "sending" ahead whose worker never started."""
        for k in range(self.started):
            await self.done[k].wait()
        back = [j for chunk in self.chunks[:self.started] for j in chunk
                if j.precommitted and not j.started]
        if not back:
            return
        now = self.wall()
        ops: list[st.Op] = []
        for j in back:
            ops += op_state(j.task.task_key, self.run_id, "sending", "planned", now=now,
                            detail="not sent", attempts=0)
        await self.writer.write(ops)
        for j in back:
            j.state, j.precommitted = "planned", False
