"""Runware's official Python SDK (`runware-sdk`) against the local server, over both of its
transports: REST (`http_base_url`) and WebSocket (`ws_base_url`, the SDK's default).

The server runs under uvicorn on 127.0.0.1; the SDK is pointed at it through its settable
URLs. Every test asserts on what the server's ledger recorded (`server.stats()`), not on
SDK counters. A guard refuses any name lookup but loopback, so the SDK cannot reach
Runware's registry or API from here (it does not try to: `taskType` is always given and
`ideogram:3@3` is an AIR, which the SDK sends as is).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import socket
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from PIL import Image, ImageChops, ImageDraw
from runware import Runware, RunwareError
from test_golden import documented_requests

from specrunner.local import FaultConfig, LocalConfig, LocalServer, create_app
from specrunner.local.server import running
from specrunner.local.testing import image_data_uri, inference_task, new_uuid, seed_for

KEY = "sdk-key"
TRANSPORTS = ["rest", "websocket"]


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Fail any lookup of a name other than loopback (the internet is off limits)."""
    tried: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name not in (None, "127.0.0.1", "localhost", "::1"):
            tried.append(str(name))
            raise OSError(f"test refused a lookup of {name}")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield tried
    assert tried == []


@contextlib.contextmanager
def served(config: LocalConfig | None = None) -> Iterator[tuple[LocalServer, str]]:
    server = create_app(config or LocalConfig(api_key=KEY))
    with running(server) as url:
        yield server, url


@contextlib.asynccontextmanager
async def sdk(url: str, transport: str, key: str = KEY) -> AsyncIterator[Runware]:
    """The official client, aimed at the local server (short retry delays, 60 s timeouts)."""
    async with Runware(api_key=key, transport=transport, http_base_url=f"{url}/v1",
                       ws_base_url=url.replace("http://", "ws://") + "/v1",
                       retry_delay=50, timeout=60_000, poll_timeout=60_000) as rw:
        yield rw


def task(**overrides: Any) -> dict[str, Any]:
    return inference_task(**overrides)


def used_transport(server: LocalServer, transport: str) -> None:
    """The SDK really spoke the transport under test (and only that one, for the API)."""
    stats = server.stats()
    if transport == "websocket":
        assert stats.websocket_messages > 0 and stats.requests_by_type["authentication"] >= 1
        assert stats.http_requests == stats.requests_by_type.get("imageDownload", 0)
    else:
        assert stats.websocket_connections == 0 and stats.http_requests > 0


@pytest.mark.parametrize("delivery", ["sync", "async"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_four_documented_requests(transport: str, delivery: str) -> None:
    docs = documented_requests()
    with served() as (server, url):
        async def main() -> list[list[dict[str, Any]]]:
            async with sdk(url, transport) as rw:
                return await asyncio.gather(*(rw.run({**doc, "deliveryMethod": delivery})
                                              for doc in docs))
        answers = asyncio.run(main())
        for doc, items in zip(docs, answers, strict=True):
            (item,) = items
            assert item["taskUUID"] == doc["taskUUID"] and item["taskType"] == "imageInference"
            assert set(item) >= {"imageUUID", "imageURL", "seed"}
            image = httpx.get(item["imageURL"])
            assert image.headers["content-type"] == "image/jpeg"  # Runware's default format
            assert Image.open(io.BytesIO(image.content)).format == "JPEG"
    stats = server.stats()
    assert stats.charges == {doc["taskUUID"]: Decimal("0.08") for doc in docs}
    assert stats.duplicate_attempts == {}
    polls = stats.requests_by_type.get("getResponse", 0)
    assert (polls >= 4) if delivery == "async" else (polls == 0)
    used_transport(server, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_number_results_gives_that_many_images_billed_once(transport: str) -> None:
    sent = task(numberResults=3, includeCost=True)
    with served() as (server, url):
        async def main() -> list[dict[str, Any]]:
            async with sdk(url, transport) as rw:
                return await rw.run(sent)  # the SDK's default delivery: async
        items = asyncio.run(main())
    assert len(items) == 3 and len({i["imageUUID"] for i in items}) == 3
    assert {i["cost"] for i in items} == {0.08}
    stats = server.stats()
    assert stats.charges == {sent["taskUUID"]: Decimal("0.24")} and stats.images_billed == 3
    used_transport(server, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_uploaded_image_seeds_an_edit(transport: str) -> None:
    seed = Image.new("RGB", (480, 320), (20, 110, 180))
    ImageDraw.Draw(seed).ellipse([40, 40, 300, 280], fill=(230, 190, 30))
    mask = Image.new("L", seed.size, 0)
    ImageDraw.Draw(mask).rectangle([160, 100, 319, 219], fill=255)
    with served() as (server, url):
        async def main() -> bytes:
            async with sdk(url, transport) as rw:
                up_seed = await rw.image_upload({"image": image_data_uri(seed)})
                up_mask = await rw.image_upload({"image": image_data_uri(mask)})
                items = await rw.run(task(
                    inputs={"seedImage": up_seed[0]["imageUUID"],
                            "maskImage": up_mask[0]["imageUUID"]},
                    outputType="base64Data", outputFormat="PNG", deliveryMethod="sync"))
                assert items[0]["simulator"]["placeholderInputs"] is False
                return base64.b64decode(items[0]["imageBase64Data"])
        png = asyncio.run(main())
    with Image.open(io.BytesIO(png)) as out:
        assert out.format == "PNG" and out.size == seed.size
        kept = ImageChops.difference(out.convert("RGB"), seed)
        assert kept.crop((0, 0, 480, 100)).getbbox() is None  # unmasked pixels untouched
        assert kept.crop((160, 100, 320, 220)).getbbox() is not None  # the mask was edited
    stats = server.stats()
    assert stats.requests_by_type["imageUpload"] == 2 and len(stats.charges) == 1
    used_transport(server, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_wrong_key_is_refused_before_anything_runs(transport: str) -> None:
    with served() as (server, url):
        async def main() -> RunwareError:
            with pytest.raises(RunwareError) as info:
                async with sdk(url, transport, key="not-the-key") as rw:
                    await rw.run(task(deliveryMethod="sync"))
            return info.value
        error = asyncio.run(main())
    assert error.code == "auth" and "not-the-key" not in str(error)
    assert "invalid API key" in str(error)
    stats = server.stats()
    assert stats.charges == {} and "imageInference" not in stats.requests_by_type


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_bad_enum_is_a_validation_error_that_costs_nothing(transport: str) -> None:
    bad = task(outputFormat="GIF", deliveryMethod="sync")
    with served() as (server, url):
        async def main() -> RunwareError:
            async with sdk(url, transport) as rw:
                with pytest.raises(RunwareError) as info:
                    await rw.run(bad)
                return info.value
        error = asyncio.run(main())
    assert (error.code, error.parameter, error.task_uuid) == (
        "validation", "outputFormat", bad["taskUUID"])
    assert server.stats().charges == {}
    used_transport(server, transport)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_reused_task_uuid_is_refused_and_its_results_recovered(transport: str) -> None:
    sent = task(deliveryMethod="sync")
    with served() as (server, url):
        async def main() -> tuple[list[dict[str, Any]], RunwareError, list[dict[str, Any]]]:
            async with sdk(url, transport) as rw:
                first = await rw.run(sent)
                with pytest.raises(RunwareError) as info:
                    await rw.run(sent)
                recovered = await rw.get_response({"taskUUID": sent["taskUUID"]})
                return first, info.value, recovered
        first, error, recovered = asyncio.run(main())
    assert (error.code, error.parameter) == ("validation", "taskUUID")
    assert "already accepted" in str(error)
    assert [(i["imageUUID"], i["status"]) for i in recovered] == [(first[0]["imageUUID"],
                                                                   "success")]
    stats = server.stats()
    assert stats.charges == {sent["taskUUID"]: Decimal("0.08")}
    assert stats.duplicate_attempts == {sent["taskUUID"]: 1}
    used_transport(server, transport)


async def run_or_recover(rw: Runware, sent: dict[str, Any]) -> list[dict[str, Any]]:
    """What an SDK user does when a run fails after the task may have been billed: poll
    getResponse with the same taskUUID (never re-submit under a new one)."""
    try:
        return await rw.run(sent)
    except RunwareError as exc:
        # REST: the SDK's retry of the dropped POST meets conflictTaskUUID; WebSocket: a sync
        # task in flight during a reconnect fails with connectionLost
        assert exc.code in ("validation", "connection"), repr(exc)
    for _ in range(50):  # bounded
        items = [i for i in await rw.get_response({"taskUUID": sent["taskUUID"]})
                 if i.get("status") == "success"]
        if len(items) == sent["numberResults"]:
            return items
        await asyncio.sleep(0.2)
    raise AssertionError(f"task {sent['taskUUID']} never answered")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connection_drops_after_billing_never_bill_twice(transport: str) -> None:
    # the first and third requests (POSTs, or WebSocket messages) are answered by a dropped
    # connection after their tasks were billed; more drops may follow (rate 0.3)
    faults = seed_for(FaultConfig(rates={"drop": 0.3}), ["drop", None, "drop"])
    tasks = [task(numberResults=1 + i % 2, deliveryMethod="async" if i % 2 else "sync")
             for i in range(6)]
    with served(LocalConfig(api_key=KEY, faults=faults)) as (server, url):
        async def main() -> list[list[dict[str, Any]]]:
            async with sdk(url, transport) as rw:
                return await asyncio.gather(*(run_or_recover(rw, t) for t in tasks))
        answers = asyncio.run(main())
    for sent, items in zip(tasks, answers, strict=True):
        assert len(items) == sent["numberResults"]
        assert {i["taskUUID"] for i in items} == {sent["taskUUID"]}
    stats = server.stats()
    assert stats.faults_injected["drop"] >= 2
    assert stats.charges == {t["taskUUID"]: Decimal("0.08") * t["numberResults"] for t in tasks}
    assert stats.total_billed_usd == Decimal("0.72") and stats.images_billed == 9
    if transport == "websocket":  # the SDK came back, on the same session every time
        assert stats.sessions_resumed >= 1
        assert stats.websocket_connections == stats.sessions_resumed + 1
    else:  # every dropped POST was retried by the SDK and refused as a duplicate
        assert stats.duplicate_attempts_total >= 2
    used_transport(server, transport)


def test_one_task_over_each_transport_shares_one_ledger() -> None:
    sent = task(deliveryMethod="sync")
    with served() as (server, url):
        async def main() -> RunwareError:
            async with sdk(url, "websocket") as ws_client, sdk(url, "rest") as rest_client:
                await ws_client.run(sent)
                with pytest.raises(RunwareError) as info:
                    await rest_client.run(sent)
                return info.value
        error = asyncio.run(main())
    assert error.parameter == "taskUUID"
    stats = server.stats()
    assert stats.charges == {sent["taskUUID"]: Decimal("0.08")}
    assert stats.duplicate_attempts == {sent["taskUUID"]: 1}


def test_an_upload_task_uuid_reused_over_the_other_transport_conflicts() -> None:
    image = image_data_uri(Image.new("RGB", (64, 64), (1, 2, 3)))
    uuid = new_uuid()
    with served() as (server, url):
        async def main() -> None:
            async with sdk(url, "rest") as rest_client, sdk(url, "websocket") as ws_client:
                await rest_client.image_upload({"image": image, "taskUUID": uuid})
                with pytest.raises(RunwareError):
                    await ws_client.image_upload({"image": image, "taskUUID": uuid})
        asyncio.run(main())
    assert server.stats().duplicate_attempts == {uuid: 1}
