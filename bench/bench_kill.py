"""SIGKILL `specrunner run` at N random moments against `specrunner serve`, then resume.

    python bench/bench_kill.py [--kills 40] [--interrupts 10] [--repeat 150] [--seed 5]

`specrunner serve` (processing 0.1-0.4 s, 5% dropped connections after billing, 5% 503s)
runs in its own process, so its ledger outlives every killed client. The campaign is
2 x repeat tasks at concurrency 4, with a budget of exactly its cost: no room to pay twice.
Each kill lands at one of these moments, in turn:

- start-up: a random 0-0.7 s after the process is started (interpreter start, imports,
  planning, record creation, or already the first requests);
- mid-run: a random 0-0.6 s after the process took the folder's lock;
- a crash point: the process SIGKILLs itself at the N-th occurrence of an event (N random
  within the next few tasks' worth): `send` (an imageInference answer has arrived, the
  server has billed, the runner has not read it), `sql` (before a write statement or COMMIT
  of the record: a transaction half done), `write` (half of an output file written to its
  temporary name), `rename` (the temporary file complete, not renamed), `dirsync` (before a
  folder's fsync: after a rename, the task not yet "done" in the record, or after a folder
  was made). The hooks wrap httpx's transport, sqlite3's connections and os.write/replace/
  fsync in the child process only (Linux: a temporary file is told by /proc/self/fd).

What a kill interrupted is read from evidence, not intent: the server's request counters
before and after the process (did it send tasks, or only poll and reconcile), the record
(had the run begun), and temporary files left behind. Then `specrunner run` again until it
exits 0 (at most 4 times; exit 1 or 4 means the injected faults left a task failed or in
doubt, which the next run retries or reconciles) and
the server's ledger is compared with the record and the files on disk (audit()).
Between the kills, Ctrl-C rounds (SIGINT once, or twice 0.05-0.3 s apart, a random 0-0.6 s
after the lock) against the same campaign: how each process exited, how long after the last
press, and the status its run recorded.
Exit 1, keeping the folder, if anything is lost, paid twice, the campaign does not complete,
fewer kills land than asked, or a Ctrl-C round hangs or does not stop the run (exit 0).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CRASH_POINTS = ("send", "sql", "write", "rename", "dirsync")
MODES = ("start-up", "mid-run", *CRASH_POINTS)
INTERRUPTS = ("ctrl-c", "ctrl-c x2")
WRITE_SQL = ("INSERT", "UPDATE", "DELETE", "REPLACE", "COMMIT")


# -- the child: `specrunner run` with crash points ------------------------------------------
def arm(point: str | None, n: int, counts_file: str | None) -> None:
    """Count every crash-point event of this process; SIGKILL it at the n-th `point`.
    With `counts_file`, write the counts there at a normal exit (the calibration run)."""
    counts: Counter[str] = Counter()

    def tick(event: str) -> bool:
        counts[event] += 1
        return event == point and counts[event] == n

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if counts_file:
        atexit.register(lambda: Path(counts_file).write_text(json.dumps(counts)))

    import httpx

    real_send = httpx.AsyncHTTPTransport.handle_async_request

    async def handle(self: httpx.AsyncHTTPTransport, request: httpx.Request) -> httpx.Response:
        response = await real_send(self, request)
        if b'"imageInference"' in request.content and tick("send"):
            die()  # the server answered (and billed); the runner never reads it
        return response

    httpx.AsyncHTTPTransport.handle_async_request = handle  # type: ignore[method-assign]

    real_connect = sqlite3.connect

    def trace(statement: str) -> None:
        if statement.lstrip().upper().startswith(WRITE_SQL) and tick("sql"):
            die()  # before this statement runs: the transaction is half done

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(trace)
        return conn

    sqlite3.connect = connect  # type: ignore[assignment]

    real_write, real_replace, real_fsync = os.write, os.replace, os.fsync

    def temporary(fd: int) -> bool:
        try:
            return os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp")
        except OSError:
            return False

    def write(fd: int, data: Any) -> int:
        if temporary(fd) and tick("write"):
            real_write(fd, bytes(data)[: max(1, len(data) // 2)])
            die()
        return real_write(fd, data)

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if str(src).endswith(".tmp") and tick("rename"):
            die()
        real_replace(src, dst, *args, **kwargs)

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode) and tick("dirsync"):
            die()
        real_fsync(fd)

    os.write, os.replace, os.fsync = write, replace, fsync  # type: ignore[assignment]


def child(argv: list[str]) -> int:
    """`bench_kill.py --child POINT N COUNTS -- specrunner-args...` (POINT/COUNTS may be -)."""
    point, n, counts, sep, *args = argv
    assert sep == "--", argv
    arm(None if point == "-" else point, int(n), None if counts == "-" else counts)
    from specrunner.cli import main as specrunner_main

    sys.argv = ["specrunner", *args]
    return specrunner_main()


# -- the parent -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Kill:
    """One SIGKILL that landed, and what the evidence says it interrupted."""

    mode: str
    sent_tasks: bool  # the server received imageInference from this process
    reached_server: bool  # any task request (polls, reconciliation, uploads included)
    run_begun: bool  # the record holds a run this process began
    temporary_files: int  # temporary output files this process left behind


@dataclass(frozen=True)
class Interrupt:
    """One Ctrl-C round (SIGINT once or twice) and how the process ended."""

    presses: int
    exit: int | None  # None: still running 60 s after the last press (a hang)
    seconds: float  # from the last press to the exit
    status: str  # the status the run it began recorded ("no run recorded": none begun)
    sent_tasks: bool
    after_lock: float  # seconds from the lock taken to the first press
    log: Path  # what the process printed


@dataclass
class Figures:
    kills: list[Kill] = field(default_factory=list)
    interrupts: list[Interrupt] = field(default_factory=list)
    not_landed: Counter[str] = field(default_factory=Counter)  # ended before its signal
    resumes: int = 0
    exit: int | None = None
    stderr: str = ""
    duplicates_refused: int = 0  # re-sends of an accepted UUID the server refused
    billed: Decimal = Decimal(0)


def schedule(kills: int, interrupts: int) -> list[str]:
    """The moments, in order: of the kills a quarter start-up, a quarter mid-run, half crash
    points in turn; Ctrl-C once and twice, alternately, spread evenly between them."""
    modes = [CRASH_POINTS[i // 2 % len(CRASH_POINTS)] if i % 2
             else ("start-up", "mid-run")[i // 2 % 2] for i in range(kills)]
    for j in range(interrupts):
        modes.insert((j + 1) * len(modes) // (interrupts + 1), INTERRUPTS[j % 2])
    return modes


def temporary_files(out: Path) -> set[Path]:
    return set(out.rglob(".*.tmp")) if out.exists() else set()


def runs_of(out: Path) -> int:
    from specrunner.errors import RecordError
    from specrunner.record import read_snapshot, record_path

    if not record_path(out).is_file():
        return 0
    try:
        return len(read_snapshot(out).runs)
    except RecordError:
        return 0  # half created: not a run yet


def task_requests(s: dict[str, Any]) -> tuple[int, int]:
    """(imageInference tasks, every task) the server has received."""
    by = s["requestsByType"]
    return by.get("imageInference", 0), sum(v for k, v in by.items() if k != "imageDownload")


def calibrate(spec_dir: Path, repeat: int) -> dict[str, float]:
    """Crash-point events per task: one uninterrupted run of a small campaign, against a
    server of its own (its charges stay out of the measured ledger)."""
    from test_run_cli import write_spec
    from test_run_kill import run_cmd, start_server

    spec_dir.mkdir()
    spec = write_spec(spec_dir, repeat=repeat)
    server, url = start_server("--processing", "uniform:0.1,0.4")
    counts = spec_dir / "counts.json"
    try:
        cmd = [sys.executable, __file__, "--child", "-", "0", str(counts), "--",
               *run_cmd(spec, spec_dir / "o", url, "100")[3:]]
        subprocess.run(cmd, check=True, timeout=300, stdout=subprocess.DEVNULL,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        server.terminate()
        server.wait(timeout=10)
    seen = json.loads(counts.read_text())
    return {p: seen.get(p, 0) / (2 * repeat) for p in CRASH_POINTS}


def status_of_new_run(out: Path, runs_before: int) -> str:
    """The status recorded by the run after the first `runs_before` (the one a process just
    began), or why there is none."""
    from specrunner.record import read_snapshot

    if runs_of(out) <= runs_before:
        return "no run recorded"
    return str(read_snapshot(out).runs[runs_before].status)


def kill_and_resume(tmp: Path, kills: int, interrupts: int, repeat: int, seed: int,
                    progress: Callable[[str], None] = lambda s: None) -> tuple[Figures, Any]:
    """The kills and interrupts, the resumes, and the audit (None if the campaign did not
    complete)."""
    from test_run_cli import write_spec
    from test_run_kill import _wait_for_record, run_cmd, start_server, stats
    from test_run_support import audit

    from specrunner.record import read_snapshot

    rng = random.Random(seed)
    per_task = calibrate(tmp / "calibration", 10)
    progress(f"crash-point events per task (calibration): {per_task}")
    spec = write_spec(tmp, repeat=repeat)
    tasks = 2 * repeat
    out = tmp / "o"
    server, url = start_server("--processing", "uniform:0.1,0.4", "--fault", "drop=0.05",
                               "--fault", "http_503=0.05", "--seed", str(seed))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    max_usd = str(Decimal("0.08") * tasks)  # exactly the campaign: no room to pay twice
    lock = out / ".specrunner" / "lock"
    todo = schedule(kills, interrupts)
    window = max(1, tasks // len(todo))  # a crash point lands within this many tasks
    fig = Figures()
    logs = tmp / "logs"  # each process's output, by attempt and mode
    logs.mkdir()
    try:
        for n in range(3 * len(todo)):  # bounded: a run may end before its signal lands
            if not todo:
                break
            mode = todo[0]
            before_sent, before_any = task_requests(stats(url))
            runs_before, tmp_before = runs_of(out), temporary_files(out)
            cmd = run_cmd(spec, out, url, max_usd)
            if mode in CRASH_POINTS:
                # Within the work this run has left: a task in doubt is reconciled (no new
                # imageInference) but still has its files to write.
                states = [t.state for t in read_snapshot(out).tasks] if runs_before else []
                left = len(states) - states.count("done") if states else tasks
                if mode == "send" and states:
                    left = states.count("planned") + states.count("failed")
                at = rng.randint(1, max(1, math.ceil(per_task[mode] * min(left, window))))
                cmd = [sys.executable, __file__, "--child", mode, str(at), "-", "--",
                       *cmd[3:]]
            log = logs / f"{n:03d}-{mode.replace(' ', '')}.txt"
            with log.open("w") as err:
                proc = subprocess.Popen(cmd, env=env, stdout=err, stderr=err)
            delay = 0.0
            if mode == "start-up":
                time.sleep(rng.uniform(0.0, 0.7))
            elif mode != "start-up" and mode not in CRASH_POINTS:
                # Timed from the lock, so a slow start on a loaded machine still reaches work.
                _wait_for_record(proc, lock, timeout=60)
                delay = rng.uniform(0.0, 0.6)
                time.sleep(delay)
            if mode in INTERRUPTS:
                pressed = 0
                for press in range(1 + (mode == "ctrl-c x2")):
                    if press:
                        time.sleep(rng.uniform(0.05, 0.3))
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGINT)
                        pressed, last = pressed + 1, time.monotonic()
                try:
                    code: int | None = proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    code = None
                    proc.kill()
                    proc.wait()
                if pressed < 1 + (mode == "ctrl-c x2"):
                    fig.not_landed[mode] += 1
                    continue
                fig.interrupts.append(Interrupt(
                    pressed, code, time.monotonic() - last, status_of_new_run(out, runs_before),
                    task_requests(stats(url))[0] > before_sent, delay, log))
                todo.pop(0)
                continue
            if mode in ("start-up", "mid-run") and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            if proc.wait(timeout=120) != -signal.SIGKILL:
                fig.not_landed[mode] += 1
                continue
            after_sent, after_any = task_requests(stats(url))
            fig.kills.append(Kill(mode, after_sent > before_sent, after_any > before_any,
                                  runs_of(out) > runs_before,
                                  len(temporary_files(out) - tmp_before)))
            todo.pop(0)
        progress(f"{len(fig.kills)} kills and {len(fig.interrupts)} interrupts landed; "
                 "resuming")
        # Resume until complete: with 5% drops and 5% 503s injected, a resume may end with a
        # task failed after its attempts (exit 1: the next run retries it) or in doubt (exit
        # 4, incomplete: the next run asks the server about it before anything else).
        while True:
            fig.resumes += 1
            final = subprocess.run(run_cmd(spec, out, url, max_usd), env=env,
                                   capture_output=True, text=True, timeout=300)
            if final.returncode not in (1, 4) or fig.resumes == 4:
                break
        fig.exit, fig.stderr = final.returncode, final.stderr
        s = stats(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    fig.duplicates_refused = s["duplicateAttemptsTotal"]
    fig.billed = Decimal(str(s["totalBilledUSD"])).quantize(Decimal("0.01"))
    if fig.exit != 0:
        return fig, None
    images = {u: int(Decimal(str(v)) / Decimal("0.08") + Decimal("0.5"))
              for u, v in s["charges"].items()}
    return fig, audit(images, out)


def report(fig: Figures, tasks: int, seed: int, took: float) -> None:
    """Print what the kills and interrupts interrupted."""
    k = fig.kills
    by_mode = Counter(x.mode for x in k)
    print(f"tasks={tasks} seed={seed} kills landed={len(k)} "
          f"({', '.join(f'{m} {by_mode[m]}' for m in MODES)}); runs that ended before their "
          f"signal: {sum(fig.not_landed.values())} {dict(fig.not_landed)}; {took:.0f} s")
    print(f"what the kills interrupted: mid-work (had sent imageInference) "
          f"{sum(x.sent_tasks for x in k)}, only polls/reconciliation/uploads "
          f"{sum(x.reached_server and not x.sent_tasks for x in k)}, run begun but nothing "
          f"sent {sum(x.run_begun and not x.reached_server for x in k)}, before the run was "
          f"recorded {sum(not x.run_begun and not x.reached_server for x in k)}; kills that "
          f"left a temporary output file {sum(x.temporary_files > 0 for x in k)} "
          f"({sum(x.temporary_files for x in k)} files)")
    print("by mode (landed / mid-work / left a temporary file): " + ", ".join(
        f"{m} {by_mode[m]}/{sum(x.sent_tasks for x in k if x.mode == m)}/"
        f"{sum(x.temporary_files > 0 for x in k if x.mode == m)}" for m in MODES))
    for presses in (1, 2):
        rounds = [i for i in fig.interrupts if i.presses == presses]
        if rounds:
            secs = sorted(i.seconds for i in rounds)
            print(f"Ctrl-C {'once' if presses == 1 else 'twice'}: {len(rounds)} rounds "
                  f"({sum(i.sent_tasks for i in rounds)} mid-work), exit codes "
                  f"{dict(Counter(i.exit for i in rounds))}, recorded status "
                  f"{dict(Counter(i.status for i in rounds))}, last press to exit: median "
                  f"{secs[len(secs) // 2]:.2f} s, max {secs[-1]:.2f} s")


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        raise SystemExit(child(sys.argv[2:]))
    sys.path.insert(0, str(ROOT / "tests"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--interrupts", type=int, default=10,
                    help="Ctrl-C rounds between the kills (once and twice, alternately)")
    ap.add_argument("--repeat", type=int, default=150, help="tasks = 2 x repeat")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    # `specrunner serve` takes its key from RUNWARE_API_KEY and so does the runner (the test
    # suite's conftest sets a canary key; a bench run sets its own). /admin/stats wants it.
    os.environ.setdefault("RUNWARE_API_KEY", "bench-kill-local-key")
    tmp = Path(tempfile.mkdtemp(prefix="bench-kill-"))
    t0 = time.perf_counter()
    fig, a = kill_and_resume(tmp, args.kills, args.interrupts, args.repeat, args.seed,
                             progress=lambda s: print(s, flush=True))
    tasks = 2 * args.repeat
    report(fig, tasks, args.seed, time.perf_counter() - t0)
    # Exit 130; or killed by the second SIGINT (-2, which a shell also shows as 130) when it
    # came after the run had ended, during the interpreter's exit. Anything else (0: the
    # press was not obeyed; None: still running 60 s later) is a failure.
    wrong = [i for i in fig.interrupts if i.exit not in (130, -signal.SIGINT)]
    for i in wrong:
        print(f"UNEXPECTED Ctrl-C round: {i}; its output:\n{i.log.read_text()[-3000:]}")
    if a is None:
        print(f"FAILED: final run exit {fig.exit} after {fig.resumes} resume(s): "
              f"{fig.stderr.strip()}; kept in {tmp}")
        raise SystemExit(1)
    debris = len(temporary_files(tmp / "o"))
    print(f"final exit={fig.exit} after {fig.resumes} resume(s): done={a.done} lost={a.lost} "
          f"billed_twice={a.billed_twice} unknown_charges={a.unknown_charges} "
          f"charged_tasks={a.charged_tasks} billed=${fig.billed} (budget "
          f"${Decimal('0.08') * tasks}); re-sends of an accepted UUID refused="
          f"{fig.duplicates_refused}; temporary files left in the output folder: {debris}")
    # (a crash's temporary file is written over by the resume, which writes that task again)
    if not a.clean or a.done != tasks or len(fig.kills) < args.kills or wrong or debris:
        print(f"FAILED: run record and outputs kept for inspection in {tmp}")
        raise SystemExit(1)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
