"""The local server speaks Runware's protocol: examples, auth, validation, billing, delivery."""

from __future__ import annotations

import base64
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image, ImageChops, ImageDraw

from specrunner.local import FaultConfig, Latency, LocalConfig, create_app
from specrunner.local.engine import mask_levels
from specrunner.local.testing import FakeClock, client, image_data_uri, inference_task, new_uuid
from specrunner.runware import is_uuid4, parse_envelope

REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/ideogram-2-0-edit.md"
FALLBACK = Path(__file__).resolve().parent / "fixtures/ideogram-2-0-edit.md"


def run(fn: Any) -> Any:
    return anyio.run(fn)


def examples() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(request, response) pairs of the model page, parsed from its JSON blocks."""
    text = (REFERENCE if REFERENCE.exists() else FALLBACK).read_text(encoding="utf-8")
    blocks = re.findall(r"\*\*(Request|Response)\*\*:\s*```json\n(.*?)```", text, re.S)
    reqs = [json.loads(b) for kind, b in blocks if kind == "Request"]
    resps = [json.loads(b) for kind, b in blocks if kind == "Response"]
    assert len(reqs) == len(resps) == 4
    return list(zip(reqs, resps, strict=True))


def post(server: Any, tasks: list[Any], **kw: Any) -> tuple[int, dict[str, Any], bytes]:
    async def main() -> tuple[int, dict[str, Any], bytes]:
        async with client(server, **kw) as c:
            r = await c.post("/v1", json=tasks)
            return r.status_code, r.json(), r.content
    return run(main)


def get(server: Any, url: str) -> tuple[int, bytes, str]:
    async def main() -> tuple[int, bytes, str]:
        async with client(server) as c:
            r = await c.get(url)
            return r.status_code, r.content, r.headers.get("content-type", "")
    return run(main)


@pytest.mark.parametrize("index", range(4))
def test_documented_examples_are_answered_in_the_documented_shape(index: int) -> None:
    request, documented = examples()[index]
    server = create_app()
    status, body, _ = post(server, [request])
    assert status == 200 and "errors" not in body
    (item,) = body["data"]
    # every documented key but `cost` (the examples do not set includeCost) is present
    assert set(documented) - {"cost"} <= set(item)
    for key, value in documented.items():
        if key != "cost":
            assert type(item[key]) is type(value), key
    assert item["taskUUID"] == request["taskUUID"] and item["taskType"] == "imageInference"
    assert is_uuid4(item["imageUUID"]) and item["seed"] > 0
    assert item["simulator"]["placeholderInputs"] is True
    code, data, ctype = get(server, item["imageURL"])
    assert code == 200 and ctype == "image/jpeg"
    with Image.open(io.BytesIO(data)) as im:
        assert (im.format, im.size) == ("JPEG", (1024, 768))
    assert server.stats().charges == {request["taskUUID"]: Decimal("0.08")}
    # the same request asking for its cost gets the documented figure
    fresh = create_app()
    _, body2, _ = post(fresh, [{**request, "includeCost": True}])
    assert body2["data"][0]["cost"] == documented["cost"] == 0.08


def test_auth_header_task_and_refusals_never_echo_the_key() -> None:
    secret = "rw-local-secret-0123456789"
    server = create_app(LocalConfig(api_key=secret))
    task = inference_task()
    wrong = "rw-wrong-key-abcdef"
    status, body, raw = post(server, [task], key=wrong)
    assert status == 401 and body["errors"][0]["code"] == "invalidApiKey"
    assert wrong.encode() not in raw and secret.encode() not in raw

    async def no_header() -> tuple[int, dict[str, Any]]:
        async with client(server) as c:
            del c.headers["Authorization"]
            r1 = await c.post("/v1", json=[task])
            r2 = await c.post("/v1", json=[{"taskType": "authentication", "apiKey": wrong}, task])
            r3 = await c.post("/v1", json=[{"taskType": "authentication", "apiKey": secret},
                                           task])
            assert (r1.status_code, r2.status_code) == (401, 401)
            assert secret.encode() not in r3.content
            return r3.status_code, r3.json()
    status, body = run(no_header)
    assert status == 200
    assert [d["taskType"] for d in body["data"]] == ["authentication", "imageInference"]
    assert server.stats().charges == {task["taskUUID"]: Decimal("0.08")}
    # with no key configured, any non-empty key passes but an empty one does not
    open_server = create_app()
    assert post(open_server, [inference_task()], key="anything")[0] == 200
    assert post(open_server, [inference_task()], key="")[0] == 401


@pytest.mark.parametrize("change, code, parameter", [
    ({"outputQuality": 5}, "invalidOutputQuality", "outputQuality"),
    ({"width": 1024}, "unsupportedParameter", "width"),
    ({"positivePrompt": None}, "missingPositivePrompt", "positivePrompt"),
    ({"positivePrompt": "x" * 2001}, "invalidPositivePrompt", "positivePrompt"),
    ({"numberResults": 21}, "invalidNumberResults", "numberResults"),
    ({"outputType": "base64Data", "ttl": 120}, "invalidTtl", "ttl"),
    ({"providerSettings": {"ideogram": {"styleType": "PHOTO"}}}, "invalidStyleType",
     "providerSettings.ideogram.styleType"),
    ({"providerSettings": {"ideogram": {"sharpness": 2}}}, "unsupportedParameter",
     "providerSettings.ideogram.sharpness"),
    ({"inputs": {"seedImage": "https://x.invalid/a.jpg"}}, "missingMaskImage",
     "inputs.maskImage"),
    ({"taskUUID": "6ba7b810-9dad-11d1-80b4-00c04fd430c8"}, "invalidTaskUUID", "taskUUID"),
    ({"model": "runware:100@1"}, "unsupportedModel", "model"),
    ({"inputs": {"seedImage": "%%%not-base64", "maskImage": "https://x.invalid/m.png"}},
     "invalidSeedImage", "inputs.seedImage"),
    ({"inputs": {"seedImage": new_uuid(), "maskImage": "https://x.invalid/m.png"}},
     "invalidSeedImage", "inputs.seedImage"),
])
def test_invalid_tasks_get_runware_errors_and_cost_nothing(change: dict[str, Any], code: str,
                                                           parameter: str) -> None:
    task = inference_task(**change)
    task = {k: v for k, v in task.items() if v is not None}
    server = create_app()
    status, body, _ = post(server, [task])
    assert status == 400 and "data" not in body
    (err,) = body["errors"]
    assert (err["code"], err["parameter"]) == (code, parameter)
    assert err["taskType"] == "imageInference" and err["taskUUID"] == task["taskUUID"]
    assert err["message"] and err["documentation"].startswith("https://")
    assert server.stats().charges == {}


def test_enum_errors_list_allowed_values_and_ranges_their_bounds() -> None:
    server = create_app()
    _, body, _ = post(server, [inference_task(outputFormat="GIF"), inference_task(
        outputQuality=100)])
    bad_format, bad_quality = body["errors"]
    assert bad_format["allowedValues"] == ["JPG", "PNG", "WEBP"]
    assert (bad_quality["min"], bad_quality["max"]) == (20, 99)


def test_conflict_is_refused_without_a_second_charge_even_when_concurrent() -> None:
    server = create_app()
    task = inference_task(numberResults=2)
    assert post(server, [task])[0] == 200
    status, body, _ = post(server, [task])
    assert status == 400 and body["errors"][0]["code"] == "conflictTaskUUID"
    twin = inference_task()

    async def burst() -> list[int]:
        codes: list[int] = []
        async with client(server) as c:
            async def one() -> None:
                codes.append((await c.post("/v1", json=[twin])).status_code)
            async with anyio.create_task_group() as tg:
                for _ in range(6):
                    tg.start_soon(one)
        return codes
    assert sorted(run(burst)) == [200, 400, 400, 400, 400, 400]
    stats = server.stats()
    assert stats.charges == {task["taskUUID"]: Decimal("0.16"), twin["taskUUID"]: Decimal("0.08")}
    assert stats.duplicate_attempts == {task["taskUUID"]: 1, twin["taskUUID"]: 5}
    assert stats.total_billed_usd == Decimal("0.24") and stats.images_billed == 3


def test_mixed_array_answers_data_and_errors_scoped_by_task() -> None:
    server = create_app()
    good1, bad, good2 = inference_task(), inference_task(outputType="PDF"), inference_task()
    status, body, _ = post(server, [good1, bad, good2])
    assert status == 200
    assert [d["taskUUID"] for d in body["data"]] == [good1["taskUUID"], good2["taskUUID"]]
    assert [(e["taskUUID"], e["code"]) for e in body["errors"]] == [
        (bad["taskUUID"], "invalidOutputType")]
    env = parse_envelope(json.dumps(body))
    assert len(env.data) == 2 and len(env.errors) == 1
    assert set(server.stats().charges) == {good1["taskUUID"], good2["taskUUID"]}


def test_number_results_give_distinct_images_64_bit_seeds_and_per_image_cost() -> None:
    server = create_app()
    task = inference_task(numberResults=3, includeCost=True, outputFormat="PNG")
    status, body, raw = post(server, [task])
    items = body["data"]
    assert status == 200 and len(items) == 3
    assert {i["taskUUID"] for i in items} == {task["taskUUID"]}
    assert len({i["imageUUID"] for i in items}) == 3 and len({i["seed"] for i in items}) == 3
    assert any(i["seed"] > 2**53 for i in items) and all(0 < i["seed"] < 2**63 for i in items)
    for i in items:  # serialized as exact JSON integers, never floats
        assert re.search(rb'"seed":%d[,}]' % i["seed"], raw)
    assert sum(Decimal(str(i["cost"])) for i in items) == Decimal("0.24")
    assert server.stats().charges[task["taskUUID"]] == Decimal("0.24")
    images = [get(server, i["imageURL"])[1] for i in items]
    assert len(set(images)) == 3  # each result is its own seed-dependent variation


@pytest.mark.parametrize("output_type, fmt", [("base64Data", "PNG"), ("dataURI", "WEBP"),
                                              ("URL", "WEBP"), ("dataURI", "JPG")])
def test_output_types_and_formats(output_type: str, fmt: str) -> None:
    server = create_app()
    task = inference_task(outputType=output_type, outputFormat=fmt, outputQuality=60,
                          safety={"checkContent": True})
    (item,) = post(server, [task])[1]["data"]
    assert item["NSFWContent"] is False
    if output_type == "base64Data":
        data = base64.b64decode(item["imageBase64Data"])
    elif output_type == "dataURI":
        mime = {"WEBP": "image/webp", "JPG": "image/jpeg"}[fmt]
        assert item["imageDataURI"].startswith(f"data:{mime};base64,")
        data = base64.b64decode(item["imageDataURI"].split(",", 1)[1])
    else:
        assert item["imageURL"].endswith(".webp")
        data = get(server, item["imageURL"])[1]
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == {"JPG": "JPEG"}.get(fmt, fmt) and im.size == (1024, 768)


def test_async_delivery_acks_then_polls_processing_then_success() -> None:
    clock = FakeClock()
    server = create_app(LocalConfig(clock=clock, sleep=clock.sleep,
                                    faults=FaultConfig(processing=Latency("fixed", 5.0))))
    task = inference_task(deliveryMethod="async", numberResults=2, includeCost=True)
    poll = [{"taskType": "getResponse", "taskUUID": task["taskUUID"]}]

    async def main() -> list[dict[str, Any]]:
        async with client(server) as c:
            ack = (await c.post("/v1", json=[task])).json()
            assert ack == {"data": [{"taskType": "imageInference", "taskUUID": task["taskUUID"]}]}
            assert server.stats().charges == {task["taskUUID"]: Decimal("0.16")}  # at acceptance
            first = (await c.post("/v1", json=poll)).json()["data"]
            assert [d["status"] for d in first] == ["processing"]
            clock.advance(5.0)
            done = (await c.post("/v1", json=poll)).json()["data"]
            unknown = (await c.post("/v1", json=[{"taskType": "getResponse",
                                                  "taskUUID": new_uuid()}])).json()
            assert unknown == {"data": []}
            return done
    done = run(main)
    assert [d["status"] for d in done] == ["success", "success"]
    assert all(is_uuid4(d["imageUUID"]) and d["cost"] == 0.08 for d in done)
    assert get(server, done[0]["imageURL"])[0] == 200
    assert clock.slept == []  # an async ack never waits for processing


def test_get_task_details_returns_the_original_request_and_response() -> None:
    server = create_app()
    task = inference_task(outputType="base64Data")
    _, sent, _ = post(server, [task])
    status, body, _ = post(server, [{"taskType": "getTaskDetails", "taskUUID": task["taskUUID"]},
                                    {"taskType": "getTaskDetails", "taskUUID": new_uuid()}])
    assert status == 200
    (details,) = body["data"]
    assert details["request"] == task and details["status"] == "success"
    got = details["response"]["data"][0]
    assert got["imageBase64Data"] == sent["data"][0]["imageBase64Data"]
    assert body["errors"][0]["code"] == "taskNotFound"


def _photo(size: tuple[int, int]) -> Image.Image:
    """A noisy, textured RGB image (a stand-in for a photo)."""
    noise = Image.effect_noise(size, 60).convert("RGB")
    grad = Image.linear_gradient("L").resize(size).convert("RGB")
    return ImageChops.add(noise, grad, scale=2.0)


def test_upload_downscales_and_its_uuid_works_as_seed_and_mask() -> None:
    server = create_app()
    seed, mask = _photo((3000, 1500)), Image.new("L", (3000, 1500), 0)
    ImageDraw.Draw(mask).ellipse([900, 300, 2100, 1200], fill=255)
    up_seed = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": image_data_uri(seed)}
    raw_mask = image_data_uri(mask).split(",", 1)[1]  # bare base64 also works
    up_mask = {"taskType": "imageUpload", "taskUUID": new_uuid(), "image": raw_mask}
    up_url = {"taskType": "imageUpload", "taskUUID": new_uuid(),
              "image": "https://example.invalid/photo.jpg"}
    status, body, _ = post(server, [up_seed, up_mask, up_url])
    assert status == 200
    s_item, m_item, u_item = body["data"]
    assert s_item["simulator"]["size"] == m_item["simulator"]["size"] == [2048, 1024]
    assert u_item["simulator"]["placeholderInputs"] is True
    task = inference_task(outputFormat="PNG", inputs={"seedImage": s_item["imageUUID"],
                                                      "maskImage": m_item["imageUUID"]})
    (item,) = post(server, [task])[1]["data"]
    assert item["simulator"]["placeholderInputs"] is False
    with Image.open(io.BytesIO(get(server, item["imageURL"])[1])) as im:
        assert im.size == (2048, 1024)
    assert server.stats().charges == {task["taskUUID"]: Decimal("0.08")}  # uploads are free


def test_inline_inputs_keep_every_unmasked_pixel_end_to_end() -> None:
    server = create_app()
    seed, mask = _photo((640, 400)), Image.new("L", (640, 400), 0)
    ImageDraw.Draw(mask).polygon([(100, 50), (500, 80), (420, 330), (60, 300)], fill=255)
    task = inference_task(outputFormat="PNG", inputs={"seedImage": image_data_uri(seed, "JPEG"),
                                                      "maskImage": image_data_uri(mask)})
    (item,) = post(server, [task])[1]["data"]
    out = Image.open(io.BytesIO(get(server, item["imageURL"])[1])).convert("RGB")
    decoded_seed = Image.open(io.BytesIO(base64.b64decode(
        task["inputs"]["seedImage"].split(",")[1]))).convert("RGB")
    changed = ImageChops.difference(out, decoded_seed).convert("L").point(lambda v: 255 * (v > 0))
    keep = mask_levels(mask).point(lambda v: 255 * (v == 0))
    assert ImageChops.multiply(changed, keep).getbbox() is None
    assert changed.getbbox() is not None  # and the masked region did change


def test_mismatched_seed_and_mask_sizes_are_refused() -> None:
    server = create_app()
    task = inference_task(inputs={"seedImage": image_data_uri(_photo((64, 48))),
                                  "maskImage": image_data_uri(Image.new("L", (48, 64), 255))})
    status, body, _ = post(server, [task])
    assert status == 400 and body["errors"][0]["code"] == "invalidMaskImage"
    assert server.stats().charges == {}
    # a URL input takes the size of the real one
    task2 = inference_task(inputs={"seedImage": image_data_uri(_photo((64, 48))),
                                   "maskImage": "https://example.invalid/m.png"})
    assert post(server, [task2])[0] == 200


def test_output_urls_expire_after_ttl_with_an_injected_clock() -> None:
    clock = FakeClock()
    server = create_app(LocalConfig(clock=clock, sleep=clock.sleep, default_ttl_s=600))
    short, default = inference_task(ttl=60), inference_task()
    _, body, _ = post(server, [short, default])
    url_short, url_default = (d["imageURL"] for d in body["data"])
    assert get(server, url_short)[0] == 200
    clock.advance(59.5)
    assert get(server, url_short)[0] == 200
    clock.advance(1.0)
    assert get(server, url_short)[0] == 404 and get(server, url_default)[0] == 200
    clock.advance(540)
    assert get(server, url_default)[0] == 404


def test_image_urls_follow_the_host_the_request_came_in_on() -> None:
    server = create_app()
    _, body, _ = post(server, [inference_task()], base_url="http://sim.example:9999")
    assert body["data"][0]["imageURL"].startswith("http://sim.example:9999/image/")


def test_generated_image_uuid_and_own_url_can_seed_a_new_task() -> None:
    server = create_app()
    (first,) = post(server, [inference_task(outputFormat="PNG")])[1]["data"]
    mask = Image.new("L", (1024, 768), 0)
    ImageDraw.Draw(mask).rectangle([0, 0, 99, 99], fill=255)
    inputs = {"maskImage": image_data_uri(mask)}
    by_uuid = inference_task(outputFormat="PNG",
                             inputs={**inputs, "seedImage": first["imageUUID"]})
    by_url = inference_task(outputFormat="PNG", inputs={**inputs, "seedImage": first["imageURL"]})
    _, body, _ = post(server, [by_uuid, by_url])
    assert [d["simulator"]["placeholderInputs"] for d in body["data"]] == [False, False]
    previous = Image.open(io.BytesIO(get(server, first["imageURL"])[1])).convert("RGB")
    for item in body["data"]:
        out = Image.open(io.BytesIO(get(server, item["imageURL"])[1])).convert("RGB")
        diff = ImageChops.difference(out, previous).convert("L").point(lambda v: 255 * (v > 0))
        assert diff.getbbox() is not None and diff.crop((100, 100, 1024, 768)).getbbox() is None


@pytest.mark.parametrize("body, code", [(b"not json", "invalidPayload"), (b"{}", "invalidPayload"),
                                        (b"[]", "invalidPayload"),
                                        (b'[{"taskType": "videoInference"}]',
                                         "unsupportedTaskType")])
def test_malformed_bodies(body: bytes, code: str) -> None:
    server = create_app()

    async def main() -> tuple[int, dict[str, Any]]:
        async with client(server) as c:
            r = await c.post("/v1", content=body, headers={"Content-Type": "application/json"})
            return r.status_code, r.json()
    status, doc = run(main)
    assert status == 400 and doc["errors"][0]["code"] == code


def test_admin_stats_endpoint_reports_the_ledger() -> None:
    server = create_app()
    task = inference_task()
    post(server, [task])
    post(server, [task])
    status, data, ctype = get(server, "/admin/stats")
    doc = json.loads(data)
    assert status == 200 and ctype == "application/json"
    assert doc["charges"] == {task["taskUUID"]: 0.08} and doc["duplicateAttemptsTotal"] == 1
    assert doc["requestsByType"]["imageInference"] == 2 and doc["peakConcurrency"] == 1
    assert doc["simulator"] == "specrunner local simulator"


@pytest.mark.parametrize("configured, header, status", [
    (None, None, 401), (None, "Bearer", 401), (None, "Basic any-key", 401),
    (None, "Bearer any-key", 200),  # any-key mode: some Bearer key, as POST /v1 wants
    ("the-key", None, 401), ("the-key", "Bearer wrong", 401), ("the-key", "Bearer the-key", 200),
])
def test_admin_stats_needs_the_key_that_v1_needs(configured: str | None, header: str | None,
                                                 status: int) -> None:
    server = create_app(LocalConfig(api_key=configured))

    async def main() -> httpx.Response:
        headers = {"Authorization": header} if header else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server),
                                     base_url="http://local.runware") as c:
            return await c.get("/admin/stats", headers=headers)
    r = run(main)
    assert r.status_code == status
    if status == 401:
        assert r.json()["errors"][0]["code"] == "invalidApiKey" and "charges" not in r.json()
        assert "the-key" not in r.text


def test_webhook_and_upload_endpoint_are_accepted_but_said_not_called() -> None:
    server = create_app()
    task = inference_task(webhookURL="https://hooks.example.invalid/rw",
                          uploadEndpoint="https://bucket.example.invalid/put")
    (item,) = post(server, [task])[1]["data"]
    assert item["simulator"]["notCalled"] == ["webhookURL", "uploadEndpoint"]
    assert server.stats().http_requests == 1  # and nothing else was attempted


def test_a_taskuuid_in_other_letter_case_is_the_same_task() -> None:
    # UUIDs compare case-insensitively (RFC 4122): the oracle once billed `ABC...` and
    # `abc...` as two tasks, so a client that re-sent in upper case looked paid-once.
    server = create_app()
    task = inference_task()
    upper = dict(task, taskUUID=task["taskUUID"].upper())
    assert post(server, [task])[0] == 200
    status, body, _ = post(server, [upper])
    assert status == 400 and body["errors"][0]["code"] == "conflictTaskUUID"
    status, body, _ = post(server, [{"taskType": "getResponse", "taskUUID": upper["taskUUID"]}])
    assert status == 200 and [d["status"] for d in body["data"]] == ["success"]
    stats = server.stats()
    assert stats.charges == {task["taskUUID"]: Decimal("0.08")}
    assert stats.duplicate_attempts == {task["taskUUID"]: 1}


def documented_default(name: str) -> str:
    """The `**Default**` the model page gives a top-level request parameter."""
    text = (REFERENCE if REFERENCE.exists() else FALLBACK).read_text(encoding="utf-8")
    m = re.search(rf"### \[{name}\]\(.*?\)\n\n(?:- .*\n)*?- \*\*Default\*\*: `([^`]+)`", text)
    assert m, name
    return m.group(1)


PIL_FORMAT = {"JPG": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}
MIME = {"JPG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


@pytest.mark.parametrize("render", [True, False])
@pytest.mark.parametrize("output_type", [None, "URL", "base64Data", "dataURI"])
@pytest.mark.parametrize("fmt", [None, "JPG", "PNG", "WEBP"])
def test_served_bytes_are_always_the_format_announced(render: bool, output_type: str | None,
                                                      fmt: str | None) -> None:
    # left out, outputType and outputFormat take Runware's documented defaults (URL, JPG)
    assert (documented_default("outputType"), documented_default("outputFormat")) == \
        ("URL", "JPG")
    expect_type = output_type or documented_default("outputType")
    expect_fmt = fmt or documented_default("outputFormat")
    server = create_app(LocalConfig(render=render))
    task = inference_task(numberResults=2)
    if output_type:
        task["outputType"] = output_type
    if fmt:
        task["outputFormat"] = fmt
    for item in post(server, [task])[1]["data"]:
        if expect_type == "URL":
            ext = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}[expect_fmt]
            assert item["imageURL"].endswith(f".{ext}")
            code, data, ctype = get(server, item["imageURL"])
            assert code == 200 and ctype == MIME[expect_fmt]
            for other in {"jpg", "png", "webp"} - {ext}:  # never served under another format
                assert get(server, item["imageURL"][: -len(ext)] + other)[0] == 404
        elif expect_type == "dataURI":
            head, b64 = item["imageDataURI"].split(",", 1)
            assert head == f"data:{MIME[expect_fmt]};base64"
            data = base64.b64decode(b64)
        else:
            data = base64.b64decode(item["imageBase64Data"])
        with Image.open(io.BytesIO(data)) as im:
            assert im.format == PIL_FORMAT[expect_fmt]
