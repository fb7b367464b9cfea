"""The review page as a raw ASGI application (no framework), served by uvicorn on loopback.

Routes:
    GET  /                      the page (static/index.html; review.js and review.css)
    GET  /api/state             the run and every tile (JSON; ETag, 304 when unchanged)
    GET  /api/task?v=VARIANT    prompt, request fields, inputs of one task (JSON)
    GET  /media/result?v=&i=&size=thumb|full     a result image (thumbnail: JPEG)
    GET  /media/input?v=&f=seed|mask|overlay&size=thumb|full   a task's local input
    POST /api/decision          {variant, index, entry, expect, restore} -> {before, after}

Only requests whose Host is a loopback name are served (a web page elsewhere cannot reach the
server through DNS rebinding), and a decision must be a JSON POST whose Origin, if sent, is
the page's own (a form on another site cannot post one). Blocking work (reading the record,
hashing, Pillow, the review file) runs in worker threads.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio

from specrunner.errors import SpecrunnerError
from specrunner.report.review import Conflict, ReviewFileError
from specrunner.review import media
from specrunner.review.source import Source, task_json
from specrunner.runware import is_loopback

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
MAX_BODY = 64 * 1024
STATIC = {"review.js": "text/javascript; charset=utf-8",
          "review.css": "text/css; charset=utf-8"}


class HttpError(Exception):
    """An answer other than 200: status and a short message."""

    def __init__(self, status: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra or {}


def _static(name: str) -> bytes:
    return resources.files("specrunner.review").joinpath("static", name).read_bytes()


def _host_ok(host: str) -> bool:
    """True for a Host header naming a loopback address or localhost (any port)."""
    name = host if host.endswith("]") else host.rsplit(":", 1)[0]
    return is_loopback(name.strip("[]"))


class ReviewApp:
    """The ASGI callable over one `Source`."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self.thumbs = media.Cache()
        self.page = {name: _static(name) for name in ("index.html", *STATIC)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        try:
            if not _host_ok(headers.get("host", "")):
                raise HttpError(403, "this server answers only on a loopback address")
            await self._route(scope, receive, send, headers)
        except HttpError as exc:
            await _json(send, exc.status, {"error": exc.message, **exc.extra})

    async def _route(self, scope: Scope, receive: Receive, send: Send,
                     headers: dict[str, str]) -> None:
        method, path = scope["method"], scope["path"]
        query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
        if path == "/api/decision":
            if method != "POST":
                raise HttpError(405, "POST a decision")
            return await self._decision(receive, send, headers)
        if method not in ("GET", "HEAD"):
            raise HttpError(405, f"{method} is not served here")
        if path in ("/", "/index.html"):
            return await _send(send, 200, self.page["index.html"], "text/html; charset=utf-8",
                               [(b"cache-control", b"no-store")])
        if path.startswith("/static/") and path[8:] in STATIC:
            return await _send(send, 200, self.page[path[8:]], STATIC[path[8:]],
                               [(b"cache-control", b"no-cache")])
        if path == "/api/state":
            state = await anyio.to_thread.run_sync(self._state)
            extra = [(b"etag", state.etag.encode()), (b"cache-control", b"no-cache")]
            if headers.get("if-none-match") == state.etag:
                return await _send(send, 304, b"", "application/json", extra)
            return await _send(send, 200, state.body, "application/json; charset=utf-8", extra)
        if path == "/api/task":
            task = self.source.task(query.get("v", ""))
            if task is None:
                raise HttpError(404, "no such variant in this run")
            return await _json(send, 200, task_json(task))
        if path == "/media/result":
            return await self._result(send, query)
        if path == "/media/input":
            return await self._input(send, query)
        raise HttpError(404, f"no route {path}")

    def _state(self) -> Any:
        try:
            return self.source.state()
        except SpecrunnerError as exc:  # e.g. the review file was hand-edited into a mess
            raise HttpError(500, str(exc)) from None

    async def _result(self, send: Send, query: dict[str, str]) -> None:
        try:
            index = int(query.get("i", ""))
        except ValueError:
            raise HttpError(400, "i must be an image index") from None
        reviewed = self.source.image(query.get("v", ""), index)
        if reviewed is None or reviewed.path is None:
            raise HttpError(404, "no such result image")
        path = reviewed.path
        if not _inside(path, self.source.run_dir):
            raise HttpError(403, "the recorded path leaves the run folder")
        await self._picture(send, path, query.get("size") == "full", None)

    async def _input(self, send: Send, query: dict[str, str]) -> None:
        task = self.source.task(query.get("v", ""))
        kind = query.get("f", "")
        field_ = {"seed": "seedImage", "mask": "maskImage", "overlay": "maskImage"}.get(kind)
        if task is None or field_ is None:
            raise HttpError(404, "no such input")
        ref = next((i for i in task.inputs if i.field == field_ and i.kind == "file"), None)
        if ref is None:
            raise HttpError(404, "this input is not a local file")
        overlay = ref.polarity if kind == "overlay" else None
        await self._picture(send, Path(ref.value), query.get("size") == "full", overlay)

    async def _picture(self, send: Send, path: Path, full: bool, overlay: str | None) -> None:
        def make() -> tuple[bytes, str]:
            try:
                sig = media.signature(path)
                if overlay is not None:
                    side = None if full else media.THUMB_PX
                    return self.thumbs.get(("overlay", str(path), sig, overlay, side),
                                           lambda: media.mask_overlay(path, overlay, side)), \
                        "image/png"
                if full:
                    return path.read_bytes(), media.content_type(path)
                return self.thumbs.get(("thumb", str(path), sig),
                                       lambda: media.thumbnail(path)), "image/jpeg"
            except (OSError, ValueError) as exc:
                raise HttpError(404, f"cannot read the image ({exc.__class__.__name__})") \
                    from None

        data, ctype = await anyio.to_thread.run_sync(make)
        # The page names each picture with its sha256, so a changed file gets a new URL.
        await _send(send, 200, data, ctype, [(b"cache-control", b"private, max-age=3600")])

    async def _decision(self, receive: Receive, send: Send, headers: dict[str, str]) -> None:
        if not headers.get("content-type", "").startswith("application/json"):
            raise HttpError(415, "send the decision as application/json")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc != headers.get("host"):
            raise HttpError(403, "decisions come from the review page itself")
        body = await _read_body(receive, MAX_BODY)
        try:
            doc = json.loads(body)
            variant, index = doc["variant"], doc["index"]
            if not isinstance(variant, str) or not isinstance(index, int) \
                    or isinstance(index, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise HttpError(400, "expected {variant, index, entry, expect}") from None

        def apply() -> tuple[Any, Any]:
            try:
                return self.source.decide(variant, index, doc.get("entry"), doc.get("expect"),
                                          bool(doc.get("restore")))
            except Conflict as exc:
                current = exc.current.to_json() if exc.current is not None else None
                raise HttpError(409, str(exc), {"current": current}) from None
            except ReviewFileError as exc:
                raise HttpError(500, str(exc)) from None
            except ValueError as exc:
                raise HttpError(400, str(exc)) from None

        before, after = await anyio.to_thread.run_sync(apply)
        await _json(send, 200, {"before": before.to_json() if before else None,
                                "after": after.to_json() if after else None})


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


async def _read_body(receive: Receive, limit: int) -> bytes:
    parts, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            break
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HttpError(413, f"body over {limit} bytes")
        parts.append(chunk)
        if not msg.get("more_body", False):
            break
    return b"".join(parts)


async def _send(send: Send, status: int, body: bytes, ctype: str,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               (b"x-content-type-options", b"nosniff"), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, doc: Any) -> None:
    await _send(send, status, json.dumps(doc, separators=(",", ":")).encode(),
                "application/json; charset=utf-8", [(b"cache-control", b"no-store")])
