"""Durable output files, placed by temp file + fsync + rename + fsync(dir).

`FileSink` does it in batches in a helper process, then commits each batch's record changes
through a `batching.Writer`; `write_atomic` does it for one file in the calling thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import anyio

from specrunner.batching import BatchLoop, Writer
from specrunner.store import Op

OutputFile = tuple[Path, str, bytes]  # (output folder, path relative to it, bytes)


@dataclass
class _FileEntry:
    files: list[tuple[bytes, bytes]]  # (absolute target path, bytes)
    done: anyio.Event
    after: Sequence[Op] = ()  # committed once every file of the entry is in place
    error: BaseException | None = None


# The file helper: a tiny separate Python process (stdlib only, started with -I -S) that makes
# output files durable: per file mkdir -p (fsyncing the parent of every folder it creates) and
# write a temporary file beside the target; then fsync every one (8 threads), close it and
# rename it into place; then fsync each folder once per batch; then answer one status per
# file. Why a process and not a thread:
# every os.* call releases and retakes the GIL, and a worker thread doing ~5 syscalls per file
# while the event loop is busy costs the loop about 0.3 ms per file in GIL hand-overs
# (measured, bench/README.md ## run); the helper costs the loop one pipe write and one read
# per batch. It ignores SIGINT (Ctrl-C is the runner's to handle) and exits at end of input,
# so a killed runner leaves no helper behind.
# Frame in: "!I" file count, then per file "!II" path length, data length, path, data.
# Frame out: per file "!iH" errno (0 = in place), message length, message (UTF-8).
_HELPER = r"""
import os, signal, struct, sys
from concurrent.futures import ThreadPoolExecutor
signal.signal(signal.SIGINT, signal.SIG_IGN)
rd, wr = sys.stdin.fileno(), sys.stdout.fileno()
pid = str(os.getpid()).encode()
known = set()
pool = ThreadPoolExecutor(8)
def read(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(rd, n - len(buf))
        if not chunk:
            raise SystemExit(0)
        buf += chunk
    return bytes(buf)
def fsync_dir(d):
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
def mkdirs(d):
    if d in known or not d:
        return
    if not os.path.isdir(d):
        parent = os.path.dirname(d)
        mkdirs(parent)
        try:
            os.mkdir(d)
        except FileExistsError:
            pass
        fsync_dir(parent)
    known.add(d)
def stage(target, data):
    d, name = os.path.split(target)
    mkdirs(d)
    tmp = os.path.join(d, b"." + name + b"." + pid + b".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, tmp
def fail(exc):
    return (exc.errno or 5, (exc.strerror or type(exc).__name__).encode())
while True:
    (count,) = struct.unpack("!I", read(4))
    status, staged, order = {}, [], []
    for _ in range(count):
        plen, dlen = struct.unpack("!II", read(8))
        target, data = read(plen), read(dlen)
        order.append(target)
        try:
            staged.append((target,) + stage(target, data))
        except OSError as exc:
            status[target] = fail(exc)
    # Every temporary file written first, then fsynced concurrently (the journal commits
    # them together: ~3x faster than one after the other), then each one closed and
    # renamed into place, then each folder fsynced once.
    futures = [pool.submit(os.fsync, fd) for _, fd, _ in staged]
    dirs = {}
    for (target, fd, tmp), fut in zip(staged, futures):
        try:
            try:
                fut.result()
            finally:
                os.close(fd)
            os.replace(tmp, target)
            status[target] = (0, b"")
            dirs.setdefault(os.path.dirname(target), []).append(target)
        except OSError as exc:
            status[target] = fail(exc)
            try:
                os.unlink(tmp)
            except OSError:
                pass
    for d, targets in dirs.items():
        try:
            fsync_dir(d)
        except OSError as exc:
            for t in targets:
                status[t] = fail(exc)
    out = bytearray()
    for t in order:
        code, msg = status[t]
        msg = msg[:1000]
        out += struct.pack("!iH", code, len(msg)) + msg
    view = memoryview(bytes(out))
    while view:
        view = view[os.write(wr, view):]
"""


class _Helper:
    """The running file helper process (see _HELPER); used from one worker thread at a time."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _HELPER], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0, env={},
            start_new_session=True, close_fds=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self._buf = bytearray()

    def place(self, files: list[tuple[bytes, bytes]]) -> list[OSError | None]:
        """Send one batch; one status per file. OSError if the helper is gone."""
        parts = [struct.pack("!I", len(files))]
        for target, data in files:
            parts += [struct.pack("!II", len(target), len(data)), target, data]
        view = memoryview(b"".join(parts))
        while view:
            view = view[os.write(self._in, view):]
        out: list[OSError | None] = []
        for _ in files:
            code, size = struct.unpack("!iH", self._read(6))
            msg = self._read(size).decode("utf-8", "replace") if size else ""
            out.append(OSError(code, msg) if code else None)
        return out

    def _read(self, n: int) -> bytes:
        # Buffered: a batch's statuses arrive in one write, and every os.read is a GIL
        # hand-over with the event loop (one read per status cost the loop ~10% of a run).
        while len(self._buf) < n:
            chunk = os.read(self._out, max(65536, n - len(self._buf)))
            if not chunk:
                raise OSError(errno.EPIPE, "the output file helper process exited")
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def stop(self) -> None:
        """End of input: the helper finishes its batch and exits."""
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a helper stuck in the kernel
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            assert self.proc.stdout is not None
            self.proc.stdout.close()


class FileSink(BatchLoop):
    """Output files made durable in batches: write() returns once its files are in place.

    Every file is written under a temporary name beside its target, fsynced, closed and
    renamed into place, then each folder is fsynced once per batch (temp + fsync + rename +
    fsync(dir)) by the file helper process (see _HELPER), fed one batch at a time from one
    worker thread: the event loop does no file syscalls at all. Without a helper (it could
    not start) the worker thread does the same work itself. Runs beside `Writer`, so the
    pre-send commits of new tasks never queue behind other tasks' file fsyncs.
    """

    def __init__(self, writer: Writer | None = None, *, use_helper: bool = True) -> None:
        super().__init__()
        self.writer = writer
        self._use_helper = use_helper
        self._helper: _Helper | None = None

    async def write(self, files: Sequence[OutputFile], after: Sequence[Op] = ()) -> None:
        """Make `files` durable in place, then commit `after` through the writer (one group
        commit per batch); OSError if a file could not be written (`after` is then not
        committed; the other files of this call may already be in place: rewriting them is
        harmless), RecordError if the commit failed."""
        assert not after or self.writer is not None
        entry = _FileEntry([(os.fsencode(os.path.join(out_dir, rel)), bytes(data))
                            for out_dir, rel, data in files], anyio.Event(), after)
        self._submit(entry)
        try:
            await entry.done.wait()
        except BaseException:  # cancelled: the files and ops still land; wait for them
            with anyio.CancelScope(shield=True):
                await entry.done.wait()
            raise
        if entry.error is not None:
            raise entry.error

    def _place(self, entries: list[_FileEntry]) -> None:
        """Worker thread: place every file of the batch (helper, else in this thread)."""
        flat = [f for e in entries for f in e.files]
        statuses: list[OSError | None]
        if self._use_helper and self._helper is None:
            try:
                self._helper = _Helper()
            except OSError:
                self._use_helper = False
        if self._helper is not None:
            try:
                statuses = self._helper.place(flat)
            except OSError as exc:
                self._helper.stop()
                self._helper = None  # a fresh one for the next batch
                statuses = [exc] * len(flat)
        else:
            statuses = _place_here(flat)
        i = 0
        for e in entries:
            for _ in e.files:
                if statuses[i] is not None and e.error is None:
                    e.error = statuses[i]
                i += 1

    async def _handle(self, entries: list[_FileEntry]) -> None:
        """Place one batch's files, then commit their `after` ops in one group commit."""
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._place, entries)
                ops = [op for e in entries if e.error is None for op in e.after]
                if ops:
                    assert self.writer is not None
                    await self.writer.write(ops)
        except Exception as exc:  # the commit failed (_place catches OSError)
            for e in entries:
                e.error = e.error or exc
        for e in entries:
            e.done.set()

    def _stop(self) -> None:
        if self._helper is not None:
            self._helper.stop()
            self._helper = None


def _place_here(files: list[tuple[bytes, bytes]]) -> list[OSError | None]:
    """The helper's work in this thread (fallback): temp + fsync + rename, then each folder."""
    out: list[OSError | None] = []
    dirs: dict[Path, list[int]] = {}
    for i, (target, data) in enumerate(files):
        try:
            staged = _Staged.write(Path(os.fsdecode(target)), data)
            staged.place()
            dirs.setdefault(staged.target.parent, []).append(i)
            out.append(None)
        except OSError as exc:
            out.append(exc)
    for d, idx in dirs.items():
        try:
            _fsync_dir(d)
        except OSError as exc:
            for i in idx:
                out[i] = exc
    return out


class _Staged:
    """An output file written under a temporary name beside its target, not yet durable."""

    def __init__(self, target: Path, tmp: Path, fd: int) -> None:
        self.target, self.tmp, self.fd = target, tmp, fd

    @classmethod
    def write(cls, target: Path, data: bytes) -> _Staged:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        staged = cls(target, tmp, fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            staged.discard()
            raise
        return staged

    def place(self) -> None:
        """fsync, close, rename into place (the caller fsyncs the folder); on failure the
        temporary file is removed."""
        try:
            try:
                os.fsync(self.fd)
            finally:
                os.close(self.fd)
                self.fd = -1
            os.replace(self.tmp, self.target)
        except OSError:
            self.discard()
            raise

    def discard(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def _fsync_dir(folder: Path) -> None:
    dfd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_atomic(out_dir: Path, rel_path: str, data: bytes) -> Path:
    """Write `data` to out_dir/rel_path via temp file + fsync + rename + fsync(dir)."""
    staged = _Staged.write(Path(out_dir) / rel_path, data)
    staged.place()
    _fsync_dir(staged.target.parent)
    return staged.target
