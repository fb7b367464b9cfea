"""Benchmark: `specrunner report` on a 10,000-task run record, every format (issue 5).

    python bench/bench_report.py [--tasks 10000] [--keep DIR]

Writes a spec (2 URL inputs x 5 styleTypes x N/10 shop names), plans it, and records a
finished-looking run through store.py's own API (open_store, begin_run, plan_tasks and the
op_* builders the executor uses): 90% done with a 64x48 PNG written per result, 5% failed
(content policy / provider timeouts), 3% never sent, 2% in doubt; one send attempt per task
plus a retry on every 20th. Then times the whole CLI in-process (`cli.run(["report", SPEC,
"--format", F])`: spec load, plan, record read, render), best of 3, for table, markdown,
json and csv, and html twice (cold: thumbnails made; warm: all cached). Prints a table.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from specrunner import cli  # noqa: E402
from specrunner.plan import build_plan  # noqa: E402
from specrunner.spec import load_spec  # noqa: E402
from specrunner.store import (op_attempt, op_output, op_result, op_state,  # noqa: E402
                              open_store)

STYLES = ["GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"]


def write_spec(folder: Path, tasks: int) -> Path:
    names = tasks // (2 * len(STYLES))
    spec = folder / "bench.yaml"
    spec.write_text(f"""version: 1
name: report-bench
model: ideogram:3@3
defaults: {{outputFormat: PNG}}
inputs:
  a: {{seed: "https://example.com/a.jpg", mask: "https://example.com/a.png"}}
  b: {{seed: "https://example.com/b.jpg", mask: "https://example.com/b.png"}}
prompts:
  sign: 'A sign reading "{{shop}}"'
matrix:
  input: [a, b]
  styleType: [{", ".join(STYLES)}]
  shop: [{", ".join(f"SHOP {i}" for i in range(names))}]
output: {{dir: run, name: "{{input}}/{{styleType}}/{{shop}}"}}
budget: {{max_usd: 100000, max_tasks: {max(tasks, 10)}}}
""", encoding="utf-8")
    return spec


def record(spec_path: Path) -> tuple[int, float]:
    t0 = time.perf_counter()
    plan = build_plan(load_spec(spec_path))
    out = plan.spec.output.dir
    store = open_store(out)
    try:
        run_id = store.begin_run({"spec_path": str(spec_path), "status": "complete",
                                  "max_usd": "100000"})
        store.plan_tasks(run_id, plan.tasks)
        ops = []
        now = 1_767_225_600.0
        for i, t in enumerate(plan.tasks):
            now += 0.01
            k, u = t.task_key, t.task_uuid
            if i % 100 < 3:
                continue  # never sent
            ops += op_state(k, run_id, "planned", "sending", now=now, attempts=1)
            ops.append(op_attempt(k, run_id, u, "send", now, now + 0.4, 200, "accepted"))
            if i % 20 == 7:
                ops.append(op_attempt(k, run_id, u, "send", now + 1, now + 1.3, 200, "accepted"))
            if i % 100 < 5:
                ops += op_state(k, run_id, "sending", "in_doubt", now=now + 2)
            elif i % 100 < 10:
                code = "contentPolicyViolation" if i % 2 else "timeoutProvider"
                ops += op_state(k, run_id, "sending", "failed", now=now + 2, error_code=code,
                                error_message="injected")
            else:
                path = t.output_paths()[0]
                target = out / path
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (64, 48), (i % 256, (i // 256) % 256, 90)).save(target, "PNG")
                data = target.read_bytes()
                import hashlib

                ops.append(op_result(k, 0, {"taskUUID": u, "imageUUID": u, "seed": i,
                                            "cost": 0.08}, now + 3))
                ops.append(op_output(k, 0, path, hashlib.sha256(data).hexdigest(), len(data)))
                ops += op_state(k, run_id, "sending", "done", now=now + 3, cost="0.08")
        store.apply(ops)
        store.end_run(run_id, "failed", 1, Decimal("720"))
    finally:
        store.close()
    return len(plan.tasks), time.perf_counter() - t0


def timed(argv: list[str], repeat: int) -> tuple[float, int]:
    best, size = float("inf"), 0
    for _ in range(repeat):
        out, err = io.StringIO(), io.StringIO()
        t0 = time.perf_counter()
        code = cli.run(argv, out, err)
        best = min(best, time.perf_counter() - t0)
        assert code == 0, err.getvalue()
        size = len(out.getvalue())
    return best, size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--keep", help="build the record in DIR and keep it")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        spec = write_spec(folder, args.tasks)
        n, build_s = record(spec)
        print(f"record: {n:,} tasks built in {build_s:.1f} s ({spec.parent / 'run'})")
        rows = []
        for fmt in ("table", "markdown", "json", "csv"):
            s, size = timed(["report", str(spec), "--format", fmt], 3)
            rows.append((fmt, "best of 3", s, size))
        for label in ("html (cold thumbnails)", "html (warm, cached)"):
            s, size = timed(["report", str(spec), "--format", "html"], 1)
            rows.append((label, "1 run", s, size))
        print("\n| format | runs | seconds | output chars |\n| --- | --- | ---: | ---: |")
        for fmt, runs, s, size in rows:
            print(f"| {fmt} | {runs} | {s:.3f} | {size:,} |")
        worst = max(s for fmt, _, s, _ in rows if not fmt.startswith("html (cold"))
        print(f"\nslowest (excluding the cold contact sheet): {worst:.3f} s "
              f"({'met' if worst < 2 else 'NOT met'}: target < 2 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
