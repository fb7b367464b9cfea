"""One campaign as N shard processes at once against one `specrunner serve`, then merged,
beside one process at the same total concurrency.

    python bench/bench_shards.py                 # 1,200 tasks, 1 vs 3 vs 8 processes, 3 rounds
    python bench/bench_shards.py --tasks 240 --shards 3 --rounds 1 --processing fixed:0.5

Each configuration gets a fresh server (`--processing fixed:2 --no-render`: every edit takes
2 s, answered with a tiny fixed image, so the figure is about pacing, not rendering) and a
fresh folder per process; the spec's own delivery and polling settings apply, with
`--concurrency` split evenly among the shards. Timed: from the start of the first process to
the end of the last (interpreter start-up and planning the 1,200 tasks in each process
included), then the merge on its own. Checked: the server billed
each planned task exactly once and nothing else, the merged record holds every task done with
every image on disk matching its sha256, and the shards' budgets add up to no more than the
campaign's. The rounds alternate the configurations (1, 3, 8, 1, 3, 8, ...), so a load
that comes and goes on the machine falls on all of them; the median is the figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_run_cli import write_spec  # noqa: E402
from test_run_kill import start_server, stats  # noqa: E402
from test_run_support import audit  # noqa: E402

from specrunner.record import read_snapshot  # noqa: E402

PRICE = Decimal("0.08")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def specrunner(*argv: object) -> list[str]:
    return [sys.executable, "-m", "specrunner", *(str(a) for a in argv)]


def campaign(folder: Path, tasks: int) -> Path:
    """write_spec's campaign (2 styles x repeat) at `tasks` tasks, with the default execution
    settings and a budget of the estimate plus 5%."""
    spec = write_spec(folder, repeat=tasks // 2)
    text = spec.read_text()
    text = text.replace("execution: {poll_interval_s: 0.05, poll_max_interval_s: 0.1}\n", "")
    budget = (PRICE * tasks * Decimal("1.05")).quantize(Decimal("0.01"))
    spec.write_text(text.replace("budget: {max_usd: 5}", f"budget: {{max_usd: {budget}}}"))
    return spec


def one_config(tmp: Path, spec: Path, shards: int, concurrency: int, processing: str,
               tasks: int) -> dict:
    """Run the campaign as `shards` processes (1: one process, no --shard) and merge them."""
    server, url = start_server("--processing", processing)
    folders = [tmp / f"n{shards}-shard-{k}" for k in range(1, shards + 1)]
    each = max(1, concurrency // shards)
    try:
        t0 = time.monotonic()
        procs = []
        for k, out in enumerate(folders, 1):
            argv = ["run", spec, "--base-url", f"{url}/v1", "--out", out, "--concurrency", each,
                    "--progress", "none"]
            if shards > 1:
                argv += ["--shard", f"{k}/{shards}"]
            procs.append(subprocess.Popen(specrunner(*argv), env=ENV, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        codes = []
        for p in procs:
            _, err = p.communicate(timeout=3600)
            codes.append(p.returncode)
            if p.returncode:
                print(f"  a process ended with exit {p.returncode}: {err.strip()[-300:]}")
        wall = time.monotonic() - t0
        ledger = stats(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    merged = tmp / f"n{shards}-merged"
    t1 = time.monotonic()
    done = subprocess.run(specrunner("merge", *folders, "--out", merged), env=ENV,
                          capture_output=True, text=True, timeout=3600)
    merge_s = time.monotonic() - t1
    if done.returncode:
        raise SystemExit(f"merge failed: {done.stderr}")
    report = json.loads(subprocess.run(specrunner("report", merged, "--format", "json"),
                                       env=ENV, capture_output=True, text=True,
                                       timeout=600).stdout)
    images_ok = sum(
        1 for t in report["tasks"] if t["status"] == "done" for img in t["images"]
        if hashlib.sha256((merged / img["path"]).read_bytes()).hexdigest() == img["sha256"])
    billed = {u: int(Decimal(str(v)) / PRICE) for u, v in ledger["charges"].items()}
    a = audit(billed, merged)
    snaps = [read_snapshot(f) for f in folders]
    budgets = sum((s.runs[-1].max_usd or Decimal(0) for s in snaps), Decimal(0))
    sizes = [len(s.tasks) for s in snaps]
    own = [(s.runs[-1].ended_at or 0) - s.runs[-1].started_at for s in snaps]
    return {"processes": shards, "concurrency_each": each, "exit_codes": codes,
            "wall_s": wall, "merge_s": merge_s, "planned": tasks,
            "billed_tasks": ledger["tasksCharged"], "billed_usd": ledger["totalBilledUSD"],
            "resends_refused": ledger["duplicateAttemptsTotal"], "billed_twice": a.billed_twice,
            "unknown_charges": a.unknown_charges, "lost": a.lost, "done": a.done,
            "report_done": sum(t["status"] == "done" for t in report["tasks"]),
            "images_ok": images_ok, "budgets_sum": budgets,
            "peak_concurrency": ledger["peakConcurrency"], "sizes": sizes,
            "run_s": own}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1200)
    ap.add_argument("--shards", type=int, nargs="+", default=[3, 8])
    ap.add_argument("--concurrency", type=int, default=48, help="in total, split among shards")
    ap.add_argument("--processing", default="fixed:2", help="the server's time per edit")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each configuration")
    ap.add_argument("--keep", action="store_true", help="keep the folders")
    args = ap.parse_args()
    if args.tasks < 2 or args.tasks % 2:
        raise SystemExit("--tasks must be an even number >= 2 (2 styles x repeat)")
    os.environ.setdefault("RUNWARE_API_KEY", "bench-shards-local-key")
    ENV.setdefault("RUNWARE_API_KEY", os.environ["RUNWARE_API_KEY"])
    tmp = Path(tempfile.mkdtemp(prefix="bench-shards-"))
    spec = campaign(tmp, args.tasks)
    print(f"{args.tasks} tasks, total concurrency {args.concurrency}, server --processing "
          f"{args.processing} --no-render; {os.cpu_count()} cores")
    walls: dict[int, list[float]] = {}
    configs = [(r, n) for r in range(args.rounds) for n in [1, *args.shards]]
    for r, n in configs:  # bounded: rounds x configurations runs
        where = tmp / f"round-{r + 1}"
        where.mkdir(exist_ok=True)
        fig = one_config(where, spec, n, args.concurrency, args.processing, args.tasks)
        walls.setdefault(n, []).append(fig["wall_s"])
        clean = (fig["billed_tasks"] == fig["planned"] == fig["done"] == fig["report_done"]
                 == fig["images_ok"] and not (fig["billed_twice"] or fig["unknown_charges"]
                                              or fig["lost"]))
        print(f"round {r + 1}: processes={n} (concurrency {fig['concurrency_each']} each) "
              f"wall={fig['wall_s']:.1f}s merge={fig['merge_s']:.2f}s "
              f"billed={fig['billed_tasks']}/{fig['planned']} tasks "
              f"(${fig['billed_usd']:.2f}) twice={fig['billed_twice']} "
              f"unknown={fig['unknown_charges']} lost={fig['lost']} "
              f"resends_refused={fig['resends_refused']} merged_done={fig['report_done']} "
              f"images_ok={fig['images_ok']} budgets_sum=${fig['budgets_sum']} "
              f"peak_concurrency={fig['peak_concurrency']} exits={fig['exit_codes']} "
              f"{'OK' if clean else 'NOT CLEAN'}", flush=True)
        print(f"  tasks per process {min(fig['sizes'])}..{max(fig['sizes'])}; each process's "
              f"own run (record open to close) {min(fig['run_s']):.1f}..{max(fig['run_s']):.1f}s",
              flush=True)
    base = statistics.median(walls[1])
    for n, w in walls.items():
        med = statistics.median(w)
        print(f"{n} process(es): wall-clock median {med:.1f}s (min {min(w):.1f}, max "
              f"{max(w):.1f}, {len(w)} rounds), {med / base:.2f}x one process")
    if args.keep:
        print(f"folders kept in {tmp}")
    else:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
