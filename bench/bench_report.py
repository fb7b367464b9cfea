"""Benchmark: `specrunner report` on a large run record, every text format (issues 5 and 13).

    python bench/bench_report.py [--sizes 10000,50000] [--rounds 3] [--html] [--src DIR]
                                 [--keep DIR]

For each size, writes a spec (URL inputs x 5 styleTypes x shop names) and records a
finished-looking campaign through the record's own write API, as the run stage does
(`open_record`, `begin_run`, `Record.plan`, then the RunLog events of every task: sending,
attempt, accepted, results, done with its file; ended for the others): 90% done with a
64x48 PNG written per result, 5% failed (content policy / provider timeouts), 3% never
sent, 2% in doubt; one send attempt per task plus a retry on every 20th. No SQL of its own.

Then measures the command a user types, `python -m specrunner report SPEC --format F`, in a
fresh process from exec to exit (imports, record read, summary, render, teardown), for
table, markdown, json and csv: best of `--rounds`, and the child's peak RSS (measured by a
wrapper process whose only child it is). `--html` adds the contact sheet, cold (thumbnails
made, images copied) and warm, once each. `--src DIR` measures the specrunner source tree in
DIR instead of this one (the record is built by it too), for before/after side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STYLES = ["GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"]

# Builds the record (in a child, against the source tree given as argv[1]).
RECORD = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
import hashlib, io
from decimal import Decimal
from pathlib import Path
import anyio
from PIL import Image
from specrunner.plan import build_plan
from specrunner.record import RunMeta, open_record
from specrunner.spec import load_spec

t0 = time.perf_counter()
spec_path = Path(sys.argv[2])
plan = build_plan(load_spec(spec_path))
out = plan.spec.output.dir
record = open_record(out)
run_id = record.begin_run(RunMeta(
    spec_path=str(spec_path), spec_text=spec_path.read_text(encoding="utf-8"),
    spec_sha256=plan.spec.source_sha256,
    plan_json="[" + ", ".join('{"task_key": "%s"}' % t.task_key for t in plan.tasks) + "]",
    max_usd=plan.spec.budget.max_usd))
record.plan(run_id, plan.tasks)


def png(i):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (i % 256, (i // 256) % 256, 90)).save(buf, "PNG")
    return buf.getvalue()


async def task(log, i, t):
    k, u = t.task_key, t.task_uuid
    if i % 100 < 3:
        return  # never sent
    now = log.wall()
    log.sending(k, "planned", u, 0, 1)
    log.attempt(k, u, "send", now, 200, "accepted")
    if i % 20 == 7:
        log.attempt(k, u, "send", now + 1, 200, "accepted")
    if i % 100 < 5:
        await log.ended(k, "sending", "in_doubt", "runnerTimeout", "injected")
    elif i % 100 < 10:
        code = "contentPolicyViolation" if i % 2 else "timeoutProvider"
        await log.ended(k, "sending", "failed", code, "injected")
    else:
        log.accepted(k, "sending", "accepted")
        log.results(k, "accepted", [{"taskUUID": u, "imageUUID": u, "seed": i, "cost": 0.08,
                                     "imageURL": f"https://example.invalid/{u}.png"}])
        data = png(i)
        await log.done(k, "received", [(t.output_paths()[0], data,
                                        hashlib.sha256(data).hexdigest())], Decimal("0.08"))


async def main():
    log = record.run_log(run_id)
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.serve)
        try:
            limit = anyio.Semaphore(512)  # as a run keeps many tasks in flight

            async def one(i, t):
                async with limit:
                    await task(log, i, t)

            async with anyio.create_task_group() as work:
                for i, t in enumerate(plan.tasks):
                    work.start_soon(one, i, t)
        finally:
            await log.close()

anyio.run(main)
record.end_run(run_id, "failed", 1, Decimal("0.08") * sum(i % 100 >= 10
                                                          for i in range(len(plan.tasks))))
record.close()
print(f"{len(plan.tasks)} {time.perf_counter() - t0:.1f}")
"""

# Times one command in a fresh wrapper process whose only child it is: RUSAGE_CHILDREN is
# then that command's own peak RSS.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
seconds = time.perf_counter() - t0
print(json.dumps({"s": seconds, "code": proc.returncode, "err": proc.stderr.decode()[-2000:],
                  "chars": len(proc.stdout.decode()),
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_spec(folder: Path, tasks: int) -> Path:
    """I URL inputs x 5 styleTypes x N/(5 I) shop names (an axis takes at most 1,000 values:
    I = 2 up to 10,000 tasks, 10 at 50,000)."""
    count = max(2, -(-tasks // (len(STYLES) * 1000)))
    names = tasks // (count * len(STYLES))
    assert count * len(STYLES) * names == tasks, "sizes must be multiples of 10 x inputs"
    inputs = "\n".join(f'  in{i}: {{seed: "https://example.com/{i}.jpg", '
                       f'mask: "https://example.com/{i}.png"}}' for i in range(count))
    spec = folder / "bench.yaml"
    spec.write_text(f"""version: 1
name: report-bench
model: ideogram:3@3
defaults: {{outputFormat: PNG}}
inputs:
{inputs}
prompts:
  sign: 'A sign reading "{{shop}}"'
matrix:
  input: [{", ".join(f"in{i}" for i in range(count))}]
  styleType: [{", ".join(STYLES)}]
  shop: [{", ".join(f"SHOP {i}" for i in range(names))}]
output: {{dir: run, name: "{{input}}/{{styleType}}/{{shop}}"}}
budget: {{max_usd: 100000, max_tasks: {max(tasks, 10)}}}
""", encoding="utf-8")
    return spec


def report(spec: Path, fmt: str, src: Path) -> dict:
    """`python -m specrunner report SPEC --format FMT` once, in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "specrunner",
                           "report", str(spec), "--format", fmt], capture_output=True,
                          text=True, check=True, cwd=spec.parent,
                          env={**os.environ, "PYTHONPATH": str(src)})
    r = json.loads(proc.stdout)
    assert r["code"] == 0, r["err"]
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--rounds", type=int, default=3, help="runs per format (best)")
    ap.add_argument("--html", action="store_true", help="also the contact sheet, cold and warm")
    ap.add_argument("--src", help="specrunner source tree to measure (default: this one)")
    ap.add_argument("--keep", help="build the records under DIR and keep them")
    args = ap.parse_args()
    src = Path(args.src).resolve() if args.src else ROOT
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs;"
          f" source {src}")
    print(f"command: {sys.executable} -m specrunner report SPEC --format F (fresh process, "
          f"best of {args.rounds}; PYTHONPATH=source)\n")
    print(f"{'tasks':>7} {'format':<24} {'seconds':>8} {'us/task':>8} {'max RSS MB':>11} "
          f"{'output chars':>13}")
    formats = ["table", "markdown", "json", "csv"]
    with tempfile.TemporaryDirectory() as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            folder = Path(args.keep or tmp) / f"report-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            spec = write_spec(folder, n)
            proc = subprocess.run([sys.executable, "-c", RECORD, str(src), str(spec)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"building the record failed:\n{proc.stderr}")
            tasks, built = proc.stdout.split()
            assert int(tasks) == n, proc.stdout
            print(f"{n:>7} {'(record built, s)':<24} {float(built):>8.1f}")
            rows = [(fmt, [report(spec, fmt, src) for _ in range(args.rounds)])
                    for fmt in formats]
            if args.html:
                rows += [(label, [report(spec, "html", src)])
                         for label in ("html (cold thumbnails)", "html (warm)")]
            for fmt, runs in rows:
                best = min(r["s"] for r in runs)
                print(f"{n:>7} {fmt:<24} {best:>8.3f} {best / n * 1e6:>8.1f} "
                      f"{max(r['rss_mb'] for r in runs):>11.1f} {runs[0]['chars']:>13,}",
                      flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
