"""Helpers for the run tests: hand-built Tasks and a scriptable Runware fake (MockTransport).

The fake bills once per taskUUID it accepts and counts every attempt to charge a UUID twice;
`script(kind, uuid, n)` returns a fault name to inject for the n-th request of that kind and
UUID. The real local server is the oracle in test_run_local.py; this fake lets the executor's
branches be driven precisely.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import httpx
from PIL import Image

from specrunner import runware
from specrunner.plan.task import LocalImage, Task
from specrunner.record import Record, RunMeta, open_record, read_snapshot, read_uuids
from specrunner.run.client import RunwareClient
from specrunner.run.executor import Executor
from specrunner.spec.types import Execution


def png_bytes(color: int = 128, size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, color).save(buf, "PNG")
    return buf.getvalue()


IMAGE = png_bytes(200)


def make_tasks(n: int, *, numbers: int = 1, local: dict[str, LocalImage] | None = None,
               delivery: str = "async", output_type: str = "URL", prompt: str = "p") -> list[Task]:
    tasks = []
    for i in range(n):
        inputs = {"seedImage": "https://example.invalid/seed.png",
                  "maskImage": "https://example.invalid/mask.png"}
        for name, img in (local or {}).items():
            inputs[name] = f"local:{img.sha256}"
        req = {"taskType": "imageInference", "model": "ideogram:3@3",
               "positivePrompt": f"{prompt} {i}", "inputs": inputs, "numberResults": numbers,
               "includeCost": True, "deliveryMethod": delivery, "outputType": output_type,
               "outputFormat": "PNG"}
        key = hashlib.sha256(json.dumps([req, i], sort_keys=True).encode()).hexdigest()
        tasks.append(Task(index=i, variant_id=f"v{i}", task_key=key,
                          request=req, input_name="in",
                          prompt_name="p", axes={}, repeat=0, number_results=numbers,
                          est_cost=Decimal("0.08") * numbers, output_stem=f"v{i}",
                          output_ext="png", local_inputs=dict(local or {})))
    return tasks


@dataclass
class Fake:
    """A Runware-compatible fake: async/sync delivery, uploads, getResponse, getTaskDetails."""

    script: Callable[[str, str, int], str | None] = lambda kind, uuid, n: None
    cost: float | None = 0.08
    polls_before_ready: int = 0
    charges: dict[str, int] = field(default_factory=dict)
    double_charge_attempts: int = 0
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    polls: dict[str, int] = field(default_factory=dict)
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    uploads: list[str] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)  # sizes of multi-task requests

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def _items(self, uuid: str, task: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for i in range(int(task.get("numberResults", 1))):
            iu = runware.task_uuid(f"img:{uuid}", i)
            item: dict[str, Any] = {"taskType": "imageInference", "taskUUID": uuid,
                                    "imageUUID": iu, "seed": 2**60 + i, "status": "success"}
            if task.get("outputType") == "base64Data":
                item["imageBase64Data"] = base64.b64encode(IMAGE).decode()
            else:
                item["imageURL"] = f"http://fake.test/img/{iu}.png"
            if self.cost is not None:
                item["cost"] = self.cost
            out.append(item)
        return out

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            self.log.append(("download", request.url.path))
            n = self.counts[("download", request.url.path)] = \
                self.counts.get(("download", request.url.path), 0) + 1
            fault = self.script("download", request.url.path, n)
            if fault == "truncated":
                return httpx.Response(200, content=IMAGE[: len(IMAGE) // 2])
            if fault == "http404":
                return httpx.Response(404)
            assert "authorization" not in request.headers  # the key goes to the API only
            return httpx.Response(200, content=IMAGE)
        self.bodies.append(request.content)
        self.auth_headers.append(request.headers.get("authorization"))
        body = json.loads(request.content)
        assert isinstance(body, list) and body
        if len(body) > 1:  # the poller's batches: getResponse tasks only, answered together
            assert {t["taskType"] for t in body} == {"getResponse"}, body
            self.batches.append(len(body))
            data: list[Any] = []
            errors: list[Any] = []
            for task in body:  # a fault of one task's answer is the whole request's
                answer = self._one(request, task)
                try:
                    one = json.loads(answer.content)
                except ValueError:
                    return answer
                if answer.status_code >= 500:
                    return answer
                data += one.get("data", [])
                errors += one.get("errors", [])
            return httpx.Response(200, json={"data": data, "errors": errors})
        return self._one(request, body[0])

    def _one(self, request: httpx.Request, task: dict[str, Any]) -> httpx.Response:
        kind, uuid = task["taskType"], task["taskUUID"]
        self.log.append((kind, uuid))
        n = self.counts[(kind, uuid)] = self.counts.get((kind, uuid), 0) + 1
        fault = self.script(kind, uuid, n)
        if fault in ("http500", "http503", "http429"):
            return httpx.Response(int(fault[4:]), text="<html>busy</html>")
        if fault == "connect":
            raise httpx.ConnectError("refused", request=request)
        if fault in ("auth", "quota", "validation", "provider", "ratecode"):
            code = {"auth": "invalidApiKey", "quota": "insufficientCredits",
                    "validation": "invalidPositivePrompt", "provider": "providerError",
                    "ratecode": "rateLimitExceeded"}[fault]
            status = {"auth": 401, "quota": 402, "ratecode": 429}.get(fault, 400)
            if fault == "provider" and kind == "imageInference":
                self.charges.setdefault(uuid, 0)  # accepted but failed: not charged
            return httpx.Response(status, json={"errors": [runware.error_object(
                code, "no", task_type=kind, task_uuid=uuid)]})
        if kind == "imageUpload":
            self.uploads.append(task["image"][:40])
            iu = runware.task_uuid("upload", len(self.uploads))
            return httpx.Response(200, json={"data": [{"taskType": kind, "taskUUID": uuid,
                                                       "imageUUID": iu}]})
        if kind == "imageInference":
            if uuid in self.charges:
                self.double_charge_attempts += 1
                return httpx.Response(400, json={"errors": [runware.error_object(
                    "conflictTaskUUID", "exists", task_type=kind, task_uuid=uuid)]})
            self.charges[uuid] = 1
            self.results[uuid] = self._items(uuid, task)
            self.polls[uuid] = 0
            if fault == "drop":
                raise httpx.ReadError("connection reset", request=request)
            if fault == "garbage":
                return httpx.Response(200, text="<html>oops")
            if task.get("deliveryMethod") == "sync":
                return httpx.Response(200, json={"data": self.results[uuid]})
            return httpx.Response(200, json={"data": [{"taskType": kind, "taskUUID": uuid}]})
        if kind == "getResponse":
            if fault == "drop":
                raise httpx.ReadError("reset", request=request)
            if uuid not in self.results:
                return httpx.Response(200, json={"data": []})
            self.polls[uuid] += 1
            if self.polls[uuid] <= self.polls_before_ready:
                return httpx.Response(200, json={"data": [{"taskType": "imageInference",
                                                           "taskUUID": uuid,
                                                           "status": "processing"}]})
            return httpx.Response(200, json={"data": self.results[uuid]})
        if kind == "getTaskDetails":
            if uuid not in self.results:
                return httpx.Response(400, json={"errors": [runware.error_object(
                    "taskNotFound", "unknown", task_type=kind, task_uuid=uuid)]})
            return httpx.Response(200, json={"data": [{"taskType": kind, "taskUUID": uuid,
                                                       "response": self.results[uuid]}]})
        raise AssertionError(kind)


def local_image(tmp: Path, name: str, color: int, invert: bool = False) -> LocalImage:
    data = png_bytes(color)
    p = tmp / name
    p.write_bytes(data)
    return LocalImage(path=p, sha256=hashlib.sha256(data).hexdigest(), invert=invert)


@dataclass(frozen=True)
class Audit:
    """The money check of a finished campaign against the server's ledger."""

    charged_tasks: int
    billed_twice: int  # task_keys with more than one charged UUID
    unknown_charges: int  # charged UUIDs the record never heard of
    lost: int  # charged UUIDs whose images are not all on disk, recorded, with matching sha256
    done: int

    @property
    def clean(self) -> bool:
        """Nothing lost, nothing billed twice, no charge the record does not know."""
        return not (self.lost or self.billed_twice or self.unknown_charges)


def audit(images_billed: dict[str, int], out_dir: Path) -> Audit:
    """Compare the ledger (taskUUID -> images billed) with the record and the files on disk."""
    snap, uuids = read_snapshot(out_dir), read_uuids(out_dir)
    rows = {r.task_key: r for r in snap.tasks}
    per_key: dict[str, int] = {}
    unknown = lost = 0
    for uuid, images in images_billed.items():
        key = uuids.get(uuid)
        if key is None:
            unknown += 1
            continue
        per_key[key] = per_key.get(key, 0) + 1
        row = rows[key]
        got = [r for r in snap.results.get(key, ()) if r.task_uuid == uuid and r.output_path]
        ok = row.state == "done" and row.task_uuid == uuid and len(got) == images and all(
            (out_dir / r.output_path).is_file()
            and hashlib.sha256((out_dir / r.output_path).read_bytes()).hexdigest() == r.sha256
            for r in got if r.output_path)
        lost += not ok
    done = sum(r.state == "done" for r in snap.tasks)
    return Audit(len(images_billed), sum(1 for n in per_key.values() if n > 1), unknown, lost,
                 done)


def planned_record(out: Path, tasks: list[Task]) -> tuple[Record, int]:
    """A run record in `out` with `tasks` planned by a new run: (record, run id)."""
    record = open_record(out)
    run_id = record.begin_run(RunMeta(spec_path="spec.yaml", spec_text="", spec_sha256="0",
                                      plan_json="[]", max_usd=Decimal(1000)))
    record.plan(run_id, tasks)
    return record, run_id


def run_executor(out: Path, transport: httpx.AsyncBaseTransport, tasks: list[Task],
                 execution: Execution, *, max_usd: str | int = "1000",
                 url: str = "http://fake.test/v1", key: str = "k", seed: int = 1,
                 **kwargs: Any) -> tuple[Any, Any]:
    """Record `tasks` as planned in `out` and run them through an Executor over `transport`:
    (how the run ended, the Executor)."""
    record, run_id = planned_record(out, tasks)
    try:
        async def main() -> tuple[Any, Any]:
            async with httpx.AsyncClient(transport=transport) as http:
                ex = Executor(tasks, record, RunwareClient(http, url, key), execution,
                              Decimal(max_usd), run_id, rng=random.Random(seed), **kwargs)
                return await ex.run(), ex

        return anyio.run(main)
    finally:
        record.close()


def force_states(out: Path, states: dict[str, tuple[str, str | None]]) -> None:
    """Move recorded tasks (by variant id) to a state, as a run that stopped there would have
    left them: through the record's own events, in a run of their own."""
    record = open_record(out)
    try:
        run_id = record.begin_run(RunMeta(spec_path="", spec_text="", spec_sha256="",
                                          plan_json="[]", max_usd=Decimal(0)))
        rows = {r.variant_id: r for r in record.snapshot().tasks}

        async def main() -> None:
            log = record.run_log(run_id)
            async with anyio.create_task_group() as tg:
                tg.start_soon(log.serve)
                for variant, (state, code) in states.items():
                    row = rows[variant]
                    await log.ended(row.task_key, row.state, state, code, code)
                await log.close()

        anyio.run(main)
        record.end_run(run_id, "stopped", 1, Decimal(0))
    finally:
        record.close()
