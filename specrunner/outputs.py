"""Durable output files, placed by temp file + fsync (or syncfs) + rename + fsync(dir).

`FileSink` does it in batches in a helper process, then commits each batch's record changes
through a `batching.Writer`; `write_atomic` does it for one file in the calling thread.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import anyio

from specrunner.batching import BatchLoop, Writer
from specrunner.errors import RecordError
from specrunner.helper_process import HelperProcess, in_process
from specrunner.store import Op

OutputFile = tuple[Path, str, bytes]  # (output folder, path relative to it, bytes)


@dataclass
class _FileEntry:
    files: list[tuple[bytes, bytes]]  # (absolute target path, bytes)
    done: anyio.Event
    after: Sequence[Op] = ()  # committed once every file of the entry is in place
    error: BaseException | None = None
    commit: Any = None  # the writer's entry for `after`, once submitted


# The file helper: a tiny separate Python process (stdlib only, started with -I -S) that makes
# output files durable: per file mkdir -p (fsyncing the parent of every folder it creates) and
# write a temporary file beside the target; then make the batch's temporary files durable;
# then close each one and rename it into place; then fsync each folder once per batch; then
# answer one status per file. Making a batch durable: on Linux >= 5.8, on a local filesystem
# whose sync is a full flush (ext2/3/4, xfs, btrfs, f2fs, tmpfs), one syncfs(2) per
# filesystem: "the same guarantees as fsync() called on every file in the filesystem"
# (syncfs(2)), and since 5.8 it reports any writeback error since the descriptor was opened,
# so an error fails every file of the batch on that filesystem. Anywhere else (another
# kernel or OS, a network, FUSE or overlay filesystem, or `batch_sync` off) one fsync per
# file, 8 at a time. On this ext4 VM the batch sync cut the helper's kernel time from 108 to
# 45 us per file, and one device flush per batch replaces one per file (bench/README.md
# ## run). Why a process and not a thread:
# every os.* call releases and retakes the GIL, and a worker thread doing ~5 syscalls per file
# while the event loop is busy costs the loop about 0.3 ms per file in GIL hand-overs
# (measured, bench/README.md ## run); the helper costs the loop one pipe write and one read
# per batch (helper_process.py). It ignores SIGINT (Ctrl-C is the runner's to handle) and
# exits at end of input: a killed runner's helper finishes the batch it was given, renames
# nothing of a batch it had not read whole (its temporary files stay), and exits.
# Argument: "batch" (syncfs where it is safe, as above) or "per-file" (always fsync).
# Once started it writes "R" (ready). Frame in: "!I" file count, then per file "!II" path
# length, data length, path, data.
# Frame out: "!I" length of the rest, then per file "!iH" errno (0 = in place), message
# length, message (UTF-8).
_HELPER_LIB = r"""
import os, struct, sys
from concurrent.futures import ThreadPoolExecutor
pid = str(os.getpid()).encode()
known = set()
pool = ThreadPoolExecutor(8)
# ext2/3/4, xfs, btrfs, f2fs, tmpfs: local filesystems whose sync_fs is a full flush
FULL_SYNC_FS = {0xEF53, 0x58465342, 0x9123683E, 0xF2F52010, 0x01021994}
class Durability:
    # How a batch's temporary files are made durable: syncfs per filesystem where that is a
    # full flush and reports errors (decided once per filesystem), else fsync per file.
    def __init__(self, batch):
        self.lib, self.ok = None, {}
        if not batch or not sys.platform.startswith("linux"):
            return
        try:
            release = tuple(int(x) for x in os.uname().release.split("-")[0].split(".")[:2])
            if release < (5, 8):  # older kernels' syncfs does not report writeback errors
                return
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syncfs, libc.fstatfs  # both present, or AttributeError
            self.lib = ctypes, libc
        except (ValueError, OSError, AttributeError, ImportError):
            pass
    def can_batch(self, fd, dev):
        if self.lib is None:
            return False
        ok = self.ok.get(dev)
        if ok is None:
            ctypes, libc = self.lib
            buf = ctypes.create_string_buffer(512)  # struct statfs; f_type comes first
            ok = self.ok[dev] = libc.fstatfs(fd, buf) == 0 and \
                (ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF) in FULL_SYNC_FS
        return ok
    def syncfs(self, fd):
        ctypes, libc = self.lib
        if libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
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
def sync_all(staged, durability):
    # {fd: None (durable) or the OSError that leaves it not durable}: one syncfs per
    # filesystem where that is safe, else every file fsynced, 8 at a time (the journal
    # commits them together: ~3x faster than one after the other).
    by_dir, by_dev, outcome, pending = {}, {}, {}, {}
    for item in staged:
        by_dir.setdefault(os.path.dirname(item[0]), []).append(item)
    for items in by_dir.values():  # a folder's files are on its filesystem
        by_dev.setdefault(os.fstat(items[0][1]).st_dev, []).extend(items)
    for dev, items in by_dev.items():
        if durability.can_batch(items[0][1], dev):
            try:
                durability.syncfs(items[0][1])
                err = None
            except OSError as exc:
                err = exc  # fails every file on that filesystem: none is known durable
            for _, fd, _ in items:
                outcome[fd] = err
        else:
            for _, fd, _ in items:
                pending[fd] = pool.submit(os.fsync, fd)
    for fd, fut in pending.items():
        try:
            fut.result()
            outcome[fd] = None
        except OSError as exc:
            outcome[fd] = exc
    return outcome
def place_batch(files, durability):
    # Every temporary file written first, then made durable (sync_all), then each one
    # closed and renamed into place, then each folder fsynced once. {target: (errno, msg)}
    status, staged = {}, []
    for target, data in files:
        try:
            staged.append((target,) + stage(target, data))
        except OSError as exc:
            status[target] = fail(exc)
    outcome = sync_all(staged, durability)
    dirs = {}
    for target, fd, tmp in staged:
        try:
            try:
                if outcome[fd] is not None:
                    raise outcome[fd]
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
    return status
"""
_HELPER_MAIN = r"""
durability = Durability(sys.argv[1:] == ["batch"])
write_all(b"R")  # ready
def frames(count, order):
    for _ in range(count):
        plen, dlen = struct.unpack("!II", read(8))
        target = read(plen)
        order.append(target)
        yield target, read(dlen)
while True:
    (count,) = struct.unpack("!I", read(4))
    order = []
    status = place_batch(frames(count, order), durability)
    out = bytearray()
    for t in order:
        code, msg = status[t]
        msg = msg[:1000]
        out += struct.pack("!iH", code, len(msg)) + msg
    answer(bytes(out))
"""
_HELPER = _HELPER_LIB + _HELPER_MAIN


def _frame(files: list[tuple[bytes, bytes]]) -> bytes:
    """One batch for the file helper (see _HELPER_MAIN)."""
    parts = [struct.pack("!I", len(files))]
    for target, data in files:
        parts += [struct.pack("!II", len(target), len(data)), target, data]
    return b"".join(parts)


def _statuses(body: bytes, count: int) -> list[OSError | None]:
    """The file helper's answer to one batch: one status per file, in order."""
    out: list[OSError | None] = []
    pos = 0
    for _ in range(count):
        code, size = struct.unpack_from("!iH", body, pos)
        pos += 6
        out.append(_status_error(code, body[pos:pos + size].decode("utf-8", "replace")))
        pos += size
    return out


class FileSink(BatchLoop):
    """Output files made durable in batches: write() returns once its files are in place.

    Every file is written under a temporary name beside its target, made durable (one
    syncfs per filesystem per batch where that is safe, else fsync; `batch_sync=False`:
    always fsync), closed and renamed into place, then each folder is fsynced once per batch
    by the file helper process (see _HELPER_LIB), which the event loop feeds one batch at a
    time through non-blocking pipes (helper_process.py): the loop does no file syscalls and
    no thread is involved. Without a helper (it could not start) a worker thread does the
    same work itself, with fsync. Runs beside `Writer`, so the pre-send commits of new tasks
    never queue behind other tasks' file fsyncs.
    """

    def __init__(self, writer: Writer | None = None, *, use_helper: bool = True,
                 batch_sync: bool = True, lock_fd: int | None = None) -> None:
        super().__init__(use_helper=use_helper)
        self.writer = writer
        self._keep_fds = () if lock_fd is None else (lock_fd,)  # the folder's lock: see store
        self._batch_sync = batch_sync
        self._lib: dict[str, Any] | None = None  # the helper's code in this process (fallback)

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
                if entry.commit is not None:
                    assert self.writer is not None
                    with contextlib.suppress(RecordError):
                        await self.writer.durable(entry.commit)
            raise
        if entry.error is not None:
            raise entry.error
        if entry.commit is not None:
            assert self.writer is not None
            await self.writer.durable(entry.commit)

    def _new_helper(self) -> HelperProcess:
        return HelperProcess(_HELPER, ["batch" if self._batch_sync else "per-file"],
                             "output file helper", keep_fds=self._keep_fds)

    async def _place(self, flat: list[tuple[bytes, bytes]]) -> list[OSError | None]:
        """One status per file of the batch: placed by the helper, else in a worker thread."""
        helper = await self._ready_helper()
        if helper is None:
            if self._lib is None:
                self._lib = _helper_lib()
            return await anyio.to_thread.run_sync(_place_here, flat, self._lib)
        try:
            return _statuses(await self._ask(helper, _frame(flat)), len(flat))
        except OSError as exc:  # (the helper is retired: a fresh one for the next batch)
            return [exc] * len(flat)

    async def _handle(self, entries: list[_FileEntry]) -> None:
        """Place one batch's files, then submit their `after` ops as one group commit.

        The commit is not waited for here (each write() waits for its own): the next batch's
        files are placed while this one's "done" is being committed.
        """
        try:
            with anyio.CancelScope(shield=True):
                statuses = iter(await self._place([f for e in entries for f in e.files]))
                for e in entries:
                    for _ in e.files:
                        status = next(statuses)
                        if status is not None and e.error is None:
                            e.error = status
                done = [e for e in entries if e.error is None and e.after]
                if done:
                    assert self.writer is not None
                    commit = self.writer.submit([op for e in done for op in e.after])
                    for e in done:
                        e.commit = commit
        except Exception as exc:  # the writer has failed already (_place answers OSError)
            for e in entries:
                e.error = e.error or exc
        for e in entries:
            e.done.set()


def _status_error(code: int, message: str) -> OSError | None:
    """One file's status from the helper's code: None when it is in place."""
    return OSError(code, message) if code else None


def _helper_lib() -> dict[str, Any]:
    """The file helper's functions in this process, with their own state (the folders
    known to exist, the fsync threads): for the in-thread fallback and write_atomic."""
    return in_process(_HELPER_LIB, "file helper")


def _place_here(files: list[tuple[bytes, bytes]],
                lib: dict[str, Any]) -> list[OSError | None]:
    """The helper's work in this thread (fallback), fsyncing every file."""
    status = lib["place_batch"](files, lib["Durability"](False))
    return [_status_error(code, msg.decode("utf-8", "replace"))
            for code, msg in (status[target] for target, _ in files)]


def write_atomic(out_dir: Path, rel_path: str, data: bytes) -> Path:
    """Write `data` to out_dir/rel_path via temp file + fsync + rename + fsync(dir)."""
    target = Path(out_dir) / rel_path
    [error] = _place_here([(os.fsencode(target), bytes(data))], _helper_lib())
    if error is not None:
        raise error
    return target
