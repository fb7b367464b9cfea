"""Shards as the schedulers run them: N `specrunner run --shard k/N` processes at once against
one `specrunner serve` (a separate process, so its ledger is the oracle), then `specrunner
merge`; and a shard killed with SIGKILL mid-run, then run again. Each task is billed once,
the merged report is complete: every task done, every image on disk with its sha256."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from test_run_cli import write_spec
from test_run_kill import start_server, stats
from test_run_support import audit

from specrunner.errors import RecordError
from specrunner.record import IN_DOUBT_STATES, read_snapshot

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def specrunner(*argv: object) -> list[str]:
    return [sys.executable, "-m", "specrunner", *(str(a) for a in argv)]


def shard_cmd(spec: Path, out: Path, url: str, shard: str) -> list[str]:
    return specrunner("run", spec, "--base-url", f"{url}/v1", "--out", out, "--shard", shard,
                      "--concurrency", "4", "--progress", "none")


def merged_and_checked(tmp: Path, folders: list[Path], ledger: dict, tasks: int) -> None:
    """Merge `folders` with the real CLI, then check the merge against the ledger and disk."""
    merged = tmp / "merged"
    done = subprocess.run(specrunner("merge", *folders, "--out", merged), env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"plan: {tasks} of {tasks} tasks recorded, {tasks} done" in done.stdout
    images = {u: int(Decimal(str(v)) / Decimal("0.08")) for u, v in ledger["charges"].items()}
    a = audit(images, merged)
    assert (a.charged_tasks, a.done, a.billed_twice, a.unknown_charges, a.lost) == (
        tasks, tasks, 0, 0, 0), a
    report = subprocess.run(specrunner("report", merged, "--format", "json"), env=ENV,
                            capture_output=True, text=True, timeout=120)
    doc = json.loads(report.stdout)
    assert doc["totals"]["tasks"] == doc["totals"]["succeeded"] == tasks
    for t in doc["tasks"]:
        assert t["status"] == "done" and len(t["images"]) == 1, t
        (img,) = t["images"]
        assert hashlib.sha256((merged / img["path"]).read_bytes()).hexdigest() == img["sha256"]


def test_three_shard_processes_at_once_against_one_server_then_merge(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, repeat=30)  # 60 tasks
    folders = [tmp_path / f"shard-{k}" for k in (1, 2, 3)]
    server, url = start_server("--processing", "uniform:0.1,0.3")
    try:
        procs = [subprocess.Popen(shard_cmd(spec, f, url, f"{k}/3"), env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for k, f in enumerate(folders, 1)]
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err
        ledger = stats(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    runs = [read_snapshot(f).runs[0] for f in folders]
    assert max(r.started_at for r in runs) < min(r.ended_at or 0 for r in runs)  # at once
    assert [r.shard for r in runs] == ["1/3", "2/3", "3/3"]
    assert sum(len(read_snapshot(f).tasks) for f in folders) == 60
    assert ledger["tasksCharged"] == 60 and ledger["duplicateAttemptsTotal"] == 0
    merged_and_checked(tmp_path, folders, ledger, 60)


def test_a_shard_killed_mid_run_then_run_again_pays_nothing_twice(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, repeat=30)
    folders = [tmp_path / f"shard-{k}" for k in (1, 2, 3)]
    server, url = start_server("--processing", "uniform:0.2,0.5")
    try:
        procs = [subprocess.Popen(shard_cmd(spec, f, url, f"{k}/3"), env=ENV,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for k, f in enumerate(folders, 1)]
        victim = procs[1]
        deadline = time.monotonic() + 60
        states: list[str] = []
        while victim.poll() is None and time.monotonic() < deadline:  # until a few are done
            try:
                states = [t.state for t in read_snapshot(folders[1]).tasks]
            except RecordError:  # not made yet, or half made
                states = []
            if states.count("done") >= 3:
                break
            time.sleep(0.02)
        assert victim.poll() is None, "shard 2 finished before it could be killed"
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        for p in (procs[0], procs[2]):
            assert p.wait(timeout=120) == 0
        killed = read_snapshot(folders[1])
        left = [t.state for t in killed.tasks]
        assert killed.runs[0].ended_at is None and 3 <= left.count("done") < len(left), left
        assert any(s in IN_DOUBT_STATES for s in left), left  # killed with requests out
        again = subprocess.run(shard_cmd(spec, folders[1], url, "2/3"), env=ENV,
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stderr
        ledger = stats(url)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert ledger["tasksCharged"] == 60
    assert [r.shard for r in read_snapshot(folders[1]).runs] == ["2/3", "2/3"]
    merged_and_checked(tmp_path, folders, ledger, 60)
