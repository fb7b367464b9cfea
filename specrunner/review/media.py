"""Pictures for the review page: JPEG thumbnails and mask overlays, kept in a bounded cache.

Thumbnails are made on first request (lazy-loaded by the page, so only what is on screen)
and kept in memory up to MAX_CACHE_BYTES, least recently used first out; the cache key holds
the file's (size, mtime, inode), so a replaced image never shows its old thumbnail.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps

THUMB_PX = 320
OVERLAY_RGBA = (255, 40, 90, 140)
MAX_CACHE_BYTES = 64 * 1024 * 1024
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                 ".webp": "image/webp"}


class Cache:
    """A thread-safe LRU of bytes, bounded in total size."""

    def __init__(self, limit: int = MAX_CACHE_BYTES) -> None:
        self.limit, self.size = limit, 0
        self.items: OrderedDict[tuple, bytes] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple, make: Callable[[], bytes]) -> bytes:
        """The bytes for `key`, made (outside the lock) when missing."""
        with self.lock:
            hit = self.items.get(key)
            if hit is not None:
                self.items.move_to_end(key)
                return hit
        data = make()
        with self.lock:
            if key not in self.items:
                self.items[key] = data
                self.size += len(data)
            while self.size > self.limit and len(self.items) > 1:
                _, old = self.items.popitem(last=False)
                self.size -= len(old)
        return data


def signature(path: Path) -> tuple[int, int, int]:
    """(size, mtime_ns, inode) of a file; OSError if it is gone."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _rgb(path: Path, size: int | None) -> Image.Image:
    with Image.open(path) as im:
        if size is not None:
            im.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale
        return im.convert("RGB")


def thumbnail(path: Path, size: int = THUMB_PX) -> bytes:
    """A JPEG of at most size x size pixels."""
    im = _rgb(path, size)
    im.thumbnail((size, size))
    out = io.BytesIO()
    im.save(out, "JPEG", quality=85)
    return out.getvalue()


def mask_overlay(mask: Path, polarity: str, max_side: int | None = None) -> bytes:
    """A transparent PNG tinting the area the mask repaints (white, after polarity): laid
    over the seed and the result at the same box, it shows where the edit was asked."""
    with Image.open(mask) as m:
        alpha = m.convert("L")
    if polarity == "black-edits":
        alpha = ImageOps.invert(alpha)
    if max_side is not None:
        alpha.thumbnail((max_side, max_side))
    alpha = alpha.point(lambda v: v * OVERLAY_RGBA[3] // 255)
    tint = Image.new("RGBA", alpha.size, (*OVERLAY_RGBA[:3], 0))
    tint.putalpha(alpha)
    out = io.BytesIO()
    tint.save(out, "PNG", optimize=False)
    return out.getvalue()


def content_type(path: Path) -> str:
    """The Content-Type of an image file, by extension (sniffed for unknown ones)."""
    known = CONTENT_TYPES.get(path.suffix.lower())
    if known:
        return known
    try:
        with Image.open(path) as im:
            return Image.MIME.get(im.format or "", "application/octet-stream")
    except (OSError, ValueError):
        return "application/octet-stream"
