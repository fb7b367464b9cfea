"""A run's local image inputs: read once, checked against the plan's hash, sent once per
content (uploaded, or inlined as a data URI), reusing uploads the record still holds; and
`substitute`, the request a task sends.
"""

from __future__ import annotations

import hashlib
import io
import random
import uuid as uuidlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from PIL import Image, ImageOps

from specrunner import runware
from specrunner.plan.task import LocalImage, Task
from specrunner.record import UPLOAD_TTL_S
from specrunner.run.client import Fault, RunwareClient, check_image, data_uri
from specrunner.run.context import GiveUp, StopRun
from specrunner.runware import Action, RunnerCode

if TYPE_CHECKING:
    from specrunner.record import RunLog
    from specrunner.run.context import Backoff, Sleep
    from specrunner.spec.types import Execution



def substitute(task: Task, task_uuid: str, resolved: dict[str, str]) -> dict[str, Any]:
    """The request to send: the plan's (Task.request_with: each local input's value at its
    path), with `task_uuid`."""
    req = task.request_with(resolved) if resolved else dict(task.request)
    req["taskUUID"] = task_uuid
    return req


class Inputs:
    """Local seed/mask/reference files, read once and sent once per content."""

    def __init__(self, uploads: dict[tuple[str, bool], tuple[str, float]], *,
                 client: RunwareClient, log: RunLog, execution: Execution,
                 wall: Callable[[], float], sleep: Sleep, backoff: Backoff,
                 rng: random.Random) -> None:
        self.client, self.log, self.execution = client, log, execution
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

    @staticmethod
    def _bytes(img: LocalImage) -> tuple[bytes, str]:
        data = img.path.read_bytes()
        if hashlib.sha256(data).hexdigest() != img.sha256:
            raise GiveUp("failed", RunnerCode.INPUT_CHANGED,
                         f"{img.path.name} changed since planning")
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
                    and self.wall() - known[1] < UPLOAD_TTL_S):
                self._cache[key] = known[0]
                self._reused.add(key)
                return known[0]
            data, fmt = await anyio.to_thread.run_sync(self._bytes, img)
            uri = data_uri(data, fmt)
            if self.execution.upload == "inline":
                self._cache[key] = uri
                return uri
            image_uuid = await self._upload(uri)
            await self.log.upload(img.sha256, img.invert, image_uuid)
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
                action = runware.ACTIONS[runware.category(errs[0], reply.status)]
                if action is Action.STOP:
                    raise StopRun(str(errs[0].get("code")), "an input upload was refused: "
                                  f"{str(errs[0].get('message', ''))[:200]}")
                if action is Action.FINAL:
                    raise GiveUp("failed", str(errs[0].get("code")), "input upload refused: "
                                      f"{str(errs[0].get('message', ''))[:200]}")
        raise GiveUp("failed", RunnerCode.UPLOAD_FAILED, "input upload failed after retries")
