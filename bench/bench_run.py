"""Runner throughput and makespan against the in-process local server (prints figures).

    python bench/bench_run.py                       # default sizes (about 2 minutes)
    python bench/bench_run.py --fresh               # each measurement in a fresh interpreter
    python bench/bench_run.py --tasks 5000 --latency 0.5 --concurrency 64 --rounds 5

Every figure uses the same server configuration (the local server's no-render fast path,
`render=False`: a fixed 8x8 PNG per result, no fault), the same delivery (`deliveryMethod:
sync`, `outputType: URL`, `outputFormat: PNG`, one result per task: one POST /v1 and one GET
of the image per task, as a real sync run does), the same concurrency and one in-process
httpx.ASGITransport.

1. zero latency: specrunner's executor (durable record, retries, budget, atomic files) vs a
   plain httpx + anyio loop sending exactly the same requests with nothing else, interleaved
   for `--rounds` rounds in one process (a full collection before each measurement, so none
   pays for the garbage of the one before) or with `--fresh` each in a new interpreter; the
   median of each and of the ratio. The runner raises CPython's young-generation GC
   threshold while it runs (specrunner.executor); the plain loop is also measured under the
   same settings, so the ratio can be read with and without that advantage. The server
   alone (the same ASGI calls without httpx or any client) is measured too: it bounds both.
   The record alone (the same statements and waits per task, no HTTP, no files) is
   measured too: it bounds what the durable record costs the runner.
2. fixed latency L on every POST /v1, unlimited capacity: makespan vs the ideal
   ceil(N / concurrency) x L. Default L = 0.5 s: real ideogram:3@3 edits take seconds, so
   half a second is already a pessimistic (fast) server for the runner's overhead.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import anyio
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from specrunner.spec.types import Execution  # noqa: E402
from specrunner.client import RunwareClient, set_testing  # noqa: E402
from specrunner.executor import Executor  # noqa: E402
from specrunner.local import FaultConfig, Latency, LocalConfig, create_app  # noqa: E402
from specrunner.store import open_store  # noqa: E402
from test_run_support import make_tasks  # noqa: E402


# Every measurement's record and outputs go under one folder, removed when the bench ends:
# not between measurements, because deleting thousands of files costs the next one (on a
# filesystem mounted with online discard, as here, each deletion is a discard request).
SCRATCH: str | None = None


def server(latency: float = 0.0):
    return create_app(LocalConfig(render=False, faults=FaultConfig(latency=Latency("fixed",
                                                                                   latency))))


def planned_record(tasks, prefix: str):
    """A new run record in the scratch folder with `tasks` planned: (store, run_id, folder).
    run_specrunner's setup, which it does not time."""
    out = Path(tempfile.mkdtemp(prefix=prefix, dir=SCRATCH))
    store = open_store(out)
    run_id = store.begin_run({})
    store.plan_tasks(run_id, tasks)
    return store, run_id, out


def run_specrunner(tasks, concurrency: int, latency: float) -> float:
    app = server(latency)
    store, run_id, out = planned_record(tasks, "run-")

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



async def fan_out(one, tasks) -> float:
    """Seconds to run `one(t)` for every task in one task group (the baselines' loop)."""
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for t in tasks:
            tg.start_soon(one, t)
    return time.perf_counter() - t0

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

            return await fan_out(one, tasks)

    return anyio.run(main)


def run_server_only(tasks, concurrency: int) -> float:
    """The same POST /v1 + GET image per task, straight into the ASGI app (no client)."""
    app = server(0.0)

    async def call(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        scope = {"type": "http", "method": method, "path": path, "scheme": "http",
                 "headers": [(b"host", b"local.bench"), (b"authorization", b"Bearer k")],
                 "server": ("local.bench", 80), "root_path": "", "query_string": b""}
        sent = False
        status, parts = 0, []

        async def receive():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            else:
                parts.append(msg.get("body", b""))

        await app(scope, receive, send)
        return status, b"".join(parts)

    async def main() -> float:
        limiter = anyio.CapacityLimiter(concurrency)

        async def one(task) -> None:
            async with limiter:
                body = json.dumps([{**task.request, "taskUUID": task.task_uuid}]).encode()
                status, raw = await call("POST", "/v1", body)
                for item in json.loads(raw)["data"]:
                    path = item["imageURL"].split("local.bench", 1)[1]
                    st, _ = await call("GET", path, b"")
                    assert st == 200

        return await fan_out(one, tasks)

    return anyio.run(main)


def run_record_only(tasks, concurrency: int) -> tuple[float, float]:
    """The record alone: per task the statements and waits a sync run makes ("sending" in a
    batch commit, attempt + results + received queued, download attempt queued, output +
    done waited), `concurrency` tasks at once, no HTTP, no files. (seconds, loop CPU s)."""
    from specrunner import store as st
    from specrunner.batching import Writer

    out = Path(tempfile.mkdtemp(prefix="record-", dir=SCRATCH))
    store = open_store(out)
    store.plan_tasks(1, tasks)

    async def main() -> tuple[float, float]:
        w = Writer(store)
        lim = anyio.CapacityLimiter(concurrency)

        async def rest(t, token) -> None:
            w.queue([st.op_attempt(t.task_key, 1, t.task_uuid, "send", 1.0, 2.0, 200, "results")])
            w.queue([st.op_result(t.task_key, 0, {"taskUUID": t.task_uuid, "imageUUID": "x",
                                                  "seed": 1, "cost": 0.08}, 2.0)]
                    + st.op_state(t.task_key, 1, "sending", "received", now=2.0))
            w.queue([st.op_attempt(t.task_key, 1, t.task_uuid, "download", 2.0, 2.5, 200, "ok")])
            lim.release_on_behalf_of(token)
            await w.write([st.op_output(t.task_key, 0, "a.png", "0" * 64, 10)]
                          + st.op_state(t.task_key, 1, "received", "done", now=3.0, cost="0.08"))

        async with anyio.create_task_group() as tg:
            tg.start_soon(w.run)
            c0, t0 = time.thread_time(), time.perf_counter()
            async with anyio.create_task_group() as g:
                i = 0
                while i < len(tasks):
                    token = object()
                    await lim.acquire_on_behalf_of(token)
                    batch = [(tasks[i], token)]
                    i += 1
                    while i < len(tasks):
                        token = object()
                        try:
                            lim.acquire_on_behalf_of_nowait(token)
                        except anyio.WouldBlock:
                            break
                        batch.append((tasks[i], token))
                        i += 1
                    await w.write([op for t, _ in batch for op in st.op_state(
                        t.task_key, 1, "planned", "sending", now=1.0, attempts=1,
                        task_uuid=t.task_uuid, generation=0)])
                    for t, token in batch:
                        g.start_soon(rest, t, token)
            took, cpu = time.perf_counter() - t0, time.thread_time() - c0
            await w.close()
        return took, cpu

    try:
        return anyio.run(main)
    finally:
        store.close()


def plain_with_runner_gc(tasks, concurrency: int, latency: float) -> float:
    """The plain loop under the garbage-collector settings the runner gives itself."""
    from specrunner.executor import _young_garbage_collected_less

    with _young_garbage_collected_less():
        return run_plain(tasks, concurrency, latency)


MEASURES = {"plain": run_plain, "specrunner": run_specrunner, "plain+gc": plain_with_runner_gc}


def measure(name: str, n: int, c: int, tag: str, fresh: bool) -> float:
    """Tasks per second of one measurement: in this process after a full collection (so no
    measurement pays for the garbage of the one before), or in a fresh interpreter."""
    if fresh:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--throughput-tasks",
                              str(n), "--concurrency", str(c), "--tag", tag,
                              "--scratch", str(SCRATCH)],
                             capture_output=True, text=True, check=True)
        return float(out.stdout.split()[-1])
    gc.collect()
    tasks = make_tasks(n, delivery="sync", prompt=tag)
    if name in SETUPS:  # bench_instructions.py: what the timed measurements leave out
        SETUPS[name](tasks)
        return 0.0
    if name == "server":
        return n / run_server_only(tasks, c)
    return n / MEASURES[name](tasks, c, 0.0)


SETUPS = {"tasks": lambda tasks: None,
          "record-setup": lambda tasks: planned_record(tasks, "setup-")[0].close()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--throughput-tasks", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fresh", action="store_true",
                    help="each zero-latency measurement in a fresh interpreter")
    ap.add_argument("--one", choices=[*MEASURES, "server", *SETUPS], help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="one", help=argparse.SUPPRESS)
    ap.add_argument("--scratch", help=argparse.SUPPRESS)
    args = ap.parse_args()
    set_testing(True)
    global SCRATCH
    if args.one:
        SCRATCH = args.scratch
        print(measure(args.one, args.throughput_tasks, args.concurrency, args.tag, False))
        return
    SCRATCH = tempfile.mkdtemp(prefix="bench-run-")
    try:
        figures(args)
    finally:
        shutil.rmtree(SCRATCH)


def figures(args: argparse.Namespace) -> None:
    n, c = args.throughput_tasks, args.concurrency

    names = ["plain", "specrunner", "plain+gc", "server"]
    rates: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.rounds):
        for k in names:
            rates[k].append(measure(k, n, c, f"{k}{r}", args.fresh))
        p, o, g = rates["plain"][-1], rates["specrunner"][-1], rates["plain+gc"][-1]
        print(f"  round {r + 1}: plain {p:.0f}/s, specrunner {o:.0f}/s, ratio {o / p:.2f}; "
              f"plain under the runner's GC settings {g:.0f}/s (ratio {o / g:.2f}); "
              f"server alone {rates['server'][-1]:.0f}/s", flush=True)
    med = statistics.median
    ratios = [o / p for o, p in zip(rates["specrunner"], rates["plain"])]
    ratios_gc = [o / g for o, g in zip(rates["specrunner"], rates["plain+gc"])]
    where = "a fresh interpreter each" if args.fresh else "one process, gc.collect() before each"
    print(f"zero latency, {n} tasks, concurrency {c}, median of {args.rounds} interleaved "
          f"rounds ({where}):")
    print(f"  server alone (no client):  {med(rates['server']):8.0f} tasks/s")
    print(f"  plain httpx+anyio loop:    {med(rates['plain']):8.0f} tasks/s")
    print(f"  specrunner executor:       {med(rates['specrunner']):8.0f} tasks/s")
    print(f"  ratio specrunner/plain:    {med(ratios):.2f} (rounds: "
          f"{', '.join(f'{x:.2f}' for x in ratios)})")
    print(f"  plain loop under the runner's GC settings: {med(rates['plain+gc']):.0f} tasks/s, "
          f"ratio specrunner/that {med(ratios_gc):.2f}")
    rec = [run_record_only(make_tasks(n, delivery="sync", prompt=f"rec{r}"), c)
           for r in range(args.rounds)]
    took, cpu = med(x[0] for x in rec), med(x[1] for x in rec)
    print(f"  the record alone (same statements and waits, no HTTP, no files): "
          f"{n / took:.0f} tasks/s, {1e6 * cpu / n:.0f} us of loop CPU per task")

    n, lat = args.tasks, args.latency
    ideal = math.ceil(n / c) * lat
    took = run_specrunner(make_tasks(n, delivery="sync", prompt="lat"), c, lat)
    print(f"fixed latency {lat}s, {n} tasks, concurrency {c}:")
    print(f"  makespan {took:.2f} s, ideal {ideal:.2f} s, ratio {took / ideal:.3f} "
          f"(overhead {100 * (took / ideal - 1):.1f}%)")


if __name__ == "__main__":
    main()
