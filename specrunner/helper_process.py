"""A helper process the event loop talks to through non-blocking pipes: no thread involved.

The run record's commits (`batching.Writer`) and the output files (`outputs.FileSink`) are
each done by a small stdlib-only Python process started with `-I -S`. The event loop writes
a batch to the helper's stdin and waits, like for a socket, until the answer is readable on
its stdout. Before, a worker thread drove each helper with blocking calls, and every time
that thread needed the GIL back from a busy event loop it waited up to the 5 ms switch
interval, several times per batch: with the loop busy, a batch of output files took 20-50
ms to start and the "done" commit behind it 150-200 ms (bench/README.md ## run). Through
the loop itself a batch costs it one write and one read, and the helper runs beside it on
another core.

A helper writes one byte once it has started (imports done, database open): a helper that
exits before that has been sent nothing, so its caller can safely work in-process instead.
A helper ignores SIGINT (Ctrl-C is the runner's to handle), lives in its own session, and
exits at end of input; one whose parent was killed gets end of input too, finishes the
batch it had read whole, does not act on an incomplete one, and exits. A helper may be
given the run folder's lock descriptor to hold (`keep_fds`): the folder then stays locked
until the helper has exited, even when the runner was killed (store._lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import struct
import subprocess
import sys
import threading
from types import CodeType
from typing import Any

import anyio


# Run before every helper's own code (HelperProcess): Ctrl-C is the runner's to handle; the
# protocol's two primitives over stdin/stdout; end of input (mid-frame too) ends the helper.
PRELUDE = r"""
import os, signal, struct, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
rd, wr = sys.stdin.fileno(), sys.stdout.fileno()
def read(n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(rd, n - len(buf))
        if not chunk:
            raise SystemExit(0)
        buf += chunk
    return bytes(buf)
def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(wr, view):]
def answer(body):
    write_all(struct.pack("!I", len(body)) + body)
"""


@functools.cache
def _compiled(code: str, name: str) -> CodeType:
    return compile(code, f"<specrunner {name}>", "exec")


def in_process(code: str, name: str) -> dict[str, Any]:
    """A helper's library code (without PRELUDE) loaded in this process, with its own fresh
    state: a fallback without the helper runs the very code the helper runs."""
    lib: dict[str, Any] = {}
    exec(_compiled(code, name), lib)
    return lib


class HelperGone(OSError):
    """The helper process exited or closed its pipes."""

    def __init__(self, what: str) -> None:
        super().__init__(errno.EPIPE, f"the {what} process exited")


class HelperProcess:
    """One running helper: `python -I -S -c PRELUDE+CODE ARGS...`, fed and read by the loop.

    `send` and `recv` must be awaited by one task at a time (the helper's BatchLoop), shielded
    from cancellation: a frame half written or an answer half read would desynchronise the
    protocol (after any error the caller stops talking to it). They raise HelperGone when the
    helper has exited. `stop()` closes its input and reaps it from a daemon thread;
    `exited()` waits for that in a worker thread, so the event loop never blocks on it.
    """

    def __init__(self, code: str, args: list[str], what: str,
                 keep_fds: tuple[int, ...] = ()) -> None:
        self.what = what
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", PRELUDE + code, *args], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0, env={},
            start_new_session=True, close_fds=True, pass_fds=keep_fds)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        os.set_blocking(self._in, False)
        os.set_blocking(self._out, False)
        _widen(self._in)  # a batch in one write, not one loop pass per 64 KiB
        self._buf = bytearray()
        self._reaper: threading.Thread | None = None
        self.ready = False  # its ready byte has been read

    async def wait_ready(self) -> None:
        """Return once the helper has started; HelperGone if it exited first."""
        if await self.recv(1) != b"R":
            raise HelperGone(self.what)
        self.ready = True

    async def send(self, data: bytes) -> None:
        """Write all of `data` to the helper's input."""
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._in, view):]
            except BlockingIOError:
                await anyio.wait_writable(self._in)
            except (BrokenPipeError, ValueError):  # ValueError: the pipe was closed here
                raise HelperGone(self.what) from None

    async def ask(self, frame: bytes) -> bytes:
        """Send one frame; return the helper's answer to it (sent with `answer`: its length,
        "!I", then its body)."""
        await self.send(frame)
        (size,) = struct.unpack("!I", await self.recv(4))
        return await self.recv(size)

    async def recv(self, n: int) -> bytes:
        """Read exactly `n` bytes of the helper's answers (buffered: an answer arrives in
        one write, and the next one may follow it in the same read)."""
        while len(self._buf) < n:
            try:
                chunk = os.read(self._out, max(65536, n - len(self._buf)))
            except BlockingIOError:
                await anyio.wait_readable(self._out)
                continue
            except (OSError, ValueError):
                raise HelperGone(self.what) from None
            if not chunk:
                raise HelperGone(self.what)
            self._buf += chunk
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def stop(self) -> None:
        """End of input: the helper finishes what it holds and exits; reaped off the loop."""
        if self._reaper is not None:
            return
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        self._reaper = threading.Thread(target=self._reap, name=f"specrunner-{self.what}-reaper",
                                        daemon=True)
        self._reaper.start()

    async def exited(self) -> None:
        """stop(), then return once the helper has exited (waited for in a worker thread:
        the event loop goes on meanwhile)."""
        self.stop()
        assert self._reaper is not None
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self._reaper.join)

    def _reap(self) -> None:
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # pragma: no cover - a helper stuck in the kernel
            self.proc.kill()
            self.proc.wait()
        with contextlib.suppress(OSError):
            assert self.proc.stdout is not None
            self.proc.stdout.close()


F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)  # Linux: set a pipe's capacity
PIPE_BYTES = 1 << 20  # fs.pipe-max-size's default: what an unprivileged process may ask for


def _widen(fd: int) -> None:
    """Give the pipe 1 MiB instead of 64 KiB where the system allows it (Linux).

    The loop writes a batch as far as the pipe takes it, then waits for it to drain, and a
    wait costs it a pass of the event loop: a record batch of 1,000 statements (~200 KB)
    took 40-90 ms to reach the record helper through 64 KiB (bench/README.md ## run).
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
