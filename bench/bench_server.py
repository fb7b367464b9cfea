"""How many requests per second the local server sustains, so load tests know it is not
their bottleneck.

Loopback: `specrunner serve --port 0` in a child process (uvicorn, h11), driven by one
httpx.AsyncClient at a fixed concurrency. In-process: the same app through ASGITransport.
Each mode runs with the edit engine (1024x768 placeholder inputs, JPG out) and with
`--no-render` (a fixed 8x8 image). A bounded number of sync imageInference requests each.

    python bench/bench_server.py [--requests 300] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import anyio
import httpx
from tabulate import tabulate

from specrunner.local import LocalConfig, create_app
from specrunner.local.testing import client, inference_task

KEY = "bench-key"


def task() -> dict[str, Any]:
    return inference_task(positivePrompt='A shop sign reading "BENCH MARK"', outputFormat="JPG")


async def drive(c: httpx.AsyncClient, requests: int, concurrency: int) -> tuple[float, list[float]]:
    """Send `requests` POSTs with `concurrency` workers; (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    left = requests

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t0 = time.perf_counter()
            r = await c.post("/v1", json=[task()])
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"unexpected HTTP {r.status_code}: {r.text[:200]}")

    await c.post("/v1", json=[task()])  # warm-up (fonts, placeholder cache)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(worker)
    return time.perf_counter() - t0, latencies


def loopback(render: bool, requests: int, concurrency: int) -> tuple[float, list[float]]:
    cmd = [sys.executable, "-m", "specrunner", "serve", "--port", "0", "--api-key", KEY]
    if not render:
        cmd.append("--no-render")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = line.split()[4]

        async def main() -> tuple[float, list[float]]:
            limits = httpx.Limits(max_connections=concurrency)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits,
                                         headers={"Authorization": f"Bearer {KEY}"}) as c:
                return await drive(c, requests, concurrency)
        return anyio.run(main)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def in_process(render: bool, requests: int, concurrency: int) -> tuple[float, list[float]]:
    server = create_app(LocalConfig(render=render))

    async def main() -> tuple[float, list[float]]:
        async with client(server, KEY) as c:
            return await drive(c, requests, concurrency)
    return anyio.run(main)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16)
    args = p.parse_args()
    rows = []
    for mode, fn in (("loopback (uvicorn)", loopback), ("in-process (ASGI)", in_process)):
        for render in (True, False):
            n = args.requests if not render else max(50, args.requests // 3)
            wall, lat = fn(render, n, args.concurrency)
            q = statistics.quantiles(lat, n=20)
            rows.append([mode, "engine" if render else "no-render", n, args.concurrency,
                         f"{n / wall:.0f}", f"{statistics.median(lat) * 1000:.1f}",
                         f"{q[18] * 1000:.1f}"])
    print(f"cpus={os.cpu_count()} python={sys.version.split()[0]}")
    print(tabulate(rows, headers=["mode", "images", "requests", "concurrency", "req/s",
                                  "p50 ms", "p95 ms"]))


if __name__ == "__main__":
    main()
