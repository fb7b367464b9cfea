"""A run's local seed and mask files: read once, checked against the plan's hash, and sent
once per content (uploaded, or inlined as data URIs), reusing uploads the record still holds.
"""

from __future__ import annotations

import hashlib
import io
import random
import uuid as uuidlib
from typing import Callable

import anyio
from PIL import Image, ImageOps

from specrunner import runware, store as st
from specrunner.batching import Writer
from specrunner.spec.types import Execution
from specrunner.plan.task import LocalImage, Task
from specrunner.client import (Backoff, Fault, RunwareClient, Sleep, category, check_image,
                               data_uri)
from specrunner.run_types import GiveUp, StopRun


class Inputs:
    """Local seed/mask files, read once and sent once per content (upload or inline)."""

    def __init__(self, uploads: dict[tuple[str, bool], tuple[str, float]], *,
                 client: RunwareClient, writer: Writer, execution: Execution,
                 wall: Callable[[], float], sleep: Sleep, backoff: Backoff,
                 rng: random.Random) -> None:
        self.client, self.writer, self.execution = client, writer, execution
        self.wall, self.sleep, self.backoff, self.rng = wall, sleep, backoff, rng
        self._known = uploads
        self._cache: dict[tuple[str, bool], str] = {}
        self._locks: dict[tuple[str, bool], anyio.Lock] = {}
        self._reused: set[tuple[str, bool]] = set()  # taken from the record, not uploaded now

    def forget_reused(self, task: Task, sent: dict[str, str]) -> bool:
        """Drop recorded uploads this task sent (the server lost them); True if any were stale.

        Also True when a sibling already replaced what this task sent.
        """
        stale = False
        for name, img in task.local_inputs.items():
            key = (img.sha256, img.invert)
            if key in self._reused:
                self._reused.discard(key)
                self._known.pop(key, None)
                self._cache.pop(key, None)
                stale = True
            elif key not in self._cache or self._cache[key] != sent.get(name):
                stale = True
        return stale

    def _bytes(self, img: LocalImage) -> tuple[bytes, str]:
        data = img.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != img.sha256:
            raise GiveUp("failed", "inputChanged", f"{img.path.name} changed since planning")
        if not img.invert:
            return data, check_image(data)
        with Image.open(io.BytesIO(data)) as im:
            buf = io.BytesIO()
            ImageOps.invert(im.convert("L")).save(buf, "PNG")
        return buf.getvalue(), "PNG"

    async def resolve(self, img: LocalImage) -> str:
        """The imageUUID or data URI standing for `img` (uploading it at most once)."""
        key = (img.sha256, img.invert)
        if key in self._cache:
            return self._cache[key]
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            if key in self._cache:
                return self._cache[key]
            known = self._known.get(key)
            if (self.execution.upload == "upload" and known
                    and self.wall() - known[1] < st.UPLOAD_TTL_S):
                self._cache[key] = known[0]
                self._reused.add(key)
                return known[0]
            data, fmt = await anyio.to_thread.run_sync(self._bytes, img)
            uri = data_uri(data, fmt)
            if self.execution.upload == "inline":
                self._cache[key] = uri
                return uri
            image_uuid = await self._upload(uri)
            await self.writer.write([st.op_upload(img.sha256, img.invert, image_uuid,
                                                  self.wall())])
            self._cache[key] = image_uuid
            return image_uuid

    async def _upload(self, uri: str) -> str:
        for attempt in range(self.execution.max_attempts):
            if attempt:
                await self.sleep(self.backoff.delay(attempt - 1, self.rng))
            tid = str(uuidlib.UUID(int=self.rng.getrandbits(128), version=4))
            try:
                reply = await self.client.upload(uri, tid, self.execution.request_timeout_s)
            except Fault:
                continue
            for item in reply.envelope.data:
                if isinstance(item.get("imageUUID"), str):
                    return str(item["imageUUID"])
            errs = reply.envelope.errors
            if errs:
                cat = category(errs[0], reply.status)
                if cat in runware.STOP_RUN:
                    raise StopRun(f"upload refused: {errs[0].get('code')}")
                if cat not in runware.RETRY_SAME_UUID and cat not in runware.RETRY_NEW_UUID:
                    raise GiveUp("failed", str(errs[0].get("code")), "input upload refused: "
                                 f"{str(errs[0].get('message', ''))[:200]}")
        raise GiveUp("failed", "uploadFailed", "input upload failed after retries")
