"""The local server's optional state directory: uploads, accepted tasks, results and the
ledger survive a restart and a SIGKILL (LocalConfig.state_dir, `serve --state-dir`)."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image, ImageDraw

from specrunner.errors import UsageError
from specrunner.local import LocalConfig, LocalServer, create_app
from specrunner.local.journal import JOURNAL
from specrunner.local.testing import client, image_data_uri, inference_task, new_uuid

ROOT = Path(__file__).resolve().parents[1]


def post(server: LocalServer, tasks: list[Any]) -> tuple[int, dict[str, Any]]:
    async def main() -> tuple[int, dict[str, Any]]:
        async with client(server) as c:
            r = await c.post("/v1", json=tasks)
            return r.status_code, r.json()
    return anyio.run(main)


def download(server: LocalServer, url: str) -> httpx.Response:
    async def main() -> httpx.Response:
        async with client(server) as c:
            return await c.get(url)
    return anyio.run(main)


def pictures() -> tuple[str, str]:
    seed = Image.new("RGB", (400, 300), (30, 90, 160))
    ImageDraw.Draw(seed).ellipse([50, 40, 300, 260], fill=(240, 200, 40))
    mask = Image.new("L", (400, 300), 0)
    ImageDraw.Draw(mask).rectangle([100, 100, 299, 199], fill=255)
    return image_data_uri(seed), image_data_uri(mask)


def upload(server: LocalServer, image: str) -> str:
    status, body = post(server, [{"taskType": "imageUpload", "taskUUID": new_uuid(),
                                  "image": image}])
    assert status == 200
    return body["data"][0]["imageUUID"]


def test_a_second_server_on_the_same_state_dir_carries_on(tmp_path: Path) -> None:
    state = tmp_path / "state"
    seed_uri, mask_uri = pictures()
    with create_app(LocalConfig(state_dir=state)) as first:
        seed, mask = upload(first, seed_uri), upload(first, mask_uri)
        async_task = inference_task(inputs={"seedImage": seed, "maskImage": mask},
                                    deliveryMethod="async", numberResults=2)
        inline = inference_task(inputs={"seedImage": seed_uri, "maskImage": mask_uri},
                                outputType="dataURI", outputFormat="WEBP")
        assert post(first, [async_task])[0] == 200
        _, body = post(first, [inline])
        inline_item = body["data"][0]
        _, polled = post(first, [{"taskType": "getResponse", "taskUUID": async_task["taskUUID"]}])
        first_items = polled["data"]
        first_bytes = download(first, first_items[0]["imageURL"]).content
        assert post(first, [inline])[1]["errors"][0]["code"] == "conflictTaskUUID"
        before = first.stats()

    second = create_app(LocalConfig(state_dir=state))
    try:
        # an upload of the first server is usable
        edit = inference_task(inputs={"seedImage": seed, "maskImage": mask},
                              outputType="base64Data", outputFormat="PNG")
        status, body = post(second, [edit])
        assert status == 200 and body["data"][0]["simulator"]["placeholderInputs"] is False
        png = base64.b64decode(body["data"][0]["imageBase64Data"])
        with Image.open(__import__("io").BytesIO(png)) as im:
            assert im.size == (400, 300)
        # a taskUUID billed by the first is refused, and its results are still there
        status, body = post(second, [async_task])
        assert status == 400 and body["errors"][0]["code"] == "conflictTaskUUID"
        _, polled = post(second, [{"taskType": "getResponse",
                                   "taskUUID": async_task["taskUUID"]}])
        items = polled["data"]
        assert [i["status"] for i in items] == ["success", "success"]
        assert [(i["imageUUID"], i["seed"], i["imageURL"]) for i in items] == \
            [(i["imageUUID"], i["seed"], i["imageURL"]) for i in first_items]
        # the same bytes, rendered again from the stored request and inputs
        again = download(second, items[0]["imageURL"])
        assert again.status_code == 200 and again.content == first_bytes
        wrong_ext = items[0]["imageURL"].replace(".jpg", ".png")
        assert download(second, wrong_ext).status_code == 404
        _, details = post(second, [{"taskType": "getTaskDetails",
                                    "taskUUID": inline["taskUUID"]}])
        detail = details["data"][0]
        assert detail["request"] == inline and detail["status"] == "success"
        assert detail["response"]["data"][0]["imageDataURI"] == inline_item["imageDataURI"]
        # the ledger carries over, and goes on
        after = second.stats()
        assert before.charges == {async_task["taskUUID"]: Decimal("0.16"),
                                  inline["taskUUID"]: Decimal("0.08")}
        assert after.charges == {**before.charges, edit["taskUUID"]: Decimal("0.08")}
        assert after.total_billed_usd == Decimal("0.32") and after.images_billed == 4
        assert after.duplicate_attempts == {inline["taskUUID"]: 1,
                                            async_task["taskUUID"]: 1}
    finally:
        second.close()


def test_a_state_dir_serves_one_server_at_a_time(tmp_path: Path) -> None:
    first = create_app(LocalConfig(state_dir=tmp_path))
    with pytest.raises(UsageError, match="in use by another local server"):
        create_app(LocalConfig(state_dir=tmp_path))
    first.close()
    create_app(LocalConfig(state_dir=tmp_path)).close()


def test_a_torn_last_line_is_dropped_and_a_damaged_one_refused(tmp_path: Path) -> None:
    with create_app(LocalConfig(state_dir=tmp_path)) as server:
        task = inference_task()
        post(server, [task])
    journal = tmp_path / JOURNAL
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"e":"task","uuid":"cut sh')  # a write cut by SIGKILL
    with create_app(LocalConfig(state_dir=tmp_path)) as server:
        assert server.stats().charges == {task["taskUUID"]: Decimal("0.08")}
        assert journal.read_bytes() == whole  # the torn tail is gone before appending
        post(server, [inference_task()])
    journal.write_bytes(b"not json\n" + journal.read_bytes())
    with pytest.raises(UsageError, match=r"damaged at line 1"):
        create_app(LocalConfig(state_dir=tmp_path))


def test_without_a_state_dir_nothing_is_written(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    server = create_app(LocalConfig())
    post(server, [inference_task()])
    assert server.journal is None and list(tmp_path.iterdir()) == []


# ---- SIGKILL: `specrunner serve --state-dir` killed under load, then restarted --------------
def start(state: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "specrunner", "serve", "--port", "0",
                             "--no-render", "--api-key", "kill-key", "--state-dir", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    assert " on http://127.0.0.1:" in line, line
    return proc, line.split(" on ", 1)[1].split()[0]


def load(url: str, answered: dict[str, dict[str, Any]], stop: threading.Event) -> None:
    """Send uploads and tasks (4 threads) until the server dies; note every answer."""
    seed_uri, mask_uri = pictures()

    def worker(n: int) -> None:
        with httpx.Client(base_url=url, timeout=5,
                          headers={"Authorization": "Bearer kill-key"}) as c:
            for i in range(300):  # bounded
                if stop.is_set():
                    return
                if i % 5 == 0:
                    task: dict[str, Any] = {"taskType": "imageUpload", "taskUUID": new_uuid(),
                                            "image": seed_uri if i % 2 else mask_uri}
                else:
                    task = inference_task(deliveryMethod="async" if n % 2 else "sync",
                                          numberResults=1 + i % 3)
                try:
                    r = c.post("/v1", json=[task])
                except httpx.HTTPError:
                    return  # killed
                if r.status_code == 200:
                    answered[task["taskUUID"]] = {"task": task, "data": r.json()["data"]}

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_that_was_answered(tmp_path: Path) -> None:
    rng = random.Random(17)
    state = tmp_path / "state"
    answered: dict[str, dict[str, Any]] = {}
    for _ in range(3):
        proc, url = start(state)
        stop = threading.Event()
        loader = threading.Thread(target=load, args=(url, answered, stop))
        loader.start()
        threading.Event().wait(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        stop.set()
        loader.join(timeout=60)
    assert len(answered) > 20  # the kills landed under load, after real work
    proc, url = start(state)
    try:
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": "Bearer kill-key"}) as c:
            stats = c.get("/admin/stats").json()
            seen = list(answered.values())
            for chunk in range(0, len(seen), 100):  # one POST per 100 tasks
                part = seen[chunk:chunk + 100]
                again = c.post("/v1", json=[s["task"] for s in part]).json()
                assert "data" not in again or again["data"] == []
                assert [e["code"] for e in again["errors"]] == ["conflictTaskUUID"] * len(part)
                polls = [{"taskType": "getResponse", "taskUUID": s["task"]["taskUUID"]}
                         for s in part if s["task"]["taskType"] == "imageInference"]
                items = c.post("/v1", json=polls).json()["data"] if polls else []
                uploads = [s["data"][0]["imageUUID"] for s in part
                           if s["task"]["taskType"] == "imageUpload"]
                edits = [inference_task(inputs={"seedImage": u, "maskImage": u}) for u in uploads]
                if edits:  # every upload is still usable
                    used = c.post("/v1", json=edits).json()
                    assert "errors" not in used and len(used["data"]) == len(edits)
                for s in part:
                    task = s["task"]
                    if task["taskType"] == "imageInference":
                        uuid = task["taskUUID"]
                        assert stats["charges"][uuid] == pytest.approx(
                            0.08 * task["numberResults"])
                        mine = [i for i in items if i["taskUUID"] == uuid]
                        assert [i["status"] for i in mine] == ["success"] * task["numberResults"]
            # every charge in the restored ledger is one task's, once
            total = sum(Decimal(str(v)) for v in stats["charges"].values())
            assert Decimal(str(stats["totalBilledUSD"])) == total
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    lines = (state / JOURNAL).read_bytes().splitlines()
    assert all(json.loads(line)["e"] in ("upload", "task", "duplicate") for line in lines)


def test_serve_refuses_a_state_dir_another_server_holds(tmp_path: Path) -> None:
    import io

    from specrunner import cli

    with create_app(LocalConfig(state_dir=tmp_path)):
        out, err = io.StringIO(), io.StringIO()
        assert cli.run(["serve", "--port", "0", "--state-dir", str(tmp_path)], out, err) == 2
    assert err.getvalue().strip().endswith(f"state directory {tmp_path} is in use by another "
                                           "local server")
    assert out.getvalue() == ""
