"""SIGKILL `specrunner run` at N random moments against `specrunner serve`, then resume.

    python bench/bench_kill.py [--kills 40] [--repeat 100]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_run_kill import kill_and_resume  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=100, help="tasks = 2 x repeat")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    # `specrunner serve` accepts any key; the runner refuses to start without one (the test
    # suite's conftest sets a canary key, a bench run must set its own).
    os.environ.setdefault("RUNWARE_API_KEY", "bench-kill-local-key")
    out = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    fig = kill_and_resume(out, args.kills, args.repeat, args.seed)
    if fig["exit"] != 0:
        print(f"final run failed (exit {fig['exit']}): {fig['stderr']}; kept in {out}")
        raise SystemExit(1)
    a = fig["audit"]
    print(f"tasks={fig['tasks']} killed={fig['killed']} (mid-run {fig['killed_mid_run']}) "
          f"final exit={fig['exit']} after {fig['resumes']} resume(s) done={a.done} lost={a.lost} billed_twice={a.billed_twice} "
          f"unknown_charges={a.unknown_charges} duplicate UUIDs refused="
          f"{fig['duplicates_refused']}")
    if a.clean:
        shutil.rmtree(out)
    else:
        print(f"run record and outputs kept for inspection in {out}")


if __name__ == "__main__":
    main()
