"""Instructions per task (callgrind) of bench_run.py's zero-latency measurements.

    python bench/bench_instructions.py      # needs valgrind (apt-get install valgrind); ~5 min

Wall-clock ratios on a shared 2-vCPU VM move by +-10% between runs of the same code
(bench/README.md ## run); instruction counts do not. Each measurement of bench_run.py
(`--one NAME`: 3,000-task-shaped zero-latency sync runs, here with 500 and with 1,500 tasks)
runs under `valgrind --tool=callgrind`; the difference of the two counts / 1,000 is the
instructions per task, with interpreter start-up and imports cancelled out. Building the
tasks ("tasks") and, for specrunner, creating the record with the plan in it
("record-setup"), which bench_run.py does not time, are measured the same way and
subtracted. Counted: every thread of the process (SQLite's commits included). Not counted:
child processes (the output-file helper) and time spent waiting.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH_RUN = str(Path(__file__).resolve().parent / "bench_run.py")
NAMES = ["tasks", "record-setup", "plain", "plain+gc", "specrunner"]


def instructions(name: str, n: int, scratch: str) -> int:
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                          sys.executable, BENCH_RUN, "--one", name, "--throughput-tasks",
                          str(n), "--tag", f"{name}{n}", "--scratch", scratch],
                         capture_output=True, text=True, check=True)
    found = re.search(r"Collected\s*:\s*([\d,]+)", out.stderr)
    assert found, out.stderr[-2000:]
    return int(found.group(1).replace(",", ""))


def main() -> None:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    scratch = tempfile.mkdtemp(prefix="bench-instructions-")
    try:
        jobs = [(name, n) for name in NAMES for n in (500, 1500)]
        with ThreadPoolExecutor(2) as pool:  # one per core; counts do not depend on timing
            counts = dict(zip(jobs, pool.map(lambda j: instructions(*j, scratch), jobs)))
    finally:
        shutil.rmtree(scratch)
    per = {name: (counts[name, 1500] - counts[name, 500]) / 1000 for name in NAMES}
    run = {"plain": per["plain"] - per["tasks"], "plain+gc": per["plain+gc"] - per["tasks"],
           "specrunner": per["specrunner"] - per["record-setup"]}
    print("instructions per task (callgrind, 1,500 - 500 tasks), setup subtracted:")
    for name in ("plain", "plain+gc", "specrunner"):
        print(f"  {name:12} {run[name] / 1000:8.0f}k")
    print(f"  (building the tasks {per['tasks'] / 1000:.0f}k; specrunner's record and plan "
          f"setup {(per['record-setup'] - per['tasks']) / 1000:.0f}k more)")
    print(f"  ratio plain/specrunner {run['plain'] / run['specrunner']:.3f}, plain+gc/specrunner "
          f"{run['plain+gc'] / run['specrunner']:.3f}")


if __name__ == "__main__":
    main()
