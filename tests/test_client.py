"""RunwareClient: fault translation, backoff, retry budget, Retry-After, downloads, the key.

Driven by httpx.MockTransport handlers: no network, no sleeps, no wall-clock assertions.
"""

from __future__ import annotations

import base64
import io
import random

import anyio
import httpx
import pytest
from PIL import Image
from test_run_support import IMAGE

from specrunner.run.client import DownloadError, Fault, RunwareClient, check_image, inline_output
from specrunner.run.context import RETRY_AFTER_CAP_S, Backoff, RetryBudget

KEY = "client-test-key-0123456789"
API = "https://api.example.test/v1"


def image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (30, 140, 220)).save(buf, fmt)
    return buf.getvalue()


def call(handler, coro_fn):
    """Run `coro_fn(client)` against a RunwareClient over a MockTransport(handler)."""
    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            return await coro_fn(RunwareClient(http, API, KEY))
    return anyio.run(main)


def send(handler, timeout: float = 5.0):
    return call(handler, lambda c: c.send([{"taskType": "getResponse",
                                            "taskUUID": "x"}], timeout))


def fault_of(handler) -> Fault:
    with pytest.raises(Fault) as info:
        send(handler)
    return info.value


# -- fault translation ------------------------------------------------------------------------
@pytest.mark.parametrize("exc, code, ambiguous", [
    (httpx.ConnectError, "connectError", False),
    (httpx.ConnectTimeout, "connectTimeout", False),  # nothing was sent: not ambiguous
    (httpx.ReadTimeout, "requestTimeout", True),
    (httpx.WriteTimeout, "requestTimeout", True),
    (httpx.ReadError, "connectionLost", True),
    (httpx.RemoteProtocolError, "connectionLost", True),
])
def test_transport_errors_become_faults(exc, code, ambiguous) -> None:
    def handler(request):
        raise exc("boom", request=request)

    f = fault_of(handler)
    assert (f.code, f.ambiguous, f.status) == (code, ambiguous, None)
    assert KEY not in str(f)


def test_connect_failures_are_not_ambiguous_but_read_failures_are() -> None:
    # nothing reached the server on a connect failure: it cannot have been billed
    def refused(request):
        raise httpx.ConnectError("refused", request=request)

    def reset(request):
        raise httpx.ReadError("reset", request=request)

    assert fault_of(refused).ambiguous is False
    assert fault_of(reset).ambiguous is True


def test_a_hung_transport_is_cut_by_the_client_deadline() -> None:
    async def handler(request):
        await anyio.sleep_forever()

    async def go(c: RunwareClient):
        return await c.send([{"taskType": "getResponse", "taskUUID": "x"}], 0.01)

    with pytest.raises(Fault) as info:
        call(handler, go)
    assert (info.value.code, info.value.ambiguous) == ("requestTimeout", True)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_transient_status_without_an_envelope_is_a_fault(status: int) -> None:
    f = fault_of(lambda r: httpx.Response(status, text="<html>gateway</html>"))
    assert (f.code, f.status, f.ambiguous) == (f"http{status}", status, True)


def test_unreadable_bodies_are_ambiguous_faults_never_crashes() -> None:
    for body in (b"<html>oops", b'{"data": [', b"", b'"just a string"', b'{"other": 1}'):
        f = fault_of(lambda r, b=body: httpx.Response(200, content=b))
        assert f.code == "unreadableBody" and f.ambiguous and f.status == 200


def test_a_readable_envelope_is_returned_whatever_the_status() -> None:
    body = {"errors": [{"code": "invalidPositivePrompt", "message": "no", "taskUUID": "x"}]}
    reply = send(lambda r: httpx.Response(400, json=body))
    assert reply.status == 400 and reply.envelope.errors[0]["code"] == "invalidPositivePrompt"
    # a 503 that still carries Runware JSON is per-task information, not a blind fault
    reply = send(lambda r: httpx.Response(503, json={"errors": [{"code": "serviceUnavailable",
                                                                 "taskUUID": "x"}]}))
    assert reply.status == 503 and reply.envelope.errors[0]["code"] == "serviceUnavailable"
    mixed = {"data": [{"taskUUID": "a", "imageUUID": "i"}],
             "errors": [{"code": "providerError", "taskUUID": "b"}]}
    reply = send(lambda r: httpx.Response(200, json=mixed))
    assert len(reply.envelope.data) == 1 and len(reply.envelope.errors) == 1


# -- Retry-After -------------------------------------------------------------------------------
def test_retry_after_is_read_from_the_fault() -> None:
    f = fault_of(lambda r: httpx.Response(429, headers={"Retry-After": "7"}, text="busy"))
    assert f.retry_after == 7.0
    f = fault_of(lambda r: httpx.Response(503, headers={"Retry-After": "soon"}, text="busy"))
    assert f.retry_after is None  # unparseable (or an HTTP date): ignored, never a crash
    f = fault_of(lambda r: httpx.Response(503, headers={"Retry-After": "-3"}, text="busy"))
    assert f.retry_after == 0.0


def test_retry_after_is_honoured_and_capped() -> None:
    b = Backoff(base=0.5, cap=30.0)
    rng = random.Random(0)
    assert b.delay(0, rng, retry_after=10.0) == 10.0  # longer than the jitter: honoured
    assert b.delay(0, rng, retry_after=10_000.0) == RETRY_AFTER_CAP_S == 120.0
    # shorter than the drawn jitter: the jitter wins (never wait less than backoff says)
    rng_a, rng_b = random.Random(5), random.Random(5)
    assert b.delay(6, rng_a, retry_after=0.001) == b.delay(6, rng_b)


# -- backoff and retry budget ------------------------------------------------------------------
class RecordingRandom(random.Random):
    """Answers uniform(a, b) with a fixed fraction of the range, and records the bounds."""

    def __init__(self, fraction: float) -> None:
        super().__init__(0)
        self.fraction = fraction
        self.bounds: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.bounds.append((a, b))
        return a + (b - a) * self.fraction


def test_full_jitter_bounds_double_up_to_the_cap() -> None:
    b = Backoff(base=0.5, cap=30.0)
    rng = RecordingRandom(1.0)  # the top of each range
    delays = [b.delay(n, rng) for n in range(9)]
    assert rng.bounds == [(0, min(30.0, 0.5 * 2 ** n)) for n in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    low = RecordingRandom(0.0)
    assert [b.delay(n, low) for n in range(4)] == [0.0] * 4  # full jitter reaches zero


def test_full_jitter_draws_stay_within_bounds_for_any_seed() -> None:
    b = Backoff(base=0.25, cap=4.0)
    for seed in range(200):
        rng = random.Random(seed)
        for n in range(8):
            assert 0.0 <= b.delay(n, rng) <= min(4.0, 0.25 * 2 ** n)


def test_retry_budget_allows_ratio_of_first_sends_plus_floor() -> None:
    budget = RetryBudget(ratio=0.2, floor=2.0)
    for _ in range(50):
        budget.on_send()
    granted = 0
    while budget.try_spend():
        granted += 1
    assert granted == 12 == budget.spent  # 2 + 0.2 x 50
    assert not budget.try_spend()
    for _ in range(5):  # new first sends earn one more retry
        budget.on_send()
    assert budget.try_spend() and not budget.try_spend()


def test_retry_budget_with_zero_ratio_is_just_the_floor() -> None:
    budget = RetryBudget(ratio=0.0, floor=3.0)
    for _ in range(1000):
        budget.on_send()
    assert [budget.try_spend() for _ in range(4)] == [True, True, True, False]


# -- downloads ---------------------------------------------------------------------------------
def download(handler, url: str = "https://cdn.example.test/i.png", cap: int = 1_000_000):
    return call(handler, lambda c: c.download(url, cap, 5.0))


def download_error(handler, **kw) -> DownloadError:
    with pytest.raises(DownloadError) as info:
        download(handler, **kw)
    return info.value


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_download_returns_the_exact_bytes_of_an_image(fmt: str) -> None:
    data = image_bytes(fmt)
    assert download(lambda r: httpx.Response(200, content=data)) == (data, fmt)


def test_download_over_the_cap_is_refused_declared_or_not() -> None:
    data = image_bytes("PNG")
    declared = download_error(lambda r: httpx.Response(200, content=data), cap=len(data) - 1)
    assert declared.code == "tooLarge" and not declared.transient

    async def chunks():  # no Content-Length: the cap applies while streaming
        for _ in range(10):
            yield b"\0" * 1000

    streamed = download_error(lambda r: httpx.Response(200, content=chunks()), cap=5000)
    assert streamed.code == "tooLarge" and not streamed.transient


def test_download_of_something_that_is_not_an_image_is_rejected() -> None:
    for body in (b"<html>not found</html>", b"", b"\x89PNG\r\n\x1a\n garbage"):
        err = download_error(lambda r, b=body: httpx.Response(200, content=b))
        assert err.code == "notAnImage" and err.transient


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_truncated_images_are_rejected_as_transient(fmt: str) -> None:
    data = image_bytes(fmt)
    for cut in (len(data) // 2, len(data) - 2):
        err = download_error(lambda r, d=data[:cut]: httpx.Response(200, content=d))
        assert err.code == "notAnImage" and err.transient


def test_a_corrupt_png_chunk_is_rejected() -> None:
    data = bytearray(image_bytes("PNG"))
    data[40] ^= 0xFF  # inside IDAT: its CRC no longer matches
    with pytest.raises(DownloadError, match="CRC"):
        check_image(bytes(data))


@pytest.mark.parametrize("status, transient", [(404, True), (500, True), (503, True),
                                               (403, False), (410, False)])
def test_download_http_errors(status: int, transient: bool) -> None:
    err = download_error(lambda r: httpx.Response(status))
    assert err.code == f"http{status}" and err.transient is transient


def test_download_transport_errors_are_transient() -> None:
    def handler(request):
        raise httpx.ReadError("reset", request=request)

    err = download_error(handler)
    assert err.code == "downloadFailed" and err.transient


def test_inline_outputs_are_decoded_capped_and_checked() -> None:
    b64 = base64.b64encode(IMAGE).decode()
    assert inline_output({"imageBase64Data": b64}, 10_000) == (IMAGE, "PNG")
    assert inline_output({"imageDataURI": f"data:image/png;base64,{b64}"}, 10_000) == (IMAGE,
                                                                                       "PNG")
    assert inline_output({"imageURL": "https://x"}, 10_000) is None
    with pytest.raises(DownloadError) as info:
        inline_output({"imageBase64Data": b64}, len(IMAGE) // 2)
    assert info.value.code == "tooLarge"
    with pytest.raises(DownloadError) as info:
        inline_output({"imageBase64Data": "not base64!!"}, 10_000)
    assert info.value.code == "badBase64"
    with pytest.raises(DownloadError) as info:
        inline_output({"imageBase64Data": base64.b64encode(b"hello").decode()}, 10_000)
    assert info.value.code == "notAnImage"


# -- the key -----------------------------------------------------------------------------------
def test_key_only_in_the_authorization_header_of_api_posts() -> None:
    seen: list[httpx.Request] = []
    data = image_bytes("PNG")

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            return httpx.Response(200, json={"data": []})
        return httpx.Response(200, content=data)

    async def go(c: RunwareClient):
        await c.send([{"taskType": "getResponse", "taskUUID": "x"}], 5.0)
        await c.upload("data:image/png;base64,AAAA", "u", 5.0)
        await c.download("https://cdn.other-host.test/a.png", 10**6, 5.0)
        await c.download("/image/rel.png", 10**6, 5.0)  # relative: resolved on the API host
        return repr(c)

    shown = call(handler, go)
    posts = [r for r in seen if r.method == "POST"]
    gets = [r for r in seen if r.method == "GET"]
    assert len(posts) == 2 and len(gets) == 2
    for r in posts:
        assert r.headers["authorization"] == f"Bearer {KEY}"
        assert KEY.encode() not in r.content and KEY not in str(r.url)
    for r in gets:  # downloads never carry the key, whatever the host
        assert "authorization" not in r.headers and KEY not in str(r.url)
    assert str(gets[0].url) == "https://cdn.other-host.test/a.png"
    assert str(gets[1].url) == "https://api.example.test/image/rel.png"
    assert KEY not in shown


def test_no_key_sends_no_authorization_header() -> None:
    seen: list[httpx.Request] = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200, json={"data": []})

    async def main():
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            await RunwareClient(http, API, None).send([{"taskType": "getResponse"}], 5.0)

    anyio.run(main)
    assert "authorization" not in seen[0].headers
