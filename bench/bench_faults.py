"""10,000 tasks with ~20% injected faults of every kind, resumed until complete (in-process).

    python bench/bench_faults.py [--tasks 10000] [--concurrency 32]

Prints: runs needed, lost results, tasks billed twice, unknown charges, retries vs the bound.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from specrunner.client import set_testing  # noqa: E402
from specrunner.local import FaultConfig, LocalConfig, create_app  # noqa: E402
from test_run_local import EVERY_FAULT, run_local  # noqa: E402
from test_run_support import audit, make_tasks  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    set_testing(True)
    app = create_app(LocalConfig(render=False, faults=FaultConfig(
        seed=1, rates=EVERY_FAULT, hang_s=2.0, oversize_bytes=300_000)))
    out = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    tasks = make_tasks(args.tasks, numbers=1)
    t0 = time.perf_counter()
    runs = []
    for _ in range(5):
        runs.append(run_local(app, out, tasks, concurrency=args.concurrency, max_attempts=3,
                              request_timeout_s=0.5, max_download_bytes=200_000))
        if runs[-1].status == "complete":
            break
    dt = time.perf_counter() - t0
    s = app.stats()
    a = audit(dict(app.ledger.images), out)
    sends = s.requests_by_type.get("imageInference", 0)
    print(f"{args.tasks} tasks, concurrency {args.concurrency}, {dt:.1f} s, "
          f"runs until complete: {len(runs)} (last: {runs[-1].status})")
    print(f"faults injected: {dict(sorted(s.faults_injected.items()))}")
    print(f"lost={a.lost} billed_twice={a.billed_twice} unknown_charges={a.unknown_charges} "
          f"done={a.done}/{args.tasks} charged_tasks={a.charged_tasks}")
    print(f"imageInference sends={sends} (bound 3 x generations x runs = "
          f"{3 * (args.tasks + s.faults_injected.get('provider_timeout', 0)) * len(runs)}), "
          f"retries per run={[r.counters.retries for r in runs]}, "
          f"duplicate UUIDs refused by the server={s.duplicate_attempts_total}")
    if a.clean:
        shutil.rmtree(out)
    else:
        print(f"run record and outputs kept for inspection in {out}")


if __name__ == "__main__":
    main()
