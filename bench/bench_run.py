"""Runner throughput and makespan against the in-process local server (prints figures).

    python bench/bench_run.py                       # all three, default sizes
    python bench/bench_run.py --tasks 5000 --latency 0.05 --concurrency 64

1. zero latency: specrunner's executor (record, retries, budget, files) vs a plain httpx + anyio
   loop sending the same requests (POST imageInference sync, GET the image) with nothing else,
   side by side in one process; tasks/s and the ratio.
2. fixed latency L, unlimited capacity: makespan vs the ideal ceil(N / concurrency) x L.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from specrunner.campaign import Execution  # noqa: E402
from specrunner.client import RunwareClient, set_testing  # noqa: E402
from specrunner.executor import Executor  # noqa: E402
from specrunner.local import FaultConfig, Latency, LocalConfig, create_app  # noqa: E402
from specrunner.store import open_store  # noqa: E402
from test_run_support import make_tasks  # noqa: E402


def server(latency: float = 0.0):
    return create_app(LocalConfig(render=False, faults=FaultConfig(latency=Latency("fixed",
                                                                                   latency))))


def run_specrunner(tasks, concurrency: int, latency: float) -> float:
    app = server(latency)
    out = Path(tempfile.mkdtemp(prefix="bench-run-"))
    store = open_store(out)
    run_id = store.begin_run({})
    store.plan_tasks(run_id, tasks)

    async def main() -> float:
        limits = httpx.Limits(max_connections=concurrency + 8)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     limits=limits) as http:
            client = RunwareClient(http, "http://local.bench/v1", "k")
            ex = Executor(tasks, store, client, Execution(concurrency=concurrency,
                                                          request_timeout_s=60),
                          Decimal(10**6), out, run_id, rng=random.Random(0))
            t0 = time.perf_counter()
            outcome = await ex.run()
            dt = time.perf_counter() - t0
            assert outcome.status == "complete", outcome
            assert len(app.ledger.charges) == len(tasks)
            return dt

    try:
        return anyio.run(main)
    finally:
        store.close()


def run_plain(tasks, concurrency: int, latency: float) -> float:
    app = server(latency)

    async def main() -> float:
        limiter = anyio.CapacityLimiter(concurrency)
        limits = httpx.Limits(max_connections=concurrency + 8)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     limits=limits) as http:
            async def one(task) -> None:
                async with limiter:
                    body = [{**task.request, "taskUUID": task.task_uuid}]
                    r = await http.post("http://local.bench/v1", json=body,
                                        headers={"Authorization": "Bearer k"})
                    for item in r.json()["data"]:
                        img = await http.get(item["imageURL"])
                        assert img.status_code == 200

            t0 = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for t in tasks:
                    tg.start_soon(one, t)
            return time.perf_counter() - t0

    return anyio.run(main)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--throughput-tasks", type=int, default=3000)
    args = ap.parse_args()
    set_testing(True)

    n = args.throughput_tasks
    tasks = make_tasks(n, delivery="sync", prompt="zero")
    plain = run_plain(tasks, args.concurrency, 0.0)
    ours = run_specrunner(make_tasks(n, delivery="sync", prompt="zero2"), args.concurrency, 0.0)
    print(f"zero latency, {n} tasks, concurrency {args.concurrency}:")
    print(f"  plain httpx+anyio loop: {n / plain:8.0f} tasks/s ({plain:.2f} s)")
    print(f"  specrunner executor:    {n / ours:8.0f} tasks/s ({ours:.2f} s)")
    print(f"  ratio specrunner/plain: {plain / ours:.2f}")

    n, c, lat = args.tasks, args.concurrency, args.latency
    ideal = math.ceil(n / c) * lat
    ours = run_specrunner(make_tasks(n, delivery="sync", prompt="lat"), c, lat)
    print(f"fixed latency {lat}s, {n} tasks, concurrency {c}:")
    print(f"  makespan {ours:.2f} s, ideal {ideal:.2f} s, overhead {100 * (ours / ideal - 1):.1f}%")


if __name__ == "__main__":
    main()
