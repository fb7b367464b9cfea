"""SIGKILL a real `specrunner run` process at random moments against `specrunner serve`
(a separate process, so the ledger outlives the client), then resume until complete (at most
4 resumes): 0 billed twice, 0 lost, and the campaign completes. bench/bench_kill.py runs the
same with more kills and tasks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

from test_run_cli import write_spec
from test_run_support import audit

from specrunner.record import read_attempts, read_snapshot

ROOT = Path(__file__).resolve().parent.parent


def start_server(*flags: str) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "specrunner", "serve", "--port", "0",
                             "--no-render", *flags], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline() if proc.stdout else ""
    url = line.split(" on ", 1)[1].split()[0]
    assert url.startswith("http://127.0.0.1:"), line
    return proc, url


def stats(url: str) -> dict:
    # the server took its key from RUNWARE_API_KEY (the suite's canary); the ledger needs it
    request = urllib.request.Request(f"{url}/admin/stats", headers={
        "Authorization": f"Bearer {os.environ['RUNWARE_API_KEY']}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.load(resp)


def run_cmd(spec: Path, out: Path, url: str, max_usd: str = "5") -> list[str]:
    return [sys.executable, "-m", "specrunner", "run", str(spec), "--base-url", f"{url}/v1",
            "--out", str(out), "--concurrency", "4", "--progress", "none", "--max-usd", max_usd]


def kill_and_resume(tmp: Path, kills: int, repeat: int, seed: int) -> dict:
    """Returns the figures; asserts nothing (callers do)."""
    rng = random.Random(seed)
    spec = write_spec(tmp, repeat=repeat)
    out = tmp / "o"
    server, url = start_server("--processing", "uniform:0.1,0.4", "--fault", "drop=0.05",
                               "--fault", "http_503=0.05", "--seed", str(seed))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = 0
    max_usd = str(Decimal("0.08") * 2 * repeat)  # exactly the campaign: no room to pay twice
    lock = out / ".specrunner" / "lock"
    try:
        for n in range(3 * kills):  # bounded; a run may finish before its kill lands
            if killed >= kills:
                break
            proc = subprocess.Popen(run_cmd(spec, out, url, max_usd), env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if n % 4 == 0:
                # Anywhere from start-up on: interpreter start, planning, record creation.
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                # Mid-run: a random moment after this process opened the record. Timed from
                # there, not from the start, so a slow start-up on a loaded machine does not
                # turn the kill into one that never reaches the work.
                _wait_for_record(proc, lock, timeout=60)
                time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                killed += 1
            proc.wait(timeout=30)
        # Resume until complete: with 5% drops and 5% 503s injected, one resume may end with a
        # task in doubt after its 3 attempts (exit 1; the next resume reconciles it). Only
        # exit 1 is resumed again, a bounded number of times; anything else is reported.
        resumes = 0
        while True:
            resumes += 1
            final = subprocess.run(run_cmd(spec, out, url, max_usd), env=env,
                                   capture_output=True, text=True, timeout=120)
            if final.returncode != 1 or resumes == 4:
                break
        s = stats(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    fig = {"killed": killed, "exit": final.returncode, "stderr": final.stderr, "resumes": resumes,
           "tasks": 2 * repeat, "duplicates_refused": s["duplicateAttemptsTotal"]}
    if final.returncode != 0:
        return fig  # the caller reports the final run's own error, not a later symptom
    images = {u: int(Decimal(str(v)) / Decimal("0.08") + Decimal("0.5"))
              for u, v in s["charges"].items()}
    sent = {a.run_id for a in read_attempts(out) if a.kind == "send"}
    # killed runs that had sent something: the kills landed mid-work
    mid_run = sum(r.ended_at is None and r.run_id in sent for r in read_snapshot(out).runs)
    return {**fig, "killed_mid_run": mid_run, "audit": audit(images, out)}


def _wait_for_record(proc: subprocess.Popen, lock: Path, timeout: float) -> None:
    """Until `proc` holds the run folder's lock (it writes its pid there) or has exited."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            if lock.read_text().strip() == str(proc.pid):
                return
        except OSError:
            pass
        time.sleep(0.01)


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    fig = kill_and_resume(tmp_path, kills=22, repeat=80, seed=11)
    assert fig["exit"] == 0, (fig["resumes"], fig["stderr"])
    a = fig["audit"]
    assert fig["killed"] >= 20 and fig["killed_mid_run"] >= 5, fig
    assert a.billed_twice == 0 and a.unknown_charges == 0 and a.lost == 0
    assert a.done == fig["tasks"] == a.charged_tasks
