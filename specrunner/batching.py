"""Group commit of the run record's changes, and the batch loop it runs on.

`Writer` commits the ops of every concurrent task in one transaction (one fsync), in the
record helper process, so thousands of tasks per second fit. `BatchLoop`, a queue drained in
batches by one background loop, is shared with `outputs.FileSink`.
"""

from __future__ import annotations

import contextlib
import marshal
import struct
from dataclasses import dataclass
from typing import Any, Sequence

import anyio

from specrunner.errors import RecordError
from specrunner.helper_process import HelperGone, HelperProcess, in_process
from specrunner.store import APPEND_ONLY, Op, Store


@dataclass
class _Entry:
    ops: Sequence[Op]
    done: anyio.Event | None  # None: queued, nobody waits


HELPER_READY_S = 30.0  # a helper not started by then is given up for in-process work


class BatchLoop:
    """A queue drained in batches by one background loop (`run()`), flushed by `close()`.

    Subclasses turn one batch into work in `_handle`. A subclass that does its work in a
    helper process (helper_process.py) says how to start one in `_new_helper` and gets it
    from `_ready_helper()`: None means do the work in this process instead (no helper could
    start, or it exited before it was ready: nothing had been sent to it). `stop_helper()`
    retires the current one (a fresh one is started when next needed); `close()` returns
    once every retired helper has exited.
    """

    def __init__(self, *, use_helper: bool = False) -> None:
        self._entries: list[Any] = []
        self._wake = anyio.Event()
        self._closed = False
        self._stopped = anyio.Event()
        self._use_helper = use_helper
        self._helper: HelperProcess | None = None
        self._retired: list[HelperProcess] = []

    def _submit(self, entry: Any) -> None:
        if self._stopped.is_set():
            raise RuntimeError(f"{type(self).__name__} used after close()")
        self._entries.append(entry)
        self._wake.set()

    async def _handle(self, entries: list[Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _new_helper(self) -> HelperProcess:  # pragma: no cover - abstract
        raise NotImplementedError

    def start_helper(self) -> None:
        """Start the helper process now (if it is used and not running): its interpreter
        boots (~20 ms) while the caller prepares, instead of delaying the first batch."""
        if self._use_helper and self._helper is None:
            try:
                self._helper = self._new_helper()
            except OSError:
                self._use_helper = False

    async def _ready_helper(self) -> HelperProcess | None:
        """The running helper once it has said it is ready, or None: work in this process
        (also when it is not ready within HELPER_READY_S: a stuck interpreter start)."""
        self.start_helper()
        helper = self._helper
        if helper is not None and not helper.ready:
            with contextlib.suppress(HelperGone), anyio.move_on_after(HELPER_READY_S):
                await helper.wait_ready()
            if not helper.ready:  # nothing was sent to it: the work can be done here
                with contextlib.suppress(OSError):
                    helper.proc.kill()  # (one stuck starting would not see end of input)
                self.stop_helper()
                self._use_helper = False
                return None
        return helper

    async def _ask(self, helper: HelperProcess, frame: bytes) -> bytes:
        """helper.ask(frame); after any error the helper is retired, never asked again: a
        frame or an answer may be half-way."""
        try:
            return await helper.ask(frame)
        except BaseException:
            self.stop_helper()
            raise

    def stop_helper(self) -> None:
        """Retire the current helper: it exits at end of input (close() waits for that)."""
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.stop()
            self._retired.append(helper)

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
            # Every batch has been answered, so the helper has nothing left to do.
            self.stop_helper()
            self._stopped.set()

    async def close(self) -> None:
        """Handle what is pending, stop the loop and wait for its helpers to exit."""
        self._closed = True
        self._wake.set()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()
            for helper in self._retired:
                await helper.exited()  # in a worker thread: the loop goes on meanwhile


# The record helper: a tiny separate Python process (stdlib only, started with -I -S) that
# commits the run record's changes on its own connection to the record (WAL mode,
# synchronous=FULL: every COMMIT is durable when it answers). Once connected it writes "R"
# (ready). Frame in: "!I" length, then marshal of [(sql, params, many)], run in order in one
# BEGIN IMMEDIATE ... COMMIT. Frame out: "!I" length, then "" when committed, else the error
# (UTF-8; the transaction was rolled back). It reads a whole frame before it starts a
# transaction, so a runner killed in the middle of sending one leaves nothing half-done:
# the helper gets end of input and exits.
_RECORD_LIB = r"""
import sqlite3
def apply(conn, statements):
    # One durable transaction of [(sql, params, many)], in order; rolled back on any error.
    conn.execute("BEGIN IMMEDIATE")
    try:
        for sql, params, many in statements:
            if many:
                conn.executemany(sql, params)
            else:
                conn.execute(sql, params)
        conn.execute("COMMIT")
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
"""
_RECORD_MAIN = r"""
import marshal
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("PRAGMA synchronous=FULL")
write_all(b"R")  # ready
while True:
    (size,) = struct.unpack("!I", read(4))
    statements = marshal.loads(read(size))
    try:
        apply(conn, statements)
    except Exception as exc:
        answer(f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:2000])
    else:
        answer(b"")
"""
_RECORD_HELPER = _RECORD_LIB + _RECORD_MAIN

Statement = tuple[str, Any, bool]  # (sql, params, or rows of params when executemany)


class Writer(BatchLoop):
    """Group commit of record changes: many tasks' ops in one transaction (one fsync).

    `write()` returns once the ops are durable; `queue()` adds ops without waiting: they are
    committed in the same or an earlier transaction than anything written after them (FIFO),
    so a task's queued result rows are always durable before its later "done". One
    background loop takes everything pending and hands it, as one transaction, to the
    record helper process (_RECORD_HELPER) through non-blocking pipes (helper_process.py):
    the statements and the fsync run beside the event loop, on another core, and no thread
    waits for the GIL. Without a helper (it could not start, or `use_helper=False`) a worker
    thread runs the helper's own `apply` on the record's connection. Start it with
    `run()` inside the run's task group; `close()` flushes and stops it. If the helper dies
    in the middle of a commit, whether that commit landed is unknown: the writer fails like
    for any other record error, and a resume reconciles the tasks in doubt.
    """

    def __init__(self, store: Store, *, use_helper: bool = True) -> None:
        super().__init__(use_helper=use_helper)
        self.store = store
        self._error: BaseException | None = None
        self._lib: dict[str, Any] | None = None  # the helper's code in this process (fallback)
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
        await self.durable(self.submit(ops))

    def submit(self, ops: Sequence[Op]) -> _Entry:
        """Add `ops` to the next commit; `durable(entry)` waits for it (write() in two)."""
        self._check()
        entry = _Entry(ops, anyio.Event())
        self._submit(entry)
        return entry

    async def durable(self, entry: _Entry) -> None:
        """Return once `entry` (from submit) is committed; RecordError if it was not."""
        assert entry.done is not None
        try:
            await entry.done.wait()
        except BaseException:  # cancelled: still wait until the ops are committed, then go
            with anyio.CancelScope(shield=True):
                await entry.done.wait()
            raise
        self._check()

    @staticmethod
    def _statements(entries: list[_Entry]) -> list[Statement]:
        """The batch's statements in order; the pure appends (APPEND_ONLY) batched into one
        executemany per kind at the end of the transaction (same order among them)."""
        out: list[Statement] = []
        appends: dict[str, list[Sequence[Any]]] = {}
        for e in entries:
            for sql, params in e.ops:
                if sql in APPEND_ONLY:
                    appends.setdefault(sql, []).append(params)
                else:
                    out.append((sql, params, False))
        out += [(sql, rows, True) for sql, rows in appends.items()]
        return out

    def _new_helper(self) -> HelperProcess:
        # It holds the folder's lock too: after a kill, no resume before it has exited.
        return HelperProcess(_RECORD_HELPER, [str(self.store.path)], "record helper",
                             keep_fds=(self.store.lock_fd,))

    async def _apply(self, statements: list[Statement]) -> None:
        """One durable transaction of `statements`; raises if it was not (or may not be)."""
        helper = await self._ready_helper()
        if helper is None:  # the helper's own code, on the record's connection, in a thread
            if self._lib is None:
                self._lib = in_process(_RECORD_LIB, "record helper")
            await anyio.to_thread.run_sync(self._lib["apply"], self.store.conn, statements)
            return
        payload = marshal.dumps(statements)
        answer = await self._ask(helper, struct.pack("!I", len(payload)) + payload)
        error = answer.decode("utf-8", "replace")
        if error:
            raise RecordError(error)

    async def _handle(self, entries: list[_Entry]) -> None:
        """Commit one batch; waiters are released even when the commit failed."""
        if self._error is None:
            try:
                with anyio.CancelScope(shield=True):
                    statements = self._statements(entries)
                    if statements:
                        await self._apply(statements)
                        self.commits += 1
            except Exception as exc:  # keep the loop alive; writers see the error
                self._error = exc
        for e in entries:
            if e.done is not None:
                e.done.set()
