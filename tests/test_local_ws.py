"""The local server's WebSocket API, frame by frame, with a plain `websockets` client.

Every test runs uvicorn on 127.0.0.1 (an ephemeral port) and asserts on the frames received
and on the server's ledger. tests/test_sdk_conformance.py drives the same endpoint with
Runware's official SDK.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from specrunner.local import FaultConfig, Latency, LocalConfig, LocalServer, create_app
from specrunner.local.server import running
from specrunner.local.testing import FakeClock, inference_task, new_uuid, seed_for
from specrunner.runware import is_uuid4

KEY = "ws-key"


@contextlib.contextmanager
def served(config: LocalConfig | None = None) -> Iterator[tuple[LocalServer, str]]:
    server = create_app(config or LocalConfig(api_key=KEY))
    with running(server) as url:
        yield server, url


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/v1"


def recv(ws: ClientConnection, timeout: float = 10) -> dict[str, Any]:
    return json.loads(ws.recv(timeout=timeout))


def login(ws: ClientConnection, key: str = KEY, session: str | None = None) -> dict[str, Any]:
    auth: dict[str, Any] = {"taskType": "authentication", "apiKey": key}
    if session:
        auth["connectionSessionUUID"] = session
    ws.send(json.dumps([auth]))
    (item,) = recv(ws)["data"]
    assert item["taskType"] == "authentication" and is_uuid4(item["connectionSessionUUID"])
    return item


def close_code(ws: ClientConnection) -> int:
    """Read until the server closes; the close code it sent."""
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(100):
            ws.recv(timeout=10)
    assert info.value.rcvd is not None
    return info.value.rcvd.code


def test_answers_are_pushed_per_task_as_each_completes() -> None:
    # every imageInference takes 1 s: the async task's ack must overtake the sync task
    # sent before it in the same message, each task gets its own frame, and the ack comes
    # while the sync task is still being processed (not with it, at the end of the message)
    faults = FaultConfig(processing=Latency("fixed", 1.0))
    with served(LocalConfig(api_key=KEY, faults=faults)) as (server, url), \
            connect(ws_url(url)) as ws:
        login(ws)
        sync, late = inference_task(), inference_task(deliveryMethod="async", numberResults=2)
        ws.send(json.dumps([sync, late]))
        first = recv(ws)
        assert first == {"data": [{"taskType": "imageInference", "taskUUID": late["taskUUID"]}]}
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.1)
        second = recv(ws)
        (item,) = second["data"]
        assert item["taskUUID"] == sync["taskUUID"] and item["imageURL"].startswith(url)
        assert httpx.get(item["imageURL"]).content[:3] == b"\xff\xd8\xff"  # JPG by default
        time.sleep(1.1)
        ws.send(json.dumps([{"taskType": "getResponse", "taskUUID": late["taskUUID"]}]))
        polled = recv(ws)["data"]
        assert [i["status"] for i in polled] == ["success", "success"]
        assert len({i["imageUUID"] for i in polled}) == 2
    stats = server.stats()
    assert stats.charges == {sync["taskUUID"]: Decimal("0.08"), late["taskUUID"]: Decimal("0.16")}
    assert stats.websocket_connections == 1 and stats.websocket_messages == 3
    assert stats.requests_by_type == {"authentication": 1, "imageInference": 2,
                                      "getResponse": 1, "imageDownload": 1}


@pytest.mark.parametrize("first, code", [
    ([{"taskType": "authentication", "apiKey": "wrong-key"}], "invalidApiKey"),
    ([{"taskType": "authentication", "apiKey": ""}], "invalidApiKey"),
    ([{"taskType": "authentication"}], "invalidApiKey"),
    ([inference_task()], "missingApiKey"),
    ("not json", "missingApiKey"),
])
def test_a_connection_must_authenticate_first_with_a_valid_key(first: Any, code: str) -> None:
    with served() as (server, url), connect(ws_url(url)) as ws:
        ws.send(first if isinstance(first, str) else json.dumps(first))
        frame = ws.recv(timeout=10)
        (error,) = json.loads(frame)["errors"]
        assert (error["code"], error["taskType"]) == (code, "authentication")
        assert "wrong-key" not in frame
        assert close_code(ws) == 1008
    stats = server.stats()
    assert stats.charges == {} and "imageInference" not in stats.requests_by_type


def test_any_non_empty_key_mode_and_ping_pong() -> None:
    with served(LocalConfig()) as (server, url), connect(ws_url(url)) as ws:
        login(ws, key="anything")
        ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert recv(ws) == {"data": [{"taskType": "ping", "pong": True}]}
    assert server.stats().requests_by_type == {"authentication": 1, "ping": 1}


def test_a_silent_connection_is_closed_after_the_idle_time() -> None:
    with served(LocalConfig(api_key=KEY, ws_idle_s=0.3)) as (_, url), \
            connect(ws_url(url)) as ws:
        login(ws)
        t0 = time.monotonic()
        assert close_code(ws) == 1000
        assert time.monotonic() - t0 >= 0.25


def test_the_websocket_lives_at_v1_only() -> None:
    with served() as (_, url):
        with pytest.raises(InvalidStatus) as info:
            connect(url.replace("http://", "ws://") + "/v2").close()
        assert info.value.response.status_code == 403


def test_errors_are_scoped_to_their_task_and_keep_the_connection() -> None:
    with served() as (server, url), connect(ws_url(url)) as ws:
        login(ws)
        bad = inference_task(outputFormat="GIF")
        ws.send(json.dumps([bad]))
        (error,) = recv(ws)["errors"]
        assert (error["code"], error["taskUUID"], error["parameter"]) == (
            "invalidOutputFormat", bad["taskUUID"], "outputFormat")
        assert error["allowedValues"] == ["JPG", "PNG", "WEBP"]
        ws.send("{not json")
        assert recv(ws)["errors"][0]["code"] == "invalidPayload"
        ws.send(json.dumps([{"taskType": "ping", "ping": True}]))
        assert recv(ws)["data"][0]["pong"] is True
    assert server.stats().charges == {}


def test_rest_and_websocket_share_uploads_tasks_and_the_ledger() -> None:
    with served() as (server, url), connect(ws_url(url)) as ws, \
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as rest:
        login(ws)
        sent = inference_task(deliveryMethod="async")
        ws.send(json.dumps([sent]))
        assert recv(ws)["data"][0]["taskUUID"] == sent["taskUUID"]
        again = rest.post("/v1", json=[sent])
        assert again.status_code == 400 and again.json()["errors"][0]["code"] == \
            "conflictTaskUUID"
        polled = rest.post("/v1", json=[{"taskType": "getResponse",
                                         "taskUUID": sent["taskUUID"]}]).json()["data"]
        assert polled[0]["status"] == "success"
        ws.send(json.dumps([sent]))  # a re-send over the socket conflicts as well
        assert recv(ws)["errors"][0]["code"] == "conflictTaskUUID"
    stats = server.stats()
    assert stats.charges == {sent["taskUUID"]: Decimal("0.08")}
    assert stats.duplicate_attempts == {sent["taskUUID"]: 2}


def test_a_drop_after_billing_keeps_the_answer_for_the_resumed_session() -> None:
    faults = seed_for(FaultConfig(rates={"drop": 0.5}), ["drop", None])
    with served(LocalConfig(api_key=KEY, faults=faults)) as (server, url):
        task = inference_task()
        with connect(ws_url(url)) as ws:
            session = login(ws)["connectionSessionUUID"]
            ws.send(json.dumps([task]))
            assert close_code(ws) == 1011
        assert server.stats().charges == {task["taskUUID"]: Decimal("0.08")}
        with connect(ws_url(url)) as other:  # another key's client cannot take the session
            pass
        with connect(ws_url(url)) as ws:
            item = login(ws, session=session)
            assert item["connectionSessionUUID"] == session
            assert item["simulator"]["resumedAnswers"] == 1
            (result,) = recv(ws)["data"]  # the answer lost with the connection
            assert result["taskUUID"] == task["taskUUID"] and "imageURL" in result
            ws.send(json.dumps([task]))  # the client's retry, as after any lost answer
            assert recv(ws)["errors"][0]["code"] == "conflictTaskUUID"
        del other
    stats = server.stats()
    assert stats.charges == {task["taskUUID"]: Decimal("0.08")}
    assert stats.faults_injected == {"drop": 1} and stats.sessions_resumed == 1
    assert stats.duplicate_attempts == {task["taskUUID"]: 1}


def test_a_session_is_resumed_only_with_its_key_and_within_its_lifetime() -> None:
    clock = FakeClock()
    faults = seed_for(FaultConfig(rates={"drop": 0.5}), ["drop", "drop"])
    with served(LocalConfig(faults=faults, clock=clock)) as (server, url):
        sessions = []
        for _ in range(2):
            with connect(ws_url(url)) as ws:
                sessions.append(login(ws, key="key-a")["connectionSessionUUID"])
                ws.send(json.dumps([inference_task()]))
                assert close_code(ws) == 1011
        with connect(ws_url(url)) as ws:  # another key: a new, empty session
            item = login(ws, key="key-b", session=sessions[0])
            assert item["connectionSessionUUID"] != sessions[0]
            assert item["simulator"]["resumedAnswers"] == 0
        clock.advance(121)  # Runware keeps undelivered answers for 120 s
        with connect(ws_url(url)) as ws:
            item = login(ws, key="key-a", session=sessions[1])
            assert item["connectionSessionUUID"] != sessions[1]
            assert item["simulator"]["resumedAnswers"] == 0
    assert server.stats().sessions_resumed == 0 and len(server.stats().charges) == 2


@pytest.mark.parametrize("fault, expect", [
    ("http_503", "serviceUnavailable"), ("http_429", "rateLimitExceeded"),
    ("http_500", "internalServerError"), ("http_502", 1014), ("http_504", 1014),
])
def test_status_faults_refuse_the_message_before_billing(fault: str, expect: Any) -> None:
    faults = seed_for(FaultConfig(rates={fault: 0.5}), [fault, None])
    with served(LocalConfig(api_key=KEY, faults=faults)) as (server, url):
        task = inference_task()
        with connect(ws_url(url)) as ws:
            login(ws)
            ws.send(json.dumps([task]))
            if isinstance(expect, int):
                assert close_code(ws) == expect
            else:
                (error,) = recv(ws)["errors"]
                assert (error["code"], error["taskUUID"]) == (expect, task["taskUUID"])
            assert server.stats().charges == {}
        with connect(ws_url(url)) as ws:
            login(ws)
            ws.send(json.dumps([task]))  # nothing was billed: the re-send is accepted
            assert "imageURL" in recv(ws)["data"][0]
    assert server.stats().charges == {task["taskUUID"]: Decimal("0.08")}


@pytest.mark.parametrize("fault", ["non_json", "truncated_body"])
def test_unreadable_answers_are_billed_once_and_recovered_with_get_response(fault: str) -> None:
    faults = seed_for(FaultConfig(rates={fault: 0.5}), [fault, None])
    with served(LocalConfig(api_key=KEY, faults=faults)) as (server, url), \
            connect(ws_url(url)) as ws:
        login(ws)
        task = inference_task()
        ws.send(json.dumps([task]))
        with pytest.raises(ValueError):
            json.loads(ws.recv(timeout=10))
        ws.send(json.dumps([{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]))
        assert recv(ws)["data"][0]["status"] == "success"
    assert server.stats().charges == {task["taskUUID"]: Decimal("0.08")}


def test_a_hang_holds_the_answer_back_then_delivers_it() -> None:
    faults = seed_for(FaultConfig(rates={"hang": 0.5}, hang_s=0.6), ["hang", None])
    with served(LocalConfig(api_key=KEY, faults=faults)) as (server, url), \
            connect(ws_url(url)) as ws:
        login(ws)
        held, free = inference_task(), inference_task()
        t0 = time.monotonic()
        ws.send(json.dumps([held]))
        ws.send(json.dumps([free]))
        assert recv(ws)["data"][0]["taskUUID"] == free["taskUUID"]
        assert recv(ws)["data"][0]["taskUUID"] == held["taskUUID"]
        assert time.monotonic() - t0 >= 0.5
    assert len(server.stats().charges) == 2


def test_capacity_counts_messages_in_flight() -> None:
    faults = FaultConfig(capacity=1, processing=Latency("fixed", 0.5))
    with served(LocalConfig(api_key=KEY, faults=faults)) as (server, url), \
            connect(ws_url(url)) as ws:
        login(ws)
        busy, refused = inference_task(), inference_task()
        ws.send(json.dumps([busy]))
        time.sleep(0.1)
        ws.send(json.dumps([refused]))
        (error,) = recv(ws)["errors"]
        assert (error["code"], error["taskUUID"]) == ("rateLimitExceeded", refused["taskUUID"])
        assert recv(ws)["data"][0]["taskUUID"] == busy["taskUUID"]
    stats = server.stats()
    assert list(stats.charges) == [busy["taskUUID"]] and stats.faults_injected == {"capacity": 1}


def test_upload_over_the_socket_then_edit_with_it() -> None:
    from PIL import Image

    from specrunner.local.testing import image_data_uri

    seed = image_data_uri(Image.new("RGB", (320, 200), (10, 120, 200)))
    mask = image_data_uri(Image.new("L", (320, 200), 255))
    with served() as (server, url), connect(ws_url(url)) as ws:
        login(ws)
        uploads = [{"taskType": "imageUpload", "taskUUID": new_uuid(), "image": image}
                   for image in (seed, mask)]
        ws.send(json.dumps(uploads))
        got = {f["data"][0]["taskUUID"]: f["data"][0]["imageUUID"] for f in (recv(ws), recv(ws))}
        task = inference_task(inputs={"seedImage": got[uploads[0]["taskUUID"]],
                                      "maskImage": got[uploads[1]["taskUUID"]]},
                              outputType="base64Data", outputFormat="PNG")
        ws.send(json.dumps([task]))
        (item,) = recv(ws)["data"]
        assert item["simulator"]["placeholderInputs"] is False
    assert server.stats().requests_by_type["imageUpload"] == 2
