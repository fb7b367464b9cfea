"""Every injected fault, observed from the client's side (in-process and over uvicorn)."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from specrunner import cli
from specrunner.commands import serve
from specrunner.errors import UsageError
from specrunner.local import FaultConfig, Latency, LocalConfig, create_app
from specrunner.local.faults import REQUEST_FAULTS
from specrunner.local.server import running, serving, uvicorn_server
from specrunner.local.testing import FakeClock, client, inference_task, seed_for
from specrunner.runware import Category, UnreadableBody, classify, parse_envelope

AUTH = {"Authorization": "Bearer test-key"}



def poll(uuid: str) -> list[dict[str, Any]]:
    return [{"taskType": "getResponse", "taskUUID": uuid}]


# ---- configuration -------------------------------------------------------------------------
def test_config_loads_from_yaml_and_json_files_and_flags(tmp_path: Path) -> None:
    yml = tmp_path / "faults.yaml"
    yml.write_text("seed: 7\nlatency: {dist: uniform, low: 0.1, high: 0.4}\ncapacity: 3\n"
                   "rates: {http_503: 0.2, drop: 0.1}\nhang_s: 30\n")
    cfg = FaultConfig.load(yml)
    assert (cfg.seed, cfg.capacity, cfg.hang_s) == (7, 3, 30.0)
    assert cfg.latency == Latency("uniform", 0.1, 0.4)
    assert dict(cfg.rates) == {"http_503": 0.2, "drop": 0.1}
    js = tmp_path / "faults.json"
    js.write_text(json.dumps({"processing": {"dist": "exponential", "mean": 2, "cap": 9}}))
    assert FaultConfig.load(js).processing == Latency("exponential", 2.0, 9.0)
    parser, _ = cli.build_parser()
    args = parser.parse_args(["serve", "--faults", str(yml), "--seed", "9", "--fault",
                              "drop=0.3", "--fault", "hang=0.05",
                              "--latency", "exp:0.2,1", "--api-key", "k1"])
    config = serve.build_config(args, {"RUNWARE_API_KEY": "from-env"})
    assert config.api_key == "k1" and config.faults.seed == 9 and config.faults.capacity == 3
    assert dict(config.faults.rates) == {"http_503": 0.2, "drop": 0.3, "hang": 0.05}
    assert config.faults.latency == Latency("exponential", 0.2, 1.0)
    env_args = parser.parse_args(["serve"])
    assert serve.build_config(env_args, {"RUNWARE_API_KEY": "from-env"}).api_key == "from-env"
    assert serve.build_config(env_args, {}).api_key is None
    assert "from-env" not in repr(serve.build_config(env_args, {"RUNWARE_API_KEY": "from-env"}))


def test_fault_names_at_the_top_level_are_rates(tmp_path: Path) -> None:
    top = tmp_path / "top.yaml"
    top.write_text("seed: 3\ncontent_policy: 0.4\ndrop: 0.02\n")
    nested = tmp_path / "nested.yaml"
    nested.write_text("seed: 3\nrates:\n  content_policy: 0.4\n  drop: 0.02\n")
    mixed = tmp_path / "mixed.yaml"
    mixed.write_text("seed: 3\ncontent_policy: 0.4\nrates: {drop: 0.02}\n")
    configs = [FaultConfig.load(f) for f in (top, nested, mixed)]
    assert configs[0] == configs[1] == configs[2]
    assert dict(configs[0].rates) == {"content_policy": 0.4, "drop": 0.02}


@pytest.mark.parametrize("doc, message", [
    ({"rates": {"http_418": 0.1}}, "unknown fault"),
    ({"rates": {"drop": 1.5}}, "within 0..1"),
    ({"rates": {"drop": 0.6, "http_500": 0.6}}, "more than 1"),
    ({"latency": "gaussian:1"}, "unknown latency"),
    ({"latency": {"dist": "uniform", "low": 2, "high": 1}}, "low <= high"),
    ({"capacity": 0}, "capacity"),
    ({"price_usd": -1}, "price_usd must be a number >= 0"),
    ({"extra_images": 21}, "extra_images must be between 0 and 20"),
    ({"report_cost": "no"}, "report_cost must be true or false"),
    ({"retries": 3}, r"^unknown fault setting\(s\) retries; valid keys: seed, latency, "
                     r"processing, capacity, hang_s, oversize_bytes, price_usd, report_cost, "
                     r"extra_images, echo_key, rates, and the fault "
                     r"names http_429, .*, oversized_image \(a rate in 0..1 each\)$"),
    ({"content_policy": 0.4, "rates": {"content_policy": 0.1}},
     "content_policy given both at the top level and under rates"),
    ({"drop": "often"}, "rate of drop: 'often' is not a number"),
    ({"http_418": 0.1}, "unknown fault setting"),
    ({"hang": 2}, "within 0..1"),
])
def test_bad_fault_settings_are_usage_errors(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        FaultConfig.from_mapping(doc)


def test_fault_sequence_is_reproducible_from_the_seed() -> None:
    rates = {name: 0.08 for name in REQUEST_FAULTS}

    def statuses(seed: int) -> list[int]:
        server = create_app(LocalConfig(faults=FaultConfig(seed=seed, rates=rates, hang_s=0)))

        async def main() -> list[int]:
            out = []
            async with client(server) as c:
                for _ in range(30):
                    try:
                        out.append((await c.post("/v1", json=[inference_task(
                            outputFormat="PNG")])).status_code)
                    except httpx.TransportError:
                        out.append(-1)
            return out
        return anyio.run(main)
    first = statuses(11)
    assert first == statuses(11) and first != statuses(12)
    assert {-1, 200, 429, 500, 502, 503, 504} <= set(first) | {-1}


# ---- request faults, before billing ----------------------------------------------------------
@pytest.mark.parametrize("fault, status, code", [
    ("http_429", 429, "rateLimitExceeded"), ("http_500", 500, "internalServerError"),
    ("http_503", 503, "serviceUnavailable"), ("http_502", 502, None), ("http_504", 504, None)])
def test_status_faults_answer_before_billing(fault: str, status: int, code: str | None) -> None:
    server = create_app(LocalConfig(faults=FaultConfig(rates={fault: 1.0})))
    task = inference_task()

    async def main() -> httpx.Response:
        async with client(server) as c:
            return await c.post("/v1", json=[task])
    r = anyio.run(main)
    assert r.status_code == status
    if code is None:  # gateways answer HTML: unreadable, transient
        assert r.headers["content-type"] == "text/html"
        with pytest.raises(UnreadableBody):
            parse_envelope(r.content)
    else:
        (err,) = parse_envelope(r.content).errors
        assert err["code"] == code
        assert classify(code, status) in (Category.RATE_LIMIT, Category.SERVER)
    assert server.stats().charges == {} and server.stats().faults_injected == {fault: 1}


# ---- request faults, after billing -----------------------------------------------------------
@pytest.mark.parametrize("fault", ["drop", "hang", "non_json", "truncated_body"])
def test_lost_answers_are_billed_once_and_recoverable(fault: str) -> None:
    config = seed_for(FaultConfig(rates={fault: 0.5}), [fault, None, None])
    server = create_app(LocalConfig(faults=replace_hang(config)))
    task = inference_task(numberResults=2)

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        async with client(server) as c:
            if fault == "drop":
                with pytest.raises(httpx.RemoteProtocolError):
                    await c.post("/v1", json=[task])
            elif fault == "hang":
                with pytest.raises(TimeoutError):
                    with anyio.fail_after(0.2):
                        await c.post("/v1", json=[task])
            else:
                r = await c.post("/v1", json=[task])
                assert r.status_code == 200
                with pytest.raises(UnreadableBody):
                    parse_envelope(r.content)
                if fault == "truncated_body":
                    assert r.headers["content-type"] == "application/json"
                    assert int(r.headers["content-length"]) == len(r.content)
            resend = (await c.post("/v1", json=[task])).json()
            polled = (await c.post("/v1", json=poll(task["taskUUID"]))).json()
            return resend, polled
    resend, polled = anyio.run(main)
    assert resend["errors"][0]["code"] == "conflictTaskUUID"
    assert [d["status"] for d in polled["data"]] == ["success", "success"]
    stats = server.stats()
    assert stats.charges == {task["taskUUID"]: Decimal("0.16")}
    assert stats.duplicate_attempts == {task["taskUUID"]: 1}
    assert stats.faults_injected == {fault: 1}


def replace_hang(config: FaultConfig) -> FaultConfig:
    return FaultConfig(seed=config.seed, rates=config.rates, hang_s=60.0)


# ---- task faults -----------------------------------------------------------------------------
def test_provider_timeout_fails_the_task_uncharged_sync_and_async() -> None:
    server = create_app(LocalConfig(faults=FaultConfig(rates={"provider_timeout": 1.0})))
    sync_task, async_task = inference_task(), inference_task(deliveryMethod="async")

    async def main() -> tuple[httpx.Response, dict[str, Any], dict[str, Any]]:
        async with client(server) as c:
            r = await c.post("/v1", json=[sync_task])
            ack = (await c.post("/v1", json=[async_task])).json()
            assert ack["data"][0]["taskUUID"] == async_task["taskUUID"]
            polled = (await c.post("/v1", json=poll(async_task["taskUUID"]))).json()
            return r, polled, (await c.post("/v1", json=[sync_task])).json()
    r, polled, resend = anyio.run(main)
    (err,) = parse_envelope(r.content).errors
    assert err["code"] == "timeoutProvider" and classify(err["code"], r.status_code) == \
        Category.TIMEOUT
    assert polled["errors"][0]["code"] == "timeoutProvider"
    assert polled["errors"][0]["status"] == "error"
    assert resend["errors"][0]["code"] == "conflictTaskUUID"  # a new UUID is needed
    stats = server.stats()
    assert stats.charges == {} and stats.tasks_failed == {
        sync_task["taskUUID"]: "timeoutProvider", async_task["taskUUID"]: "timeoutProvider"}


def test_content_policy_blocks_results_and_charges_only_delivered_images() -> None:
    server = create_app(LocalConfig(faults=FaultConfig(seed=5, rates={"content_policy": 0.5})))
    task = inference_task(numberResults=12, includeCost=True)

    async def main() -> httpx.Response:
        async with client(server) as c:
            return await c.post("/v1", json=[task])
    r = anyio.run(main)
    env = parse_envelope(r.content)
    blocked = [e for e in env.errors if e["code"] == "contentPolicyViolation"]
    assert 0 < len(blocked) < 12 and len(env.data) + len(blocked) == 12
    assert {e["taskUUID"] for e in blocked} == {task["taskUUID"]}
    assert classify("contentPolicyViolation") == Category.SAFETY
    assert server.stats().charges == {task["taskUUID"]: Decimal("0.08") * len(env.data)}
    assert sum(Decimal(str(d["cost"])) for d in env.data) == Decimal("0.08") * len(env.data)


# ---- download faults -------------------------------------------------------------------------
@pytest.mark.parametrize("fault", ["truncated_image", "oversized_image"])
def test_download_faults(fault: str) -> None:
    server = create_app(LocalConfig(faults=FaultConfig(
        rates={fault: 1.0}, oversize_bytes=3 * 1024 * 1024)))
    task = inference_task(outputFormat="PNG")

    async def main() -> tuple[httpx.Response, bytes]:
        async with client(server) as c:
            item = (await c.post("/v1", json=[{**task, "outputType": "URL"}])).json()["data"][0]
            detail = (await c.post("/v1", json=[{"taskType": "getTaskDetails",
                                                 "taskUUID": task["taskUUID"]}])).json()
            assert detail["data"][0]["status"] == "success"
            return await c.get(item["imageURL"]), b""
    r, _ = anyio.run(main)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    if fault == "truncated_image":
        assert int(r.headers["content-length"]) == len(r.content)
        with pytest.raises(OSError):
            with Image.open(io.BytesIO(r.content)) as im:
                im.load()
    else:
        assert "content-length" not in r.headers
        assert len(r.content) > 3 * 1024 * 1024 and r.content.startswith(b"\x89PNG")
    assert server.stats().faults_injected == {fault: 1}


# ---- latency, processing time, capacity ------------------------------------------------------
@pytest.mark.parametrize("latency, check", [
    (Latency("fixed", 2.5), lambda xs: xs == [2.5] * 5),
    (Latency("uniform", 1.0, 3.0), lambda xs: all(1 <= x <= 3 for x in xs) and len(set(xs)) == 5),
    (Latency("exponential", 0.5, 0.8), lambda xs: all(0 < x <= 0.8 for x in xs)),
])
def test_latency_goes_through_the_injected_sleep(latency: Latency, check: Any) -> None:
    clock = FakeClock()
    server = create_app(LocalConfig(clock=clock, sleep=clock.sleep,
                                    faults=FaultConfig(seed=1, latency=latency)))

    async def main() -> None:
        async with client(server) as c:
            for _ in range(5):
                assert (await c.post("/v1", json=poll(inference_task()["taskUUID"]))
                        ).status_code == 200
    anyio.run(main)
    assert check(clock.slept), clock.slept


def test_sync_processing_time_waits_and_async_does_not() -> None:
    clock = FakeClock()
    server = create_app(LocalConfig(clock=clock, sleep=clock.sleep,
                                    faults=FaultConfig(processing=Latency("fixed", 7.0))))
    post = [inference_task(), inference_task(deliveryMethod="async")]

    async def main() -> None:
        async with client(server) as c:
            assert (await c.post("/v1", json=post[:1])).status_code == 200
            assert clock.slept == [7.0]
            assert (await c.post("/v1", json=post[1:])).status_code == 200
            assert clock.slept == [7.0]
    anyio.run(main)


def test_capacity_overflow_answers_429_and_peak_is_bounded() -> None:
    gate = anyio.Event()

    async def blocked_sleep(_seconds: float) -> None:
        await gate.wait()
    server = create_app(LocalConfig(sleep=blocked_sleep, faults=FaultConfig(
        capacity=2, latency=Latency("fixed", 1.0))))

    async def main() -> list[int]:
        codes: list[int] = []
        async with client(server) as c:
            async def one() -> None:
                r = await c.post("/v1", json=[inference_task(outputFormat="PNG")])
                codes.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["errors"][0]["code"] == "rateLimitExceeded"
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(one)
                for _ in range(500):  # bounded wait for the 3 refusals
                    if len(codes) == 3:
                        break
                    await anyio.sleep(0.01)
                assert codes == [429, 429, 429] and server.ledger.in_flight == 2
                gate.set()
        return codes
    assert sorted(anyio.run(main)) == [200, 200, 429, 429, 429]
    stats = server.stats()
    assert stats.peak_concurrency == 2 and len(stats.charges) == 2
    assert stats.faults_injected == {"capacity": 3}


# ---- over a real socket (uvicorn on 127.0.0.1, ephemeral port) --------------------------------
def test_uvicorn_serves_results_images_and_stats() -> None:
    server = create_app(LocalConfig(api_key="sock-key"))
    task = inference_task(numberResults=2, includeCost=True)
    with running(server) as url:
        assert url.startswith("http://127.0.0.1:")

        async def main() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=10,
                                         headers={"Authorization": "Bearer sock-key"}) as c:
                r = await c.post("/v1", json=[task])
                assert r.status_code == 200
                items = r.json()["data"]
                assert all(i["imageURL"].startswith(url + "/image/") for i in items)
                img = await c.get(items[0]["imageURL"])
                assert img.status_code == 200 and img.content[:3] == b"\xff\xd8\xff"
                stats = (await c.get("/admin/stats")).json()
                assert stats["charges"] == {task["taskUUID"]: 0.16}
                bad = await c.post("/v1", json=[task], headers={"Authorization": "Bearer no"})
                assert bad.status_code == 401 and b"sock-key" not in bad.content
        anyio.run(main)


@pytest.mark.parametrize("fault", ["drop", "hang", "http_503", "truncated_body"])
def test_uvicorn_faults_seen_by_a_real_client(fault: str) -> None:
    config = seed_for(FaultConfig(rates={fault: 0.5}), [fault, None])
    server = create_app(LocalConfig(faults=replace_hang(config)))
    task = inference_task()
    with running(server) as url:
        async def main() -> None:
            async with httpx.AsyncClient(base_url=url, headers=AUTH,
                                         timeout=httpx.Timeout(5, read=0.5)) as c:
                if fault == "drop":
                    with pytest.raises(httpx.RemoteProtocolError):
                        await c.post("/v1", json=[task])
                elif fault == "hang":
                    with pytest.raises(httpx.ReadTimeout):
                        await c.post("/v1", json=[task])
                else:
                    r = await c.post("/v1", json=[task])
                    if fault == "http_503":
                        assert r.status_code == 503
                    else:
                        with pytest.raises(UnreadableBody):
                            parse_envelope(r.content)
                second = await c.post("/v1", json=[task])
                if fault == "http_503":  # nothing was billed: the re-send is accepted
                    assert second.status_code == 200 and "data" in second.json()
                else:  # billed: the re-send conflicts
                    assert second.json()["errors"][0]["code"] == "conflictTaskUUID"
        anyio.run(main)
    assert server.stats().charges == {task["taskUUID"]: Decimal("0.08")}


def test_serve_command_runs_uvicorn_and_never_prints_the_key() -> None:
    canary = os.environ["RUNWARE_API_KEY"]  # set for the whole suite by conftest
    proc = subprocess.Popen([sys.executable, "-m", "specrunner", "serve", "--port", "0",
                             "--fault", "http_503=1", "--log-level", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "specrunner local simulator on http://127.0.0.1:" in line, line
        url = line.split()[4]
        with httpx.Client(base_url=url, timeout=10) as c:
            assert c.post("/v1", json=[inference_task()],
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
            r = c.post("/v1", json=[inference_task()], headers={"Authorization":
                                                               f"Bearer {canary}"})
            assert r.status_code == 503
            refused = c.get("/admin/stats")  # the ledger needs the key, as /v1 does
            assert refused.status_code == 401 and refused.json()["errors"][0]["code"] == \
                "invalidApiKey"
            assert c.get("/admin/stats", headers={"Authorization": "Bearer wrong"}
                         ).status_code == 401
            stats = c.get("/admin/stats", headers={"Authorization": f"Bearer {canary}"})
            assert stats.json()["faultsInjected"] == {"http_503": 1}
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=15)
    assert canary not in line + out + err


def test_serve_refuses_non_loopback_hosts() -> None:
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["serve", "--host", "0.0.0.0", "--port", "0"], out, err) == 2
    assert "not a loopback address" in err.getvalue() and out.getvalue() == ""
    assert cli.run(["serve", "--fault", "http_999=0.1"], out, err) == 2
    assert "unknown fault" in err.getvalue()


def test_accepted_connections_have_nodelay_and_stay_alive() -> None:
    # Without TCP_NODELAY each response waited ~40 ms for a delayed ACK (bench/
    # bench_sequential.py: 22 req/s before, ~800 after); read it on the server's own socket
    server = create_app(LocalConfig(api_key="k", render=False))
    with serving(server) as (url, uv), httpx.Client(
            base_url=url, headers={"Authorization": "Bearer k"}) as c:
        for _ in range(3):
            assert c.post("/v1", json=[inference_task()]).status_code == 200
        (conn,) = uv.server_state.connections  # three requests, one kept-alive connection
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        for _ in range(200):  # uvicorn counts a request once its cycle ends, after the reply
            if uv.server_state.total_requests == 3:
                break
            time.sleep(0.01)
        assert uv.server_state.total_requests == 3
    # the server keeps idle connections longer than clients do (httpx 5 s, aiohttp 15 s), so
    # it never closes one under a request the client is sending at that moment
    assert uvicorn_server(server).config.timeout_keep_alive >= 60
