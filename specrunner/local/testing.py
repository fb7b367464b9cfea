"""Helpers for tests that talk to the local server (used by specrunner's own test suite).

`FakeClock` gives a server a clock and a sleep that advances it instantly; `inference_task`
builds a valid ideogram:3@3 task; `client` opens an in-process httpx client; `seed_for`
finds a fault seed that injects a chosen sequence.
"""

from __future__ import annotations

import base64
import contextlib
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
from PIL import Image

from specrunner.local.app import LocalServer
from specrunner.local.faults import FaultConfig, FaultInjector

BASE_URL = "http://local.runware"


class FakeClock:
    """A monotonic clock that only moves when told to, or when `sleep` is awaited."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def seed_for(config: FaultConfig, pattern: list[str | None]) -> FaultConfig:
    """`config` with the first seed (of a bounded search) whose request faults start with
    `pattern` (one entry per POST /v1 or WebSocket message: a fault name or None)."""
    for seed in range(2000):
        candidate = FaultConfig.from_mapping({"seed": seed, "rates": dict(config.rates),
                                              "hang_s": config.hang_s})
        injector = FaultInjector(candidate)
        if [injector.next_request()[0] for _ in pattern] == pattern:
            return candidate
    raise AssertionError(f"no seed below 2000 gives {pattern}")


def new_uuid() -> str:
    return str(uuid.uuid4())


def image_data_uri(image: Image.Image, fmt: str = "PNG") -> str:
    """`image` encoded as a data URI (PNG, JPEG or WEBP; WEBP lossless)."""
    buf = io.BytesIO()
    image.save(buf, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}[fmt]
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"


def inference_task(**overrides: Any) -> dict[str, Any]:
    """A valid imageInference task with URL inputs (placeholders) and a fresh taskUUID."""
    task: dict[str, Any] = {
        "taskType": "imageInference",
        "taskUUID": new_uuid(),
        "model": "ideogram:3@3",
        "positivePrompt": 'A shop sign reading "LOCAL TEST"',
        "inputs": {"seedImage": "https://example.invalid/seed.jpg",
                   "maskImage": "https://example.invalid/mask.png"},
    }
    task.update(overrides)
    return task


@contextlib.asynccontextmanager
async def client(server: LocalServer, key: str = "test-key", base_url: str = BASE_URL
                 ) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx.AsyncClient wired to `server` in-process, sending `key` as a Bearer token."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server), base_url=base_url,
                                 headers={"Authorization": f"Bearer {key}"}) as c:
        yield c
