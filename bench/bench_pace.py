"""Where users are: edits that take seconds, over a real socket, both delivery modes.

    python bench/bench_pace.py                    # everything (about 35 minutes)
    python bench/bench_pace.py --only pace --processing 2 --concurrency 64
    python bench/bench_pace.py --only zero        # the three clients at zero latency

1. Pace. `specrunner serve --no-render --processing P` in its own process, on 127.0.0.1;
   specrunner runs 4 x concurrency tasks through it (Runner with a base URL, as `run
   --base-url` does). Ideal = P x waves, the waves being ceil(tasks / concurrency) plus one
   for the price probe (a run that starts without a known price sends one task alone first);
   for a spread (uniform:LO,HI) the mean makespan of simulated perfect schedules (`_ideal`).
   Figures: makespan / ideal, and POSTs to /v1 per task (counted on the client's transport).
   Beside specrunner, against the same server and tasks, what a user would write instead
   (`--no-baselines` skips them): the plain httpx loop and the official SDK of part 2, sync
   delivery; they keep no budget, so send no probe, and their ideal has no probe wave.
   Targets (issue 13): <= 1.10 at 2 s and 10 s, concurrency 64 and 256, both modes; async
   <= 1.5 POSTs per task.
2. Zero latency over the socket (`--processing 0`, sync delivery, URL outputs), three clients
   in one run against the same server, one after the other: specrunner; a plain httpx +
   anyio loop that POSTs each task and downloads and saves its image; Runware's official
   SDK (`runware-sdk`, REST transport, asyncio.gather under a semaphore), downloading and
   saving each image with httpx. Target: specrunner at least as fast as both.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import anyio
import httpx
from tabulate import tabulate

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-pace-key"

SPEC = """\
version: 1
name: pace
inputs:
  shop:
    seed: https://example.com/seed.png
    mask: https://example.com/mask.png
prompts:
  sign: "A sign reading OPEN ({tag})"  # every run its own tasks: no answer from an earlier run
matrix:
  styleType: [DESIGN, REALISTIC]
repeat: {repeat}
budget: {{max_usd: 1000, max_tasks: 100000}}
execution: {{concurrency: {concurrency}, delivery: {delivery}, request_timeout_s: 120,
             task_deadline_s: 3600}}
"""


class Serve:
    """`specrunner serve` in a process of its own, on a free loopback port."""

    def __init__(self, *flags: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "specrunner", "serve", "--port", "0", "--no-render",
             "--api-key", KEY, *flags], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = line.split(" on ", 1)[1].split()[0]

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/admin/stats", headers={"Authorization": f"Bearer {KEY}"},
                         timeout=30).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


class Counting(httpx.AsyncBaseTransport):
    """A real HTTP transport that counts the POSTs it sends."""

    def __init__(self, concurrency: int) -> None:
        from specrunner.run.client import PooledTransport

        self.inner = PooledTransport(2 * concurrency + 8)  # as the Runner makes its own
        self.posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.posts += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def write_spec(folder: Path, tasks: int, concurrency: int, delivery: str) -> Path:
    path = folder / "pace.yaml"
    path.write_text(SPEC.format(repeat=math.ceil(tasks / 2), concurrency=concurrency,
                                delivery=delivery, tag=folder.name))
    return path


def run_specrunner(url: str, spec_path: Path, out: Path) -> tuple[float, int, int, str]:
    """(makespan s, POSTs, tasks, status) of one specrunner run against `url`."""
    from specrunner.plan import build_plan
    from specrunner.run import Runner
    from specrunner.spec import load_spec

    plan = build_plan(load_spec(spec_path))
    transport = Counting(plan.spec.execution.concurrency)
    runner = Runner(plan, out_dir=out, api_key=KEY, base_url=f"{url}/v1", transport=transport)
    t0 = time.perf_counter()
    result = runner.run_sync()
    return time.perf_counter() - t0, transport.posts, len(plan.tasks), result.status


def pace(args: argparse.Namespace, scratch: Path) -> list[list[object]]:
    rows = []
    for processing in args.processing:
        server = Serve("--processing", processing)
        try:
            for conc in args.concurrency:
                for delivery in args.delivery:
                    folder = Path(tempfile.mkdtemp(dir=scratch))
                    tasks = 4 * conc
                    spec = write_spec(folder, tasks, conc, delivery)
                    took, posts, n, status = run_specrunner(server.url, spec, folder / "out")
                    ideal = _ideal(processing, n, conc)
                    rows.append([processing, conc, f"specrunner {delivery}", n, f"{took:.1f}",
                                 f"{ideal:.1f}", f"{took / ideal:.3f}", f"{posts / n:.2f}",
                                 status])
                    print("  ", rows[-1], flush=True)
                    shutil.rmtree(folder)
                if args.baselines:
                    rows += baselines(server.url, processing, 4 * conc, conc, scratch)
        finally:
            server.close()
    return rows


def baselines(url: str, processing: str, n: int, conc: int, scratch: Path) -> list[list[object]]:
    """What a user would write instead, against the same server: the plain loop and the
    official SDK, sync delivery, each task POSTed, its image downloaded and saved. They send
    no price probe (they keep no budget), so their ideal has no probe wave."""
    rows: list[list[object]] = []
    for name, loop in (("plain httpx loop", "plain"), ("official SDK", "sdk")):
        folder = Path(tempfile.mkdtemp(dir=scratch))
        try:
            took = (anyio.run(plain_loop, url, n, conc, folder) if loop == "plain"
                    else asyncio.run(sdk_loop(url, n, conc, folder)))
        except ImportError:
            continue  # runware-sdk not installed
        finally:
            shutil.rmtree(folder)
        ideal = _ideal(processing, n, conc, probe=False)
        rows.append([processing, conc, name, n, f"{took:.1f}", f"{ideal:.1f}",
                     f"{took / ideal:.3f}", "1.00", "complete"])
        print("  ", rows[-1], flush=True)
    return rows


def _ideal(processing: str, tasks: int, conc: int, draws: int = 200, probe: bool = True
           ) -> float:
    """The makespan of a perfect client: the price probe alone, then every task started the
    instant a slot frees, no time lost between. For a fixed time S that is S x waves; for
    uniform:LO,HI it is the mean over `draws` simulated schedules of the same distribution
    (a spread's last wave ends with its longest edit, so the mean x waves would be too low)."""
    kind, _, params = processing.partition(":")
    values = [float(x) for x in (params or kind).split(",")]
    if kind != "uniform":
        return (math.ceil(tasks / conc) + probe) * values[-1]
    rng = random.Random(13)
    total = 0.0
    for _ in range(draws):
        first = rng.uniform(*values) if probe else 0.0
        free = [first] * conc  # when each slot is next free
        for _ in range(tasks - probe):
            heapq.heappush(free, heapq.heappop(free) + rng.uniform(*values))
        total += max(free)
    return total / draws


def _task(i: int) -> dict:
    return {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "ideogram:3@3",
            "positivePrompt": f"A sign reading OPEN {i}", "deliveryMethod": "sync",
            "inputs": {"seedImage": "https://example.com/seed.png",
                       "maskImage": "https://example.com/mask.png"}}


async def plain_loop(url: str, n: int, conc: int, out: Path) -> float:
    """What a user would write: POST each task, GET its image, write it to a file."""
    limiter = anyio.CapacityLimiter(conc)
    limits = httpx.Limits(max_connections=2 * conc, max_keepalive_connections=2 * conc)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        async def one(i: int) -> None:
            async with limiter:
                r = await http.post(f"{url}/v1", json=[_task(i)],
                                    headers={"Authorization": f"Bearer {KEY}"})
                for item in r.json()["data"]:
                    img = await http.get(item["imageURL"])
                    (out / f"{i}.jpg").write_bytes(img.content)

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return time.perf_counter() - t0


async def sdk_loop(url: str, n: int, conc: int, out: Path) -> float:
    """Runware's official SDK over REST, asyncio.gather under a semaphore, saving each image."""
    from runware import Runware

    sem = asyncio.Semaphore(conc)
    limits = httpx.Limits(max_connections=2 * conc, max_keepalive_connections=2 * conc)
    async with Runware(api_key=KEY, transport="rest", http_base_url=f"{url}/v1",
                       timeout=120_000) as rw, httpx.AsyncClient(limits=limits) as http:
        async def one(i: int) -> None:
            async with sem:
                items = await rw.run(_task(i))
                for item in items:
                    img = await http.get(item["imageURL"])
                    (out / f"{i}.jpg").write_bytes(img.content)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        return time.perf_counter() - t0


def zero(args: argparse.Namespace, scratch: Path) -> list[list[object]]:
    n, conc = args.zero_tasks, args.zero_concurrency
    server = Serve("--processing", "0")
    rows = []
    try:
        for rnd in range(args.rounds):
            folder = Path(tempfile.mkdtemp(dir=scratch))
            spec = write_spec(folder, n, conc, "sync")
            took, _posts, tasks, status = run_specrunner(server.url, spec, folder / "out")
            assert status == "complete", status
            plain_out = folder / "plain"
            plain_out.mkdir()
            plain = anyio.run(plain_loop, server.url, tasks, conc, plain_out)
            sdk_out = folder / "sdk"
            sdk_out.mkdir()
            try:
                sdk = asyncio.run(sdk_loop(server.url, tasks, conc, sdk_out))
                sdk_rate: object = f"{tasks / sdk:.0f}"
            except ImportError:
                sdk_rate = "runware-sdk not installed"
            rows.append([rnd + 1, tasks, conc, f"{tasks / took:.0f}", f"{tasks / plain:.0f}",
                         sdk_rate, f"{plain / took:.2f}"])
            print("  ", rows[-1], flush=True)
            shutil.rmtree(folder)
    finally:
        server.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["pace", "zero"])
    ap.add_argument("--processing", nargs="+", default=["fixed:2", "fixed:10", "uniform:5,15"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=[16, 64, 256])
    ap.add_argument("--delivery", nargs="+", default=["sync", "async"])
    ap.add_argument("--zero-tasks", type=int, default=2000)
    ap.add_argument("--zero-concurrency", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-baselines", dest="baselines", action="store_false",
                    help="pace: skip the plain loop and the official SDK beside specrunner")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-pace-"))
    try:
        if args.only in (None, "pace"):
            rows = pace(args, scratch)
            print(tabulate(rows, headers=["processing", "concurrency", "client", "tasks",
                                          "makespan s", "ideal s", "ratio", "POSTs/task",
                                          "status"], disable_numparse=True))
        if args.only in (None, "zero"):
            rows = zero(args, scratch)
            print(tabulate(rows, headers=["round", "tasks", "concurrency", "specrunner /s",
                                          "plain loop /s", "official SDK /s",
                                          "specrunner / plain"], disable_numparse=True))
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
