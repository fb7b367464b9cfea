"""The local server as a raw ASGI application (no framework): routing, auth, HTTP faults.

Routes: POST /v1 (Runware task arrays), WebSocket /v1 (Runware's WebSocket API, ws.py),
GET /image/<imageUUID>.<ext> (outputs handed out as imageURL, relative to the Host the
request came in on; the extension must be the output's format), GET /admin/stats (the
ledger, JSON; needs the API key as /v1 does), GET / (a banner). The API key is compared in
constant time and never logged or echoed.

Connection drops: the app starts the response, then raises ConnectionDropped, an
httpx.RemoteProtocolError. Through httpx.ASGITransport (default raise_app_exceptions=True)
the client sees that transport error; under uvicorn the started response is cut off and the
socket closed, and httpx raises RemoteProtocolError as well.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx

from specrunner.local import engine
from specrunner.local.faults import BEFORE_BILLING, FaultConfig, FaultInjector
from specrunner.local.journal import Journal
from specrunner.local.state import ImageStore, Ledger, Stats
from specrunner.local.tasks import SIMULATOR, Outcome, Simulator
from specrunner.local.ws import GATEWAY_PAGE, WebSocketAPI
from specrunner.runware import error_object

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_IMAGE_PATH = re.compile(r"^/image/([0-9a-fA-F-]{36})\.(jpg|png|webp)$")
_API_PATHS = ("/v1", "/v1/")
_FORMAT_OF_EXT = {ext: fmt for fmt, ext in engine.EXT.items()}


class ConnectionDropped(httpx.RemoteProtocolError):
    """Raised by the app to abort a response after the task was billed (an injected fault)."""


@dataclass(frozen=True)
class LocalConfig:
    """How the local server behaves. `api_key=None` accepts any non-empty key.

    `clock` (monotonic seconds) drives ttl, async readiness and WebSocket session expiry;
    `sleep` serves latency, processing time and hangs: inject both in tests. `render=False`
    skips the engine and answers a fixed 8x8 image (benchmarks). `state_dir` keeps uploads,
    accepted tasks and the ledger across restarts (journal.py); None keeps them in memory.
    `ws_idle_s` closes a silent WebSocket, `ws_session_s` keeps a dropped session's
    undelivered answers for resumption (Runware: 120 s each)."""

    api_key: str | None = field(default=None, repr=False)
    faults: FaultConfig = field(default_factory=FaultConfig)
    render: bool = True
    default_ttl_s: float = 3600.0
    max_body_bytes: int = 64 * 1024 * 1024
    max_stored_bytes: int = 1024 * 1024 * 1024
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    state_dir: Path | None = None
    ws_idle_s: float = 120.0
    ws_session_s: float = 120.0


class LocalServer:
    """The ASGI callable; `.ledger` is live accounting, `.stats()` a snapshot. With a
    `state_dir`, close it (`close()`, `with`, or the ASGI lifespan's shutdown) to release
    the directory for the next server."""

    def __init__(self, config: LocalConfig | None = None) -> None:
        self.config = config or LocalConfig()
        self.ledger = Ledger()
        self.injector = FaultInjector(self.config.faults)
        self.images = ImageStore(self.config.clock, self.config.max_stored_bytes)
        self.journal = Journal(self.config.state_dir) if self.config.state_dir else None
        self.sim = Simulator(ledger=self.ledger, images=self.images, injector=self.injector,
                             clock=self.config.clock, sleep=self.config.sleep,
                             render=self.config.render, default_ttl_s=self.config.default_ttl_s,
                             journal=self.journal)
        self.websocket = WebSocketAPI(sim=self.sim, ledger=self.ledger, injector=self.injector,
                                      faults=self.config.faults, key_ok=self._key_ok,
                                      clock=self.config.clock, sleep=self.config.sleep,
                                      idle_s=self.config.ws_idle_s,
                                      session_s=self.config.ws_session_s)

    def stats(self) -> Stats:
        """Charges per taskUUID, duplicate attempts, requests by type, peak concurrency..."""
        return self.ledger.snapshot(self.injector.injected)

    def close(self) -> None:
        """Release the state directory, if any (the in-memory state stays readable)."""
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    self.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if scope["type"] == "websocket":
            if scope["path"] not in _API_PATHS:  # refused before the handshake: HTTP 403
                await send({"type": "websocket.close", "code": 1008})
                return
            return await self.websocket(scope, receive, send, _base_url(scope, headers))
        if scope["type"] != "http":
            return
        self.ledger.http_requests += 1
        method, path = scope["method"], scope["path"]
        if path in _API_PATHS:
            if method != "POST":
                return await _json(send, 405, {"errors": [error_object(
                    "methodNotAllowed", "use POST /v1 with a JSON array of tasks, or "
                    "a WebSocket on /v1")]})
            return await self._api(scope, receive, send)
        if method in ("GET", "HEAD"):
            m = _IMAGE_PATH.match(path)
            if m:
                return await self._image(m.group(1), m.group(2), send)
            if path == "/admin/stats":
                if not self._bearer_ok(headers):
                    return await _json(send, 401, {"errors": [error_object(
                        "invalidApiKey", "GET /admin/stats needs the API key: "
                        "Authorization: Bearer <key>")]})
                return await _json(send, 200, self.stats().to_json())
            if path == "/":
                return await _json(send, 200, {"simulator": SIMULATOR,
                                               "endpoint": "POST /v1, WebSocket /v1"})
        await _json(send, 404, {"errors": [error_object("notFound", f"no route {path}")]})

    def _key_ok(self, key: object) -> bool:
        if not isinstance(key, str) or not key:
            return False
        if self.config.api_key is None:
            return True
        return hmac.compare_digest(key.encode(), self.config.api_key.encode())

    def _bearer_ok(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and self._key_ok(key.strip())

    async def _api(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive, self.config.max_body_bytes)
        if body is None:
            return await _json(send, 413, {"errors": [error_object(
                "payloadTooLarge", f"body over {self.config.max_body_bytes} bytes")]})
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            tasks = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            tasks = None
        lead_auth = (isinstance(tasks, list) and tasks and isinstance(tasks[0], dict)
                     and tasks[0].get("taskType") == "authentication")
        if b"authorization" in headers:
            ok = self._bearer_ok(headers)
        else:
            ok = bool(lead_auth) and self._key_ok(tasks[0].get("apiKey"))
        if not ok:
            return await _json(send, 401, {"errors": [error_object(
                "invalidApiKey", "missing or invalid API key",
                task_type="authentication" if lead_auth else None)]})
        if not isinstance(tasks, list) or not tasks:
            return await _json(send, 400, {"errors": [error_object(
                "invalidPayload", "the body must be a non-empty JSON array of tasks")]})
        cap = self.config.faults.capacity
        if cap is not None and self.ledger.in_flight >= cap:
            self.injector.count("capacity")
            return await _json(send, 429, {"errors": [error_object(
                "rateLimitExceeded", f"more than {cap} concurrent requests")]})
        self.ledger.enter()
        try:
            await self._serve_tasks(scope, receive, send, headers, tasks, bool(lead_auth))
        finally:
            self.ledger.leave()

    async def _serve_tasks(self, scope: Scope, receive: Receive, send: Send,
                           headers: dict[bytes, bytes], tasks: list[Any], lead_auth: bool
                           ) -> None:
        fault, latency = self.injector.next_request()
        if fault in BEFORE_BILLING:
            return await _status_fault(send, int(fault.removeprefix("http_")))
        if latency > 0:
            await self.config.sleep(latency)
        out = Outcome()
        if lead_auth:
            tasks = tasks[1:]
            out.data.append({"taskType": "authentication", "simulator": {"name": SIMULATOR}})
        run = await self.sim.run_tasks(tasks, _base_url(scope, headers))
        out.data += run.data
        out.errors += run.errors
        status, doc = out.envelope()
        if self.config.faults.echo_key:  # a careless server quoting the request back
            auth = headers.get(b"authorization", b"").decode("latin-1")
            for err in doc.get("errors", ()):
                err["message"] = f"{err.get('message', '')} (request had Authorization: {auth})"
        payload = json.dumps(doc, separators=(",", ":")).encode()
        if fault == "drop":
            await _start(send, status, "application/json", len(payload))
            raise ConnectionDropped("injected: connection dropped after the task was billed")
        if fault == "hang" and await _hang(receive, self.config.sleep, self.config.faults.hang_s):
            return  # the client went away while we held the answer back
        if fault == "non_json":
            return await _send(send, 200, GATEWAY_PAGE.format("upstream error").encode(),
                               "text/html")
        if fault == "truncated_body":
            payload = payload[: len(payload) // 2]
        await _send(send, status, payload, "application/json")

    async def _image(self, image_uuid: str, ext: str, send: Send) -> None:
        self.ledger.count("imageDownload")
        await self.sim.output(image_uuid)
        item = self.images.get(image_uuid)
        if item is not None and engine.MIME[_FORMAT_OF_EXT[ext]] != item.content_type:
            item = None  # the URL names another format than the image has: not this image
        if item is None:
            return await _json(send, 404, {"errors": [error_object(
                "imageNotFound", "unknown or expired image (see ttl)")]})
        fault = self.injector.next_download()
        if fault == "truncated_image":
            return await _send(send, 200, item.data[: len(item.data) // 2], item.content_type)
        if fault == "oversized_image":
            await _start(send, 200, item.content_type, None)
            await send({"type": "http.response.body", "body": item.data, "more_body": True})
            left, chunk = self.config.faults.oversize_bytes, b"\0" * (1 << 20)
            while left > 0:
                part = chunk[: min(left, len(chunk))]
                left -= len(part)
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        await _send(send, 200, item.data, item.content_type)


def create_app(config: LocalConfig | None = None) -> LocalServer:
    """A fresh local server (its own ledger and images), ready for ASGITransport or uvicorn."""
    return LocalServer(config)


def _base_url(scope: Scope, headers: dict[bytes, bytes]) -> str:
    """Where this server's images are, as the client addressed it (http(s) even when the
    request came over ws(s))."""
    host = headers.get(b"host", b"").decode("latin-1")
    if not host:
        server = scope.get("server") or ("127.0.0.1", 80)
        host = f"{server[0]}:{server[1]}"
    scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"),
                                                scope.get("scheme", "http"))
    return f"{scheme}://{host}{scope.get('root_path', '')}"


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    parts, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not msg.get("more_body", False):
            break
    return b"".join(parts)


async def _hang(receive: Receive, sleep: Callable[[float], Awaitable[None]], seconds: float
                ) -> bool:
    """Hold the answer back for `seconds`; True if the client disconnected meanwhile."""
    gone = False
    async with anyio.create_task_group() as tg:
        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        await sleep(seconds)
        tg.cancel_scope.cancel()
    return gone


async def _status_fault(send: Send, status: int) -> None:
    if status in (502, 504):  # gateways answer with HTML, not Runware JSON
        title = {502: "502 Bad Gateway", 504: "504 Gateway Time-out"}[status]
        return await _send(send, status, GATEWAY_PAGE.format(title).encode(), "text/html")
    code = {429: "rateLimitExceeded", 500: "internalServerError", 503: "serviceUnavailable"}
    await _json(send, status, {"errors": [error_object(
        code[status], f"injected HTTP {status} from the {SIMULATOR}")]})


async def _start(send: Send, status: int, content_type: str, length: int | None) -> None:
    headers = [(b"content-type", content_type.encode())]
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})


async def _send(send: Send, status: int, body: bytes, content_type: str) -> None:
    await _start(send, status, content_type, len(body))
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, doc: Any) -> None:
    await _send(send, status, json.dumps(doc, separators=(",", ":")).encode(),
                "application/json")
