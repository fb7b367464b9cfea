"""The local server's optional persistent state: an append-only journal and stored images.

`LocalConfig(state_dir=DIR)` (or `specrunner serve --state-dir DIR`) keeps, in DIR:

    journal.jsonl     one JSON object per line: every upload, accepted task and refused
                      duplicate, appended with one os.write per event (no user-space buffer)
    images/KEY.png    the decoded input images those events name (uploads, inline inputs,
                      placeholders), lossless; written to a temporary name and renamed into
                      place BEFORE the journal line that names them
    lock              held (flock) by the one server that has DIR open

Results are not stored: the edit engine is deterministic, so a restored task renders the same
bytes from its request and stored inputs. Each event reaches the kernel before the server
answers the request that caused it, so a SIGKILL at any moment loses at most an event whose
answer was never sent; only its last line can be cut short, and replay drops such a tail.
Not fsynced: a power cut may lose the newest events (this is a test server).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from pathlib import Path
from typing import Any

from PIL import Image

from specrunner.errors import UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

JOURNAL = "journal.jsonl"
CACHED_IMAGES = 8


def image_key(value: str, size: tuple[int, int]) -> str:
    """The stored-image key of an input value as resolved at `size` (placeholders depend on
    the other input's size; every other value resolves to one image whatever its size)."""
    return hashlib.sha256(f"{value}\0{size[0]}x{size[1]}".encode()).hexdigest()


class Journal:
    """An open state directory: `events` (replayed at open), `append()`, stored images."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.images = self.path / "images"
        self._cache: dict[str, Image.Image] = {}  # insertion order = least recently used first
        self._cache_lock = threading.Lock()
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self._lock: int | None = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot use state directory {self.path}: {exc.strerror}") from None
        if fcntl is not None:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(self._lock)
                raise UsageError(f"state directory {self.path} is in use by another local "
                                 "server") from None
        for stale in self.images.glob("*.tmp*"):  # a write cut short by a kill
            with contextlib.suppress(OSError):
                stale.unlink()
        self.events = self._replay()
        self._fd: int | None = os.open(self.path / JOURNAL,
                                       os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _replay(self) -> list[dict[str, Any]]:
        file = self.path / JOURNAL
        try:
            data = file.read_bytes()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the tail of a write cut short: never answered, so drop it
            with open(file, "r+b") as fh:
                fh.truncate(end)
        events = []
        for number, line in enumerate(data[:end].splitlines(), 1):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict) or "e" not in event:
                raise UsageError(f"state journal {file} is damaged at line {number}; move "
                                 "the state directory away to start afresh")
            events.append(event)
        return events

    def append(self, event: dict[str, Any]) -> None:
        """Write one event (a single line) through to the kernel before returning."""
        if self._fd is None:
            raise RuntimeError(f"the state directory {self.path} was closed")
        data = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def has_image(self, key: str) -> bool:
        return (self.images / f"{key}.png").is_file()

    def put_image(self, key: str, image: Image.Image) -> None:
        """Store `image` under `key` (PNG, temp + rename); a no-op if it is already there.
        Blocking: call from a worker thread."""
        final = self.images / f"{key}.png"
        if final.is_file():
            return
        buf = io.BytesIO()
        image.save(buf, "PNG", compress_level=1)
        tmp = self.images / f"{key}.tmp{os.getpid()}-{threading.get_ident()}"
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, final)

    def get_image(self, key: str) -> Image.Image:
        """A stored image, loaded (the last few are cached: restored tasks often share their
        inputs). Blocking: call from a worker thread."""
        with self._cache_lock:
            image = self._cache.pop(key, None)
        if image is None:
            with Image.open(self.images / f"{key}.png") as im:
                im.load()
                image = im.copy()
        with self._cache_lock:
            self._cache[key] = image
            while len(self._cache) > CACHED_IMAGES:
                del self._cache[next(iter(self._cache))]
        return image

    def close(self) -> None:
        """Close the journal and release the directory's lock (idempotent)."""
        for name in ("_fd", "_lock"):
            fd = getattr(self, name, None)
            if fd is not None:
                setattr(self, name, None)
                with contextlib.suppress(OSError):
                    os.close(fd)

