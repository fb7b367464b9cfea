"""Group commit of the run record's changes, and the batch loop it runs on.

`Writer` commits the ops of every concurrent task in one transaction (one fsync) so
thousands of tasks per second fit. `BatchLoop`, a queue drained in batches by one background
loop, is shared with `outputs.FileSink`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from dataclasses import dataclass
from typing import Any, Sequence

import anyio

from specrunner.errors import RecordError
from specrunner.store import APPEND_ONLY, Op, Store


@dataclass
class _Entry:
    ops: Sequence[Op]
    done: anyio.Event | None  # None: queued, nobody waits


class BatchLoop:
    """A queue drained in batches by one background loop (`run()`), flushed by `close()`.

    Subclasses turn one batch into work in `_handle` and release what they hold in `_stop`.
    """

    def __init__(self) -> None:
        self._entries: list[Any] = []
        self._wake = anyio.Event()
        self._closed = False
        self._stopped = anyio.Event()

    def _submit(self, entry: Any) -> None:
        self._entries.append(entry)
        self._wake.set()

    async def _handle(self, entries: list[Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stop(self) -> None:
        """Release what the loop holds (called once, when it ends)."""

    async def run(self) -> None:
        """The loop; returns after `close()` once everything queued has been handled."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                entries, self._entries = self._entries, []
                if entries:
                    await self._handle(entries)
                if self._closed and not self._entries:
                    return
        finally:
            self._stop()
            self._stopped.set()

    async def close(self) -> None:
        """Handle what is pending and stop the loop."""
        self._closed = True
        self._wake.set()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()


class Writer(BatchLoop):
    """Group commit of record changes: many tasks' ops in one transaction (one fsync).

    `write()` returns once the ops are durable; `queue()` adds ops without waiting: they are
    committed in the same or an earlier transaction than anything written after them (FIFO),
    so a task's queued result rows are always durable before its later "done". One
    background loop takes everything pending, runs the statements on the event loop (CPU
    only: in WAL mode nothing touches the disk before COMMIT, and doing it here spares the
    worker thread hundreds of GIL hand-overs per batch), then COMMITs in a worker thread.
    Start it with `run()` inside the run's task group; `close()` flushes and stops it.
    """

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store = store
        self._error: BaseException | None = None
        self.commits = 0

    def _check(self) -> None:
        if self._error is not None:
            raise RecordError(f"the run record could not be written: {self._error}")

    def queue(self, ops: Sequence[Op]) -> None:
        """Add `ops` to the next commit without waiting for it."""
        self._check()
        self._submit(_Entry(ops, None))

    async def write(self, ops: Sequence[Op]) -> None:
        """Commit `ops` (and everything queued before them); return once durable.
        RecordError if the record could not be written."""
        self._check()
        entry = _Entry(ops, anyio.Event())
        self._submit(entry)
        assert entry.done is not None
        try:
            await entry.done.wait()
        except BaseException:  # cancelled: still wait until the ops are committed, then go
            with anyio.CancelScope(shield=True):
                await entry.done.wait()
            raise
        self._check()

    def _fill(self, entries: list[_Entry]) -> bool:
        """Event loop: BEGIN and run every op (appends batched); False if nothing to write."""
        if not any(e.ops for e in entries):
            return False
        cur = self.store.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        appends: dict[str, list[Sequence[Any]]] = {}
        try:
            for e in entries:
                for sql, params in e.ops:
                    if sql in APPEND_ONLY:
                        appends.setdefault(sql, []).append(params)
                    else:
                        cur.execute(sql, params)
            for sql, rows in appends.items():
                cur.executemany(sql, rows)
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return True

    def _commit(self) -> None:
        try:
            self.store.conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.store.conn.execute("ROLLBACK")
            raise

    async def _handle(self, entries: list[_Entry]) -> None:
        """Commit one batch; waiters are released even when the commit failed."""
        if self._error is None:
            try:
                with anyio.CancelScope(shield=True):
                    if self._fill(entries):
                        await anyio.to_thread.run_sync(self._commit)
                        self.commits += 1
            except Exception as exc:  # keep the loop alive; writers see the error
                self._error = exc
        for e in entries:
            if e.done is not None:
                e.done.set()
