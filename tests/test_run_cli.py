"""`specrunner run` through the CLI: usage errors, --local runs, resume, locks, damaged records,
and Ctrl-C in a real subprocess."""

from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

import specrunner.run
from specrunner import cli
from specrunner.errors import RecordError
from specrunner.local import LocalConfig, create_app
from specrunner.record import open_record, read_attempts, read_snapshot
from specrunner.run import set_testing

SPEC = """\
version: 1
name: demo
defaults:
  outputFormat: PNG
inputs:
  shop:
    seed: seed.png
    mask: mask.png
    mask_polarity: black-edits
prompts:
  sign: "A sign reading {word}"
vars: {word: HELLO}
matrix:
  styleType: [DESIGN, REALISTIC]
repeat: REPEAT
budget: {max_usd: 5}
execution: {poll_interval_s: 0.05, poll_max_interval_s: 0.1}
"""


def write_spec(folder: Path, repeat: int = 3, word: str = "HELLO") -> Path:
    Image.new("RGB", (32, 24), (200, 120, 40)).save(folder / "seed.png")
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (8, 6, 24, 18))
    mask.save(folder / "mask.png")
    path = folder / "spec.yaml"
    path.write_text(SPEC.replace("REPEAT", str(repeat)).replace("HELLO", word), encoding="utf-8")
    return path


def call(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(["run", *argv, "--progress", "none"], out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture()
def server(monkeypatch):
    """The in-process local server used by --local, kept so the test can read its ledger."""
    set_testing(True)
    app = create_app(LocalConfig(render=False))
    monkeypatch.setattr(specrunner.run, "local_server", lambda faults, state_dir=None: app)
    yield app
    set_testing(False)


def test_no_key_and_no_local_is_a_usage_error_before_any_work(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("RUNWARE_API_KEY")
    spec = write_spec(tmp_path)
    code, _out, err = call(str(spec), "--out", str(tmp_path / "o"))
    assert code == 2 and "no API key" in err and not (tmp_path / "o").exists()


def test_invalid_spec_exits_2_without_a_record(tmp_path, server) -> None:
    spec = write_spec(tmp_path)
    spec.write_text(spec.read_text().replace("styleType", "stlyeType"))
    code, _, _err = call(str(spec), "--local", "--out", str(tmp_path / "o"))
    assert code == 2 and not (tmp_path / "o").exists()
    assert server.stats().http_requests == 0


def test_local_run_then_resume_makes_zero_calls(tmp_path, server) -> None:
    spec = write_spec(tmp_path)
    outdir = tmp_path / "o"
    code, out, _ = call(str(spec), "--local", "--out", str(outdir))
    assert code == 0, out
    assert out.splitlines()[-1] == f"report: specrunner report {outdir.resolve()}"
    files = sorted(p.name for p in outdir.iterdir() if p.is_file())
    assert files == ["DESIGN-r2.png", "DESIGN-r3.png", "DESIGN.png", "REALISTIC-r2.png",
                     "REALISTIC-r3.png", "REALISTIC.png"]
    assert len(server.stats().charges) == 6
    before = server.stats().http_requests
    code, out, _ = call(str(spec), "--local", "--out", str(outdir))
    assert code == 0 and server.stats().http_requests == before
    # an edited prompt: only the tasks it changed run (all of them here: one prompt)
    spec2 = write_spec(tmp_path, repeat=4)
    code, out, _ = call(str(spec2), "--local", "--out", str(outdir))
    assert code == 0 and len(server.stats().charges) == 8  # only the two new repeats
    snap = read_snapshot(outdir)
    assert "repeat: 4" in (snap.spec_text or "") and len(snap.runs[-1].spec_sha256 or "") == 64


def summary_rows(text: str) -> dict[str, str]:
    return {k.strip(): v.strip() for k, v in (line.rsplit("  ", 1) for line in
                                              text.splitlines() if "  " in line)}


def test_resuming_a_finished_campaign_starts_no_server_and_sends_nothing(tmp_path,
                                                                         monkeypatch) -> None:
    """Every task done: no backend is reached, so --local's server (which would replay its
    whole journal first) is not even started; the figures are the campaign's as before."""
    set_testing(True)
    spec, out = write_spec(tmp_path), tmp_path / "o"
    code, first, _ = call(str(spec), "--local", "--out", str(out))
    assert code == 0
    attempts = len(read_attempts(out))
    started: list[object] = []
    real = specrunner.run.local_server
    monkeypatch.setattr(specrunner.run, "local_server",
                        lambda *a, **k: started.append(a) or real(*a, **k))
    code, again, err = call(str(spec), "--local", "--out", str(out))
    assert (code, err, started, len(read_attempts(out))) == (0, "", [], attempts)
    rows = summary_rows(again)
    assert (rows["done before this run"], rows["requests sent (imageInference)"],
            rows["campaign spent (USD)"], rows["status"]) == (
        "6", "0", summary_rows(first)["campaign spent (USD)"], "complete")
    # a task left to do: the server is started and the task sent
    code, _, _ = call(str(write_spec(tmp_path, repeat=4)), "--local", "--out", str(out))
    assert code == 0 and len(started) == 1 and len(read_attempts(out)) > attempts


def test_a_local_rerun_after_an_edit_finds_its_uploads_like_runware_would(tmp_path) -> None:
    """--local keeps the server's state beside the record: the second run reuses the uploads
    recorded by the first (no invalidSeedImage, no fresh UUID, no retry) and sends only the
    changed tasks, each once."""
    set_testing(True)
    out = tmp_path / "o"
    assert call(str(write_spec(tmp_path, repeat=1)), "--local", "--out", str(out))[0] == 0
    code, text, err = call(str(write_spec(tmp_path, repeat=1, word="WORLD")), "--local",
                           "--out", str(out))
    assert (code, err) == (0, "")
    rows = {k.strip(): v.strip() for k, v in (line.rsplit("  ", 1) for line in
                                              text.splitlines() if "  " in line)}
    assert rows["requests sent (imageInference)"] == "2" and rows["retries"] == "0"
    snap = read_snapshot(out)
    assert snap.new_uuids == 0 and snap.uploads == 2
    assert sorted(t.state for t in snap.tasks) == ["done"] * 4
    assert (out / ".specrunner" / "local-server").is_dir()


def test_dry_run_sends_nothing(tmp_path, server) -> None:
    spec = write_spec(tmp_path)
    code, out, _ = call(str(spec), "--local", "--dry-run", "--out", str(tmp_path / "o"))
    assert code == 0 and "6 would run" in out and server.stats().http_requests == 0
    assert not (tmp_path / "o").exists()


def test_second_process_on_the_same_folder_is_refused(tmp_path, server) -> None:
    spec = write_spec(tmp_path)
    holder = open_record(tmp_path / "o")
    try:
        code, _, err = call(str(spec), "--local", "--out", str(tmp_path / "o"))
    finally:
        holder.close()
    assert code == 2 and f"pid {os.getpid()}" in err
    assert server.stats().http_requests == 0


@pytest.mark.parametrize("content", [b"not a database at all, sorry" * 10, b""])
def test_damaged_record_is_refused_and_left_untouched(tmp_path, server, content) -> None:
    spec = write_spec(tmp_path)
    rec = tmp_path / "o" / ".specrunner"
    rec.mkdir(parents=True)
    db = rec / "run.db"
    if content:
        db.write_bytes(content)
    else:  # a valid SQLite file of some other program
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE other (x)")
        conn.commit()
        conn.close()
    before = db.read_bytes()
    code, _, err = call(str(spec), "--local", "--out", str(tmp_path / "o"))
    assert code == 2 and "run record" in err and db.read_bytes() == before
    assert server.stats().http_requests == 0


def _spawn(spec: Path, out: Path, faults: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    return subprocess.Popen(
        [sys.executable, "-m", "specrunner", "run", str(spec), "--local", "--out", str(out),
         "--faults", str(faults), "--concurrency", "2", "--progress", "plain",
         "--progress-every", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _states(out: Path) -> dict[str, int]:
    try:
        tasks = read_snapshot(out).tasks
    except RecordError:  # not created yet
        return {}
    counts: dict[str, int] = {}
    for t in tasks:
        counts[t.state] = counts.get(t.state, 0) + 1
    return counts


def _wait_for(pred, limit: int = 600) -> None:
    for _ in range(limit):  # bounded: 600 x 50 ms
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_drains_then_cancels_and_exits_130(tmp_path, presses) -> None:
    spec = write_spec(tmp_path)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"processing": 1.5}))
    out = tmp_path / "o"
    proc = _spawn(spec, out, faults)
    try:
        # "accepted": the server has both requests
        _wait_for(lambda: _states(out).get("accepted", 0) >= 2)
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "waiting for 2 in flight" in stderr
    states = _states(out)
    # The first task ran alone until its answer told the price (slow start), then two at a
    # time: the press came with those two in flight.
    if presses == 1:
        assert states == {"done": 3, "planned": 3}  # in-flight finished, nothing new started
    else:
        assert "cancelling" in stderr and states.get("planned") == 3 and states["done"] == 1
    [run] = read_snapshot(out).runs
    assert (run.status, run.exit_code) == ("interrupted", 130)
    # the record is consistent: a resume finishes the campaign
    (tmp_path / "none.json").write_text("{}")
    proc = _spawn(spec, out, tmp_path / "none.json")
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert _states(out) == {"done": 6}
