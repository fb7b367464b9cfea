"""Requests per second of ONE plain sequential client against `specrunner serve --no-render`.

At concurrency 1 every response's latency is the whole story, so a per-response stall shows
in full: without TCP_NODELAY on the accepted sockets, uvicorn's header write and body write
meet Nagle's algorithm and the client's delayed ACK (~40 ms a response on Linux loopback).
One synchronous httpx.Client (keep-alive, one connection) sends sync imageInference tasks,
one at a time, and, with --downloads, fetches each result image too.

    python bench/bench_sequential.py [--requests 200] [--src DIR]

`--src DIR` serves the code of another checkout (e.g. `git archive main | tar -x -C DIR`),
so "before" and "after" run side by side with the same client.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

import httpx

KEY = "bench-key"


def task() -> dict[str, object]:
    return {"taskType": "imageInference", "taskUUID": str(uuid.uuid4()), "model": "ideogram:3@3",
            "positivePrompt": 'A shop sign reading "BENCH"', "outputFormat": "PNG",
            "inputs": {"seedImage": "https://example.invalid/s.jpg",
                       "maskImage": "https://example.invalid/m.png"}}


def measure(url: str, requests: int, downloads: bool) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) of `requests` sequential POSTs (+ GETs)."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as c:
        c.post("/v1", json=[task()]).raise_for_status()  # warm-up, opens the connection
        t0 = time.perf_counter()
        for _ in range(requests):
            t1 = time.perf_counter()
            r = c.post("/v1", json=[task()])
            r.raise_for_status()
            if downloads:
                c.get(r.json()["data"][0]["imageURL"]).raise_for_status()
            latencies.append(time.perf_counter() - t1)
        return time.perf_counter() - t0, latencies


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--src", help="checkout whose specrunner to serve (default: this one)")
    p.add_argument("--downloads", action="store_true", help="also GET every result image")
    args = p.parse_args()
    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.path.abspath(args.src)
    cmd = [sys.executable, "-m", "specrunner", "serve", "--port", "0", "--no-render",
           "--api-key", KEY]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env,
                            cwd=args.src or None)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = line.split(" on ", 1)[1].split()[0]
        wall, lat = measure(url, args.requests, args.downloads)
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    q = statistics.quantiles(lat, n=20)
    print(f"src={args.src or 'this checkout'} requests={args.requests} "
          f"downloads={args.downloads}: {args.requests / wall:.1f} req/s, "
          f"p50 {statistics.median(lat) * 1000:.2f} ms, p95 {q[18] * 1000:.2f} ms")


if __name__ == "__main__":
    main()
