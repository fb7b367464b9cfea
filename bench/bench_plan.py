"""Benchmark: planning at 1k to 1M tasks, in-process and as `specrunner plan` end to end.

    python bench/bench_plan.py [--sizes 1000,10000,100000,500000,1000000] [--rounds 3]
                               [--src DIR] [--keep DIR] [--refusals-only]

Writes a spec with real small local images into a temp folder (10 inputs x P prompts x
5 styleTypes x 4 magicPrompt values x R repeats), then for each size:

- `plan table`: the command a user types, `python -m specrunner plan SPEC --format table`,
  in a fresh process from exec to exit (imports, spec load, plan, reproducibility notes,
  table, interpreter teardown), best of `--rounds`; its peak RSS (the child's ru_maxrss,
  measured by a wrapper process whose only child it is);
- in-process (sizes up to 100k): the wall time of `load_spec` + `build_plan` (best of 3,
  tracemalloc off) and, in a second fresh process, the tracemalloc peak; a third child
  records the plan into a new run record (`Record.begin_run` + `Record.plan`, what `run`
  does before its first request) and then again, as a resume does.

Prints a table; then how long a matrix over the task cap takes to be refused (10**6
combinations with 50 includes, 10**6 and 10**7 without). `--src DIR` measures the specrunner
source tree in DIR instead of this one (an older commit unpacked with `git archive`), so
before and after can be measured side by side in one session.
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
MAGIC = ["AUTO", "ON", "OFF", "AUTO"]  # 4 values; the duplicate is told apart by a variable
SHAPES = {1_000: (5, 1), 10_000: (50, 1), 100_000: (100, 5), 200_000: (200, 5),
          500_000: (500, 5), 1_000_000: (1000, 5)}  # tasks -> (prompts, repeat)
IN_PROCESS_MAX = 100_000  # tracemalloc and the record children above this take minutes

CHILD = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from specrunner.spec import load_spec
from specrunner.plan import build_plan
path, mode = sys.argv[2], sys.argv[3]
if mode == "time":
    best = None
    for _ in range(3):
        t0 = time.perf_counter(); spec = load_spec(path); t1 = time.perf_counter()
        plan = build_plan(spec); t2 = time.perf_counter()
        if best is None or t2 - t0 < best[0]:
            best = (t2 - t0, t1 - t0, t2 - t1)
        n = len(plan.tasks); del plan, spec
    out = {"tasks": n, "total_s": best[0], "load_s": best[1], "plan_s": best[2]}
elif mode == "record":
    # What `run` does next: the plan into a new run record, then again as a resume does.
    import tempfile
    from pathlib import Path
    from specrunner.record import RunMeta, open_record
    plan = build_plan(load_spec(path))
    meta = RunMeta(spec_path=path, spec_text="", spec_sha256="0" * 64, plan_json="[]",
                   max_usd=plan.spec.budget.max_usd)
    with tempfile.TemporaryDirectory() as tmp:
        record = open_record(Path(tmp))
        t0 = time.perf_counter(); record.plan(record.begin_run(meta), plan.tasks)
        t1 = time.perf_counter(); record.plan(record.begin_run(meta), plan.tasks)
        t2 = time.perf_counter(); record.close()
    out = {"tasks": len(plan.tasks), "record_s": t1 - t0, "rerecord_s": t2 - t1}
elif mode == "refuse":
    # A matrix over the task cap must be refused at once, whatever its includes.
    from specrunner.errors import PlanLimitError
    t0 = time.perf_counter()
    try:
        build_plan(load_spec(path))
        out = {"refused": False}
    except PlanLimitError as exc:
        out = {"refused": True, "message": str(exc)}
    out["refuse_s"] = time.perf_counter() - t0
else:
    tracemalloc.start()
    plan = build_plan(load_spec(path))
    out = {"tasks": len(plan.tasks), "peak_mb": tracemalloc.get_traced_memory()[1] / 2**20}
out["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def write_spec(folder: Path, tasks: int) -> Path:
    """A spec expanding to exactly `tasks` tasks, with 10 real local seed/mask pairs."""
    from PIL import Image, ImageDraw

    prompts, repeat = SHAPES[tasks]
    img_dir = folder / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = ["version: 1", f"name: bench-{tasks}", "defaults:", "  outputFormat: PNG",
             "inputs:"]
    for i in range(10):
        seed = Image.new("RGB", (64, 48), (20 * i, 100, 200 - 10 * i))
        ImageDraw.Draw(seed).rectangle((8, 6, 56, 20), fill=(240, 240, 230))
        seed.save(img_dir / f"shop{i}.jpg")
        mask = Image.new("L", (64, 48), 0)
        ImageDraw.Draw(mask).rectangle((8, 6, 56, 20), fill=255)
        mask.save(img_dir / f"shop{i}-mask.png")
        lines += [f"  shop{i}:", f"    seed: images/shop{i}.jpg",
                  f"    mask: images/shop{i}-mask.png", f"    vars: {{shop_name: SHOP {i}}}"]
    lines.append("prompts:")
    for p in range(prompts):
        lines.append(f"  p{p}: 'Replace the masked sign with design {p} reading \"{{shop_name}}\","
                     f" {{tone}} tone, crisp legible lettering'")
    lines += ["matrix:", "  input: [" + ", ".join(f"shop{i}" for i in range(10)) + "]",
              "  prompt: [" + ", ".join(f"p{p}" for p in range(prompts)) + "]",
              "  styleType: [" + ", ".join(STYLES) + "]",
              "  tone: [warm, cool, bright, muted]",
              "  include:",
              "    - {tone: warm, magicPrompt: AUTO}", "    - {tone: cool, magicPrompt: \"ON\"}",
              "    - {tone: bright, magicPrompt: \"OFF\"}",
              f"repeat: {repeat}", "budget:", "  max_usd: 1000000",
              f"  max_tasks: {max(tasks, 100_000)}"]
    path = folder / f"bench-{tasks}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_refusal_spec(folder: Path, digits: int, includes: int) -> Path:
    """A spec whose matrix product is 10**digits (one axis per digit, 10 values each) with
    `includes` include entries: far over the default task cap of 10,000."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48), (200, 120, 40)).save(folder / "seed.png")
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (8, 6, 56, 20))
    mask.save(folder / "mask.png")
    names = [f"v{i}" for i in range(digits)]
    lines = ["version: 1", f"name: refuse-{digits}-{includes}",
             "inputs:", "  shop: {seed: seed.png, mask: mask.png}",
             "prompts:", "  sign: 'A sign reading " + " ".join(f"{{{n}}}" for n in names) + "'",
             "matrix:"]
    lines += [f"  {n}: [" + ", ".join(f"{n}x{k}" for k in range(10)) + "]" for n in names]
    if includes:
        lines.append("  include:")
        lines += [f"    - {{{names[j % digits]}: {names[j % digits]}x{j % 10}, "
                  f"magicPrompt: \"{('ON', 'OFF')[j % 2]}\"}}" for j in range(includes)]
    lines += ["budget:", "  max_usd: 1000000"]
    path = folder / f"refuse-{digits}-{includes}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def refusals(folder: Path, src: Path) -> None:
    """How fast a matrix over the task cap is refused (issue 16: 10**6 x 50 includes took
    28 s and 300 MB)."""
    print(f"\n{'matrix':>24} {'refused':>8} {'seconds':>8} {'maxrss MB':>10}")
    for digits, includes in ((6, 50), (6, 0), (7, 0)):
        r = measure(write_refusal_spec(folder / "refuse", digits, includes), "refuse", src)
        label = f"10^{digits} x {includes} includes"
        print(f"{label:>24} {r['refused']!s:>8} {r['refuse_s']:>8.2f} {r['maxrss_mb']:>10.1f}")


def measure(path: Path, mode: str, src: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(src), str(path), mode],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


# Times one command in a fresh wrapper process whose only child it is: RUSAGE_CHILDREN is
# then that command's own peak RSS.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
seconds = time.perf_counter() - t0
print(json.dumps({"s": seconds, "code": proc.returncode, "err": proc.stderr.decode()[-2000:],
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def plan_cli(path: Path, src: Path, rounds: int) -> tuple[float, float]:
    """(best seconds, peak RSS MB) of `python -m specrunner plan SPEC --format table`."""
    best, rss = float("inf"), 0.0
    for _ in range(rounds):
        proc = subprocess.run(
            [sys.executable, "-c", WRAPPER, sys.executable, "-m", "specrunner", "plan",
             str(path), "--format", "table"], capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONPATH": str(src)}, cwd=path.parent)
        r = json.loads(proc.stdout)
        assert r["code"] == 0, r["err"]
        best, rss = min(best, r["s"]), max(rss, r["rss_mb"])
    return best, rss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000,500000,1000000")
    ap.add_argument("--rounds", type=int, default=3, help="runs of `plan` per size (best)")
    ap.add_argument("--src", help="specrunner source tree to measure (default: this one)")
    ap.add_argument("--keep", help="write the specs here instead of a temp folder")
    ap.add_argument("--refusals-only", action="store_true",
                    help="only time the refusal of matrices over the task cap")
    args = ap.parse_args()
    src = Path(args.src).resolve() if args.src else ROOT
    sizes = [] if args.refusals_only else [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        print(f"python {platform.python_version()} on {platform.machine()}, "
              f"{os.cpu_count()} CPUs; source {src}")
        if sizes:
            print(f"plan table = {sys.executable} -m specrunner plan SPEC --format table "
                  f"(fresh process, best of {args.rounds}; PYTHONPATH=source)\n")
            print(f"{'tasks':>9} {'plan table s':>13} {'us/task':>8} {'max RSS MB':>11} "
                  f"{'load s':>7} {'build s':>8} {'tracemalloc MB':>15} {'record s':>9} "
                  f"{'again s':>8}")
        for n in sizes:
            path = write_spec(folder, n)
            cli_s, cli_mb = plan_cli(path, src, args.rounds)
            line = f"{n:>9} {cli_s:>13.2f} {cli_s / n * 1e6:>8.1f} {cli_mb:>11.1f}"
            if n <= IN_PROCESS_MAX:
                t = measure(path, "time", src)
                m = measure(path, "memory", src)
                r = measure(path, "record", src)
                assert t["tasks"] == m["tasks"] == r["tasks"] == n, (t, m, r)
                line += (f" {t['load_s']:>7.3f} {t['plan_s']:>8.3f} {m['peak_mb']:>15.1f} "
                         f"{r['record_s']:>9.2f} {r['rerecord_s']:>8.2f}")
            print(line, flush=True)
        refusals(folder, src)


if __name__ == "__main__":
    main()
