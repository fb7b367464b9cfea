"""Benchmark: load_spec + build_plan for 1k, 10k and 100k tasks (issue 2's "Must show").

    python bench/bench_plan.py [--sizes 1000,10000,100000] [--keep DIR] [--refusals-only]

Writes a spec with real small local images into a temp folder (10 inputs x P prompts x
5 styleTypes x 4 magicPrompt values x R repeats), then for each size runs a fresh
subprocess that measures the wall time of `load_spec` + `build_plan` (best of 3 runs with
tracemalloc off), and a second fresh subprocess for the tracemalloc peak, and reports each
child's ru_maxrss (whole process: interpreter, imports and the plan). A third child records
the plan into a new run record (`Store.plan_tasks`, what `run` does before its first
request) and then again, as a resume does. Prints a table; then how long a matrix over the
task cap takes to be refused (10**6 combinations with 50 includes, 10**6 and 10**7 without).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STYLES = ["GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"]
MAGIC = ["AUTO", "ON", "OFF", "AUTO"]  # 4 values; the duplicate is told apart by a variable
SHAPES = {1_000: (5, 1), 10_000: (50, 1), 100_000: (100, 5)}  # tasks -> (prompts, repeat)

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
    from specrunner.store import open_store
    plan = build_plan(load_spec(path))
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(Path(tmp))
        t0 = time.perf_counter(); store.plan_tasks(store.begin_run({}), plan.tasks)
        t1 = time.perf_counter(); store.plan_tasks(store.begin_run({}), plan.tasks)
        t2 = time.perf_counter(); store.close()
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
              f"repeat: {repeat}", "budget:", "  max_usd: 100000", "  max_tasks: 100000"]
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


def refusals(folder: Path) -> None:
    """How fast a matrix over the task cap is refused (issue 16: 10**6 x 50 includes took
    28 s and 300 MB)."""
    print(f"\n{'matrix':>24} {'refused':>8} {'seconds':>8} {'maxrss MB':>10}")
    for digits, includes in ((6, 50), (6, 0), (7, 0)):
        r = measure(write_refusal_spec(folder / "refuse", digits, includes), "refuse")
        label = f"10^{digits} x {includes} includes"
        print(f"{label:>24} {str(r['refused']):>8} {r['refuse_s']:>8.2f} {r['maxrss_mb']:>10.1f}")


def measure(path: Path, mode: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(path), mode],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--keep", help="write the specs here instead of a temp folder")
    ap.add_argument("--refusals-only", action="store_true",
                    help="only time the refusal of matrices over the task cap")
    args = ap.parse_args()
    sizes = [] if args.refusals_only else [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        print(f"python {platform.python_version()} on {platform.machine()}, "
              f"{__import__('os').cpu_count()} CPUs")
        if sizes:
            print(f"{'tasks':>8} {'load s':>8} {'plan s':>8} {'total s':>8} {'us/task':>8} "
                  f"{'tracemalloc MB':>15} {'maxrss MB':>10} {'record s':>9} {'again s':>8}")
        for n in sizes:
            path = write_spec(folder, n)
            t = measure(path, "time")
            m = measure(path, "memory")
            r = measure(path, "record")
            assert t["tasks"] == m["tasks"] == r["tasks"] == n, (t, m, r)
            print(f"{n:>8} {t['load_s']:>8.3f} {t['plan_s']:>8.3f} {t['total_s']:>8.3f} "
                  f"{t['total_s'] / n * 1e6:>8.1f} {m['peak_mb']:>15.1f} {t['maxrss_mb']:>10.1f} "
                  f"{r['record_s']:>9.2f} {r['rerecord_s']:>8.2f}")
        refusals(folder)


if __name__ == "__main__":
    main()
