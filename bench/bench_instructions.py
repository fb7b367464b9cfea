"""Instructions per task (callgrind) of bench_run.py's zero-latency measurements.

    python bench/bench_instructions.py      # needs valgrind (apt-get install valgrind); ~5 min

Wall-clock ratios on a shared 2-vCPU VM move by +-10% between runs of the same code
(bench/README.md ## run); instruction counts do not. Each measurement of bench_run.py
(`--one NAME`: 3,000-task-shaped zero-latency sync runs, here with 500 and with 1,500 tasks)
runs under `valgrind --tool=callgrind`; the difference of the two counts / 1,000 is the
instructions per task, with interpreter start-up and imports cancelled out. Building the
tasks ("tasks") and, for specrunner, creating the record with the plan in it
("record-setup"), which bench_run.py does not time, are measured the same way and
subtracted. Counted: every thread of the measured process; its child processes (specrunner's
record and file helpers, which run beside the event loop) are counted and shown apart. Not
counted: time spent waiting.
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


def instructions(name: str, n: int, scratch: str) -> tuple[int, int]:
    """(instructions of the measured process, of its child processes: the helpers)."""
    logs = Path(tempfile.mkdtemp(prefix=f"vg-{name}-{n}-", dir=scratch))
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                             "--trace-children=yes", f"--log-file={logs}/%p",  # helpers' stderr
                             sys.executable, BENCH_RUN, "--one", name, "--throughput-tasks",
                             str(n), "--tag", f"{name}{n}", "--scratch", scratch],
                            stdout=subprocess.DEVNULL)
    proc.wait()
    counts = {}
    for log in logs.iterdir():
        found = re.search(r"Collected\s*:\s*([\d,]+)", log.read_text())
        assert found, log.read_text()[-2000:]
        counts[int(log.name)] = int(found.group(1).replace(",", ""))
    assert proc.returncode == 0 and proc.pid in counts, (proc.returncode, counts)
    return counts[proc.pid], sum(c for pid, c in counts.items() if pid != proc.pid)


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
    per = {name: (counts[name, 1500][0] - counts[name, 500][0]) / 1000 for name in NAMES}
    helpers = (counts["specrunner", 1500][1] - counts["specrunner", 500][1]) / 1000
    run = {"plain": per["plain"] - per["tasks"], "plain+gc": per["plain+gc"] - per["tasks"],
           "specrunner": per["specrunner"] - per["record-setup"]}
    print("instructions per task (callgrind, 1,500 - 500 tasks), setup subtracted:")
    for name in ("plain", "plain+gc", "specrunner"):
        print(f"  {name:12} {run[name] / 1000:8.0f}k")
    print(f"  (specrunner's helper processes, the record's commits and the output files, "
          f"{helpers / 1000:.0f}k more, beside the event loop)")
    print(f"  (building the tasks {per['tasks'] / 1000:.0f}k; specrunner's record and plan "
          f"setup {(per['record-setup'] - per['tasks']) / 1000:.0f}k more)")
    print(f"  ratio plain/specrunner {run['plain'] / run['specrunner']:.3f}, plain+gc/specrunner "
          f"{run['plain+gc'] / run['specrunner']:.3f}")


if __name__ == "__main__":
    main()
