"""Talks to Runware over an injected httpx.AsyncClient: send task arrays, upload, download.

Foreign errors are translated here, in one place, into `Fault` (a transient or ambiguous
transport outcome) or `DownloadError`, so callers deal with Runware's envelopes only. The API
key travels only in the Authorization header of API POSTs: never in a body, a URL, a log or an
error. Image downloads carry no credentials.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from PIL import Image

from specrunner import __version__, runware
from specrunner.runware import Envelope, RunnerCode

TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
OVERLOAD_STATUS = frozenset({429, 503, 504})


class Fault(Exception):
    """A request whose outcome is unknown or transient: connect error, timeout, 5xx, bad body.

    `ambiguous` is True when the server may have accepted (and billed) the task.
    `code` is a short stable name recorded in the run record.
    """

    def __init__(self, code: str | RunnerCode, message: str, *, ambiguous: bool,
                 status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = str(code.value if isinstance(code, RunnerCode) else code)
        self.ambiguous = ambiguous
        self.status = status
        self.retry_after = retry_after


class DownloadError(Exception):
    """An output image could not be fetched or is not an acceptable image."""

    def __init__(self, code: str | RunnerCode, message: str, *, transient: bool,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.code = str(code.value if isinstance(code, RunnerCode) else code)
        self.transient = transient
        self.status = status  # the HTTP status, when a response came back


@dataclass(frozen=True)
class Reply:
    """A readable response: HTTP status, parsed envelope, latency in seconds."""

    status: int
    envelope: Envelope
    latency: float


class PooledTransport(httpx.AsyncBaseTransport):
    """httpx's transport, as several small connection pools used in turn.

    httpcore's pool spends time quadratic in its connections on every request
    (`_assign_requests_to_connections`, encode/httpcore#1035): measured here, one pool of 512
    connections used 21 ms of CPU per request at 256 requests in flight, and a run at that
    concurrency took 3.6x its ideal; eight pools of 64 used 1.8 ms. Each pool keeps its own
    connections alive; requests go to the pools in turn.
    """

    PER_POOL = 8

    def __init__(self, connections: int) -> None:
        n = max(1, -(-connections // self.PER_POOL))
        size = -(-connections // n)
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        tls = httpx.create_ssl_context()  # once: loading the CA store costs ~25 ms a pool
        self.pools = [httpx.AsyncHTTPTransport(retries=0, limits=limits, verify=tls)
                      for _ in range(n)]
        self._turn = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._turn = (self._turn + 1) % len(self.pools)
        return await self.pools[self._turn].handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self.pools:
            await pool.aclose()


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


class RunwareClient:
    """Sends JSON task arrays to one Runware-compatible endpoint over `http`."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, api_key: str | None,
                 *, clock: Callable[[], float] = time.monotonic) -> None:
        self.http = http
        self.base_url = base_url
        self._url = httpx.URL(base_url)  # parsed once, not per request
        common = {"User-Agent": f"specrunner/{__version__}", "Accept-Encoding": "gzip, deflate"}
        headers = {**common, "Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        # Requests are built here and handed to http.send(): no client default headers or
        # cookies, so an image download (another host) carries only `common`, never the key.
        self._headers = httpx.Headers(headers)
        self._download_headers = httpx.Headers(common)
        self._timeouts: dict[float, dict[str, Any]] = {}
        self.clock = clock

    def _timeout(self, seconds: float) -> dict[str, Any]:
        """The httpx timeout extension for `seconds` (connect, read, write and pool)."""
        ext = self._timeouts.get(seconds)
        if ext is None:
            ext = self._timeouts[seconds] = {"timeout": httpx.Timeout(seconds).as_dict()}
        return ext

    def __repr__(self) -> str:  # never show the headers
        return f"RunwareClient({self.base_url!r})"

    async def send(self, tasks: list[dict[str, Any]], timeout: float) -> Reply:
        """POST `tasks`; return the parsed reply, or raise Fault for a transient outcome.

        A readable envelope is returned whatever the HTTP status (errors are per task);
        408/429/5xx without a readable envelope, timeouts, resets and non-JSON bodies raise.
        """
        body = json.dumps(tasks, separators=(",", ":")).encode()
        t0 = self.clock()
        request = httpx.Request("POST", self._url, headers=self._headers, content=body,
                                extensions=self._timeout(timeout))
        # The scope also bounds the whole exchange where httpx's per-operation timeouts do
        # not (a trickling server; ASGITransport ignores them altogether).
        try:
            with anyio.move_on_after(timeout) as scope:
                resp = await self.http.send(request)  # read in full, connection handed back
            if scope.cancelled_caught:
                raise TimeoutError
        except TimeoutError:
            raise Fault(RunnerCode.REQUEST_TIMEOUT, "request timed out", ambiguous=True) from None
        except httpx.ConnectError:
            raise Fault(RunnerCode.CONNECT_ERROR, "could not connect", ambiguous=False) from None
        except httpx.ConnectTimeout:
            raise Fault(RunnerCode.CONNECT_TIMEOUT, "connect timed out", ambiguous=False) from None
        except httpx.TimeoutException as exc:
            raise Fault(RunnerCode.REQUEST_TIMEOUT, f"request timed out ({type(exc).__name__})",
                        ambiguous=True) from None
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise Fault(RunnerCode.CONNECTION_LOST, f"connection failed ({type(exc).__name__})",
                        ambiguous=True) from None
        latency = self.clock() - t0
        try:
            env = runware.parse_envelope(resp.content)
        except runware.UnreadableBody as exc:
            code = f"http{resp.status_code}" if resp.status_code >= 400 else \
                RunnerCode.UNREADABLE_BODY
            raise Fault(code, f"HTTP {resp.status_code}: {exc}", ambiguous=True,
                        status=resp.status_code, retry_after=_retry_after(resp)) from None
        if resp.status_code in TRANSIENT_STATUS and not env.data and not env.errors:
            raise Fault(f"http{resp.status_code}", f"HTTP {resp.status_code}", ambiguous=True,
                        status=resp.status_code, retry_after=_retry_after(resp))
        return Reply(resp.status_code, env, latency)

    async def upload(self, image: str, task_uuid: str, timeout: float) -> Reply:
        """Send one imageUpload task (`image` is a data URI)."""
        return await self.send([{"taskType": "imageUpload", "taskUUID": task_uuid,
                                 "image": image}], timeout)

    async def download(self, url: str, max_bytes: int, timeout: float) -> tuple[bytes, str]:
        """GET an output image (no credentials sent), capped at `max_bytes`, checked to be a
        complete image: (bytes, format). Relative URLs resolve against the API's base URL
        (the local server hands those out).
        """
        if not url.startswith(("https://", "http://")):
            url = str(self._url.join(url))
        with anyio.move_on_after(timeout):
            return await self._download(url, max_bytes, timeout)
        raise DownloadError(RunnerCode.DOWNLOAD_TIMEOUT, "download timed out", transient=True)

    async def _download(self, url: str, max_bytes: int, timeout: float) -> tuple[bytes, str]:
        request = httpx.Request("GET", url, headers=self._download_headers,
                                extensions=self._timeout(timeout))
        try:
            resp = await self.http.send(request, stream=True)
            try:
                if resp.status_code != 200:
                    raise DownloadError(f"http{resp.status_code}",
                                        f"download failed: HTTP {resp.status_code}",
                                        transient=resp.status_code in TRANSIENT_STATUS
                                        or resp.status_code == 404, status=resp.status_code)
                declared = resp.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise DownloadError(RunnerCode.TOO_LARGE,
                                        f"download larger than {max_bytes} bytes", transient=False)
                chunks, size = [], 0
                async for chunk in resp.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise DownloadError(RunnerCode.TOO_LARGE,
                                            f"download larger than {max_bytes} bytes",
                                            transient=False)
                    chunks.append(chunk)
            finally:
                await resp.aclose()
        except httpx.HTTPError as exc:
            raise DownloadError(RunnerCode.DOWNLOAD_FAILED,
                                f"download failed ({type(exc).__name__})", transient=True) from None
        data = b"".join(chunks)
        return data, check_image(data)


_PNG_SIG = b"\x89PNG\r\n\x1a\n"


def _not_an_image(why: str) -> DownloadError:
    return DownloadError(RunnerCode.NOT_AN_IMAGE, f"output is not a readable image ({why})",
                         transient=True)


def _check_png(data: bytes) -> None:
    """Walk the chunks: IHDR first, every CRC right, IEND last and at the very end."""
    pos, first, n = 8, True, len(data)
    while True:
        if pos + 12 > n:
            raise _not_an_image("PNG cut inside a chunk: truncated")
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n:
            raise _not_an_image("PNG cut inside a chunk: truncated")
        if first and (kind != b"IHDR" or length != 13):
            raise _not_an_image("PNG without IHDR")
        first = False
        if zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            raise _not_an_image(f"PNG chunk {kind!r} fails its CRC")
        if kind == b"IEND":
            return
        pos = end


def check_image(data: bytes) -> str:
    """Return the image format of `data` (PNG, JPEG, WEBP...); DownloadError (transient,
    e.g. truncated) if it is not a complete image.

    Cheap structural checks instead of a full decode (which costs tens of milliseconds of
    CPU per megapixel, on the event loop): PNG must have IHDR first, every chunk CRC right
    and IEND last; JPEG and WEBP headers must parse (Pillow reads the size) and the file
    must be complete (JPEG's end-of-image marker, WEBP's RIFF length). Other formats are
    decoded in full.
    """
    if data.startswith(_PNG_SIG):
        _check_png(data)
        return "PNG"
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = str(im.format)
            if fmt == "JPEG":
                if not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    raise _not_an_image("JPEG without its end-of-image marker: truncated")
            elif fmt == "WEBP":
                if len(data) < 12 or int.from_bytes(data[4:8], "little") + 8 > len(data):
                    raise _not_an_image("WEBP shorter than its RIFF length: truncated")
            else:
                im.load()
    except DownloadError:
        raise
    except Exception as exc:
        raise _not_an_image(type(exc).__name__) from None
    return fmt


def inline_output(item: dict[str, Any], max_bytes: int) -> tuple[bytes, str] | None:
    """Decode an imageBase64Data / imageDataURI result item into (bytes, format); None if it
    carries a URL instead."""
    raw = item.get("imageBase64Data") or item.get("imageDataURI")
    if not isinstance(raw, str):
        return None
    if raw.startswith("data:"):
        raw = raw.partition(",")[2]
    if len(raw) * 3 // 4 > max_bytes:
        raise DownloadError(RunnerCode.TOO_LARGE, f"inline output larger than {max_bytes} bytes",
                            transient=False)
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise DownloadError(RunnerCode.BAD_BASE64, "inline output is not valid base64",
                            transient=True) from None
    return data, check_image(data)


def data_uri(data: bytes, fmt: str) -> str:
    """A data URI for image bytes of Pillow format `fmt`."""
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}.get(fmt, "image/png")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
