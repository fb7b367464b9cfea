"""Benchmark: `specrunner run SPEC --local` again on a campaign that is already finished.

    python bench/bench_resume.py [--sizes 10000,50000] [--rounds 3] [--src DIR] [--keep DIR]

For each size, writes a spec (10 real local seed/mask pairs x 5 styleTypes x N/50 shop
names, PNG outputs) and runs the whole campaign once through the real run stage (`Runner`
against the built-in server with `render=False`: a fixed 8x8 image per task, so building
the campaign is quick), then times the resume the issue is about, as a user types it: a
fresh `python -m specrunner run SPEC --local --progress none` process, from exec to exit
(interpreter start-up, imports, spec load, plan, record, and nothing to send), `--rounds`
times; its peak RSS is the child's ru_maxrss (os.wait4). Each resume is checked through the
record's read API: exit 0, one run more, no request logged, every task still done.

`--src DIR` runs everything (campaign and resumes) against the specrunner source tree in DIR
instead of this one (e.g. an older commit unpacked with `git archive`), so before and after
can be measured side by side in one session.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STYLES = ["GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"]
INPUTS = 10

# Runs the campaign once (in a child, against the tree given as argv[1]).
CAMPAIGN = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from specrunner.plan import build_plan
from specrunner.run import Runner
from specrunner.spec import load_spec
plan = build_plan(load_spec(Path(sys.argv[2])))
t0 = time.perf_counter()
result = Runner(plan, local=True, concurrency=256).run_sync()
assert result.status == "complete", (result.status, result.message)
print(f"{len(plan.tasks)} {time.perf_counter() - t0:.1f}")
"""

# What the record says (read API only): runs, requests logged, tasks done.
AUDIT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from specrunner.record import read_attempts, read_snapshot
snap = read_snapshot(Path(sys.argv[2]))
print(json.dumps({"runs": len(snap.runs), "requests": len(read_attempts(Path(sys.argv[2]))),
                  "tasks": len(snap.tasks),
                  "done": sum(t.state == "done" for t in snap.tasks),
                  "last_status": snap.runs[-1].status if snap.runs else None}))
"""


def write_spec(folder: Path, tasks: int) -> Path:
    """A spec of exactly `tasks` tasks (a multiple of 50) with 10 real local input pairs."""
    from PIL import Image, ImageDraw

    shops = tasks // (INPUTS * len(STYLES))
    assert shops * INPUTS * len(STYLES) == tasks, "sizes must be multiples of 50"
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = ["version: 1", f"name: resume-{tasks}", "model: ideogram:3@3",
             "defaults: {outputFormat: PNG}", "inputs:"]
    for i in range(INPUTS):
        seed = Image.new("RGB", (64, 48), (20 * i, 100, 200 - 10 * i))
        ImageDraw.Draw(seed).rectangle((8, 6, 56, 20), fill=(240, 240, 230))
        seed.save(images / f"shop{i}.png")
        mask = Image.new("L", (64, 48), 0)
        ImageDraw.Draw(mask).rectangle((8, 6, 56, 20), fill=255)
        mask.save(images / f"shop{i}-mask.png")
        lines.append(f"  in{i}: {{seed: images/shop{i}.png, mask: images/shop{i}-mask.png}}")
    lines += ["prompts:", "  sign: 'A shop sign reading \"{shop}\", crisp lettering'",
              "matrix:",
              "  input: [" + ", ".join(f"in{i}" for i in range(INPUTS)) + "]",
              "  styleType: [" + ", ".join(STYLES) + "]",
              "  shop: [" + ", ".join(f"SHOP {i}" for i in range(shops)) + "]",
              "output: {dir: run, name: '{input}/{styleType}/{shop}'}",
              f"budget: {{max_usd: 100000, max_tasks: {tasks}}}",
              "execution: {concurrency: 256}"]
    path = folder / "resume.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def child(src: Path, code: str, *args: object) -> str:
    proc = subprocess.run([sys.executable, "-c", code, str(src), *map(str, args)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return proc.stdout


# Times one command in a fresh wrapper process, whose only child it is: RUSAGE_CHILDREN is
# then that command's own peak RSS.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - t0
print(json.dumps({"s": seconds, "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                  / 1024, "code": proc.returncode, "out": proc.stdout + proc.stderr}))
"""


def timed(argv: list[str], src: Path, cwd: Path) -> dict:
    """`argv` run once in a fresh process: {"s", "rss_mb", "code", "out"}."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "PYTHONPATH": str(src)},
                          check=True)
    return json.loads(proc.stdout)


def resume(src: Path, spec: Path) -> dict:
    """One `run SPEC --local` in a fresh process."""
    return timed([sys.executable, "-m", "specrunner", "run", str(spec), "--local",
                  "--progress", "none"], src, spec.parent)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,50000")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--src", help="specrunner source tree to measure (default: this one)")
    ap.add_argument("--keep", help="build the campaigns here and keep them")
    args = ap.parse_args()
    src = Path(args.src).resolve() if args.src else ROOT
    print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs;"
          f" source {src}")
    print(f"command per resume: {sys.executable} -m specrunner run SPEC --local "
          "--progress none  (PYTHONPATH=source)")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        rows = []
        for n in [int(s) for s in args.sizes.split(",")]:
            folder = base / f"resume-{n}"
            folder.mkdir(parents=True, exist_ok=True)
            spec = write_spec(folder, n)
            _tasks, built = child(src, CAMPAIGN, spec).split()
            before = json.loads(child(src, AUDIT, folder / "run"))
            assert before["done"] == before["tasks"] == n, before
            times, rss = [], []
            for _ in range(args.rounds):
                r = resume(src, spec)
                assert r["code"] == 0, r["out"]
                times.append(r["s"])
                rss.append(r["rss_mb"])
            after = json.loads(child(src, AUDIT, folder / "run"))
            assert after["runs"] == before["runs"] + args.rounds, (before, after)
            assert after["requests"] == before["requests"], ("a resume sent requests",
                                                             before, after)
            assert after["done"] == n and after["last_status"] == "complete", after
            rows.append((n, float(built), min(times), statistics.median(times), max(rss)))
        print(f"\n{'tasks':>8} {'campaign s':>11} {'resume best s':>14} {'median s':>9} "
              f"{'max RSS MB':>11} {'us/task':>8}")
        for n, built, best, med, mb in rows:
            print(f"{n:>8} {built:>11.1f} {best:>14.3f} {med:>9.3f} {mb:>11.1f} "
                  f"{best / n * 1e6:>8.1f}")
        print("\nevery resume: exit 0, no request logged, every task still done")


if __name__ == "__main__":
    main()
