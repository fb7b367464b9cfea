"""The runner in-process against the local server: zero-latency throughput and makespan.

    python bench/bench_run.py                       # about a minute
    python bench/bench_run.py --tasks 5000 --latency 0.5 --concurrency 64 --rounds 3

Both figures use the local server's no-render fast path (`render=False`: a fixed 8x8 PNG per
result, no fault), sync delivery, `outputType: URL`, one result per task (one POST /v1 and one
GET of the image per task), through one in-process httpx.ASGITransport.

1. Zero latency: specrunner's executor (durable record, retries, budget, atomic files) in
   tasks per second, beside a plain httpx + anyio loop sending the same requests and keeping
   nothing (for reference only: the ratio is not a goal; real edits take seconds, see
   bench_pace.py). Target: >= 1,000 tasks/s.
2. Fixed latency L on every POST /v1: makespan against the ideal ceil(N / concurrency) x L.
   Target: within 5%.
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_run_support import make_tasks, planned_record

from specrunner.local import FaultConfig, Latency, LocalConfig, create_app
from specrunner.run import set_testing
from specrunner.run.client import RunwareClient
from specrunner.run.executor import Executor
from specrunner.spec.types import Execution


def server(latency: float = 0.0):
    return create_app(LocalConfig(render=False, faults=FaultConfig(latency=Latency("fixed",
                                                                                   latency))))


def run_specrunner(tasks, concurrency: int, latency: float, scratch: str) -> float:
    """Seconds for the executor to take `tasks` to done (the record's setup not timed)."""
    app = server(latency)
    out = Path(tempfile.mkdtemp(prefix="run-", dir=scratch))
    record, run_id = planned_record(out, tasks)

    async def main() -> float:
        limits = httpx.Limits(max_connections=concurrency + 8)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     limits=limits) as http:
            client = RunwareClient(http, "http://local.bench/v1", "k")
            ex = Executor(tasks, record, client, Execution(concurrency=concurrency,
                                                           request_timeout_s=60),
                          Decimal(10**6), run_id, rng=random.Random(0))
            t0 = time.perf_counter()
            outcome = await ex.run()
            dt = time.perf_counter() - t0
            assert outcome.status == "complete", outcome
            assert len(app.ledger.charges) == len(tasks)
            return dt

    try:
        return anyio.run(main)
    finally:
        record.close()


def run_plain(tasks, concurrency: int, latency: float) -> float:
    """Seconds for a plain loop: POST each task, GET its image, keep nothing."""
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
    ap.add_argument("--tasks", type=int, default=5000, help="tasks of the latency run")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--throughput-tasks", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    set_testing(True)
    scratch = tempfile.mkdtemp(prefix="bench-run-")
    try:
        n, c = args.throughput_tasks, args.concurrency
        runner, plain = [], []
        for r in range(args.rounds):
            gc.collect()
            runner.append(n / run_specrunner(make_tasks(n, delivery="sync", prompt=f"s{r}"),
                                             c, 0.0, scratch))
            gc.collect()
            plain.append(n / run_plain(make_tasks(n, delivery="sync", prompt=f"p{r}"), c, 0.0))
            print(f"  round {r + 1}: specrunner {runner[-1]:.0f}/s, plain loop {plain[-1]:.0f}/s",
                  flush=True)
        med = statistics.median
        print(f"zero latency, {n} tasks, concurrency {c}, median of {args.rounds} rounds:")
        print(f"  specrunner executor: {med(runner):7.0f} tasks/s (target >= 1,000)")
        print(f"  plain httpx loop:    {med(plain):7.0f} tasks/s (keeps nothing; ratio "
              f"{med(runner) / med(plain):.2f}, for reference)")
        n, lat = args.tasks, args.latency
        ideal = math.ceil(n / c) * lat
        took = run_specrunner(make_tasks(n, delivery="sync", prompt="lat"), c, lat, scratch)
        print(f"fixed latency {lat} s, {n} tasks, concurrency {c}:")
        print(f"  makespan {took:.2f} s, ideal {ideal:.2f} s, ratio {took / ideal:.3f} "
              f"(target <= 1.05)")
    finally:
        shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
