"""The run record: schema, locking, migration, refusal of damaged records, group commit, files.

Raw sqlite3 appears here only to build what specrunner itself never writes: records of older
schemas, foreign or damaged files, and an injected failure.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from test_run_support import make_tasks, planned_record

from specrunner.errors import RecordError
from specrunner.record import SCHEMA_VERSION, Record, RunLog, RunMeta, open_record, read_snapshot

FIXTURES = Path(__file__).parent / "fixtures"


def meta(plan_json: str = "[]") -> RunMeta:
    return RunMeta(spec_path="spec.yaml", spec_text="name: x", spec_sha256="0" * 64,
                   plan_json=plan_json, max_usd=Decimal(1))


def with_log(record: Record, run_id: int, body) -> None:
    """Run `body(log)` with the run's log serving, then close it (everything committed)."""
    async def main() -> None:
        log = record.run_log(run_id)
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.serve)
            try:
                await body(log)
            finally:
                await log.close()

    anyio.run(main)


def test_new_record_is_wal_full_sync_and_versioned(tmp_path: Path) -> None:
    with open_record(tmp_path) as record:
        conn = record._conn
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    open_record(tmp_path).close()  # reopening our own record is fine


def test_lock_names_the_holder_and_is_released_on_close(tmp_path: Path) -> None:
    first = open_record(tmp_path)
    with pytest.raises(RecordError, match=f"pid {os.getpid()}"):
        open_record(tmp_path)
    first.close()
    open_record(tmp_path).close()


def test_a_killed_holder_releases_the_folder_at_once(tmp_path: Path) -> None:
    child = ("import sys, time; from pathlib import Path; from specrunner.record import "
             "open_record\nopen_record(Path(sys.argv[1]))\nprint('locked', flush=True)\n"
             "time.sleep(60)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
        with pytest.raises(RecordError, match=f"pid {proc.pid}"):
            open_record(tmp_path)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    open_record(tmp_path).close()  # no helper process outlives it: free at once


def test_an_output_folder_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    target = tmp_path / "out"
    target.write_text("not a folder")
    with pytest.raises(RecordError, match="is a file, not a folder"):
        open_record(target)
    assert target.read_text() == "not a folder"


def test_wrong_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    open_record(tmp_path).close()
    db = tmp_path / ".specrunner" / "run.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(RecordError, match="schema version"):
        open_record(tmp_path)
    assert db.read_bytes() == before


def test_results_keep_huge_seeds_exact_and_planning_is_idempotent(tmp_path: Path) -> None:
    tasks = make_tasks(2)
    record, run_id = planned_record(tmp_path, tasks)
    try:
        record.plan(run_id, tasks)  # a resume does not duplicate or reset tasks
        seed = 2**63 + 12345
        t = tasks[0]

        async def body(log: RunLog) -> None:
            log.results(t.task_key, "accepted", [{"taskUUID": t.task_uuid, "imageUUID": "x",
                                                  "seed": seed, "cost": 0.08,
                                                  "NSFWContent": False}])

        with_log(record, run_id, body)
        snap = record.snapshot()
    finally:
        record.close()
    assert len(snap.tasks) == 2
    [row] = snap.results[t.task_key]
    assert int(row.seed or 0) == seed and row.cost == Decimal("0.08") and row.nsfw is False


def test_planning_again_rewrites_only_the_tasks_whose_placement_changed(tmp_path: Path) -> None:
    tasks = make_tasks(5)
    record, run_id = planned_record(tmp_path, tasks)
    try:
        async def body(log: RunLog) -> None:
            await log.done(tasks[0].task_key, "planned", [], Decimal("0.08"))

        with_log(record, run_id, body)
        before = record._conn.total_changes
        record.plan(run_id, tasks)  # the same plan: nothing to write
        assert record._conn.total_changes == before
        moved = dataclasses.replace(tasks[0], output_stem="renamed/v0")
        record.plan(run_id, [moved, *tasks[1:]])  # one output name changed
        assert record._conn.total_changes == before + 1
        row = next(r for r in record.snapshot().tasks if r.task_key == moved.task_key)
    finally:
        record.close()
    assert (row.state, row.outputs, row.index) == ("done", ("renamed/v0.png",), 0)


def test_a_plan_the_last_ended_run_had_reads_no_task_rows_and_any_change_is_seen(
        tmp_path: Path) -> None:
    tasks = make_tasks(5)
    record, first = planned_record(tmp_path, tasks)
    record.end_run(first, "complete", 0, Decimal(0))
    statements: list[str] = []
    record._conn.set_trace_callback(statements.append)

    def reads(plan: list, *, end: bool = True) -> bool:
        """Plan as a new run (ended unless `end` is False): whether it read the tasks."""
        del statements[:]
        run_id = record.begin_run(meta())
        record.plan(run_id, plan)
        read = any("FROM tasks" in s for s in statements)
        if end:
            record.end_run(run_id, "complete", 0, Decimal(0))
        return read

    moved = dataclasses.replace(tasks[0], output_stem="renamed/v0")
    try:
        assert not reads(tasks)  # the plan of the last run that ended
        assert reads([moved, *tasks[1:]])  # an output renamed: the rows are checked...
        assert next(r for r in record.snapshot().tasks
                    if r.task_key == moved.task_key).outputs == ("renamed/v0.png",)
        assert not reads([moved, *tasks[1:]])
        assert reads([*tasks[1:], moved])  # the same tasks in another order
        assert not reads([*tasks[1:], moved], end=False)  # a run that never ends (killed)...
        assert reads([*tasks[1:], moved])  # ...leaves the next one checking the rows
        assert not reads([*tasks[1:], moved])
        assert reads([*tasks[1:], moved, *make_tasks(1, prompt="new")])  # a new task
        rows = record.snapshot().tasks
    finally:
        record.close()
    assert len(rows) == 6 and next(r for r in rows if r.task_key == moved.task_key).outputs \
        == ("renamed/v0.png",)


def test_concurrent_events_are_group_committed(tmp_path: Path) -> None:
    tasks = make_tasks(200)
    record, run_id = planned_record(tmp_path, tasks)
    commits: list[int] = []
    try:
        async def body(log: RunLog) -> None:
            async with anyio.create_task_group() as tg:
                for t in tasks:
                    tg.start_soon(log.ended, t.task_key, "planned", "in_doubt", None, None)
            commits.append(log.commits)

        with_log(record, run_id, body)
        snap = record.snapshot()
    finally:
        record.close()
    assert {r.state for r in snap.tasks} == {"in_doubt"}
    assert 1 <= commits[0] < 200  # batched: fewer transactions (fsyncs) than events


def test_a_failed_commit_applies_nothing_of_its_batch_and_stops_the_log(tmp_path: Path) -> None:
    tasks = make_tasks(3)
    record, run_id = planned_record(tmp_path, tasks)
    db = tmp_path / ".specrunner" / "run.db"
    with sqlite3.connect(db) as conn:  # an injected failure, inside SQLite itself
        conn.execute("CREATE TRIGGER boom BEFORE UPDATE ON tasks WHEN NEW.state = 'failed' "
                     "BEGIN SELECT RAISE(ABORT, 'injected'); END")
    errors: list[str] = []
    try:
        async def body(log: RunLog) -> None:
            a, b, c = tasks
            await log.ended(a.task_key, "planned", "in_doubt", None, None)
            log.accepted(b.task_key, "planned", "queued")  # same transaction as the failure
            try:
                await log.ended(c.task_key, "planned", "failed", "x", "y")
            except RecordError as exc:
                errors.append(str(exc))
            with pytest.raises(RecordError):  # the log stays stopped
                log.accepted(a.task_key, "in_doubt", "later")

        with pytest.raises(ExceptionGroup) as group:  # close() says so too
            with_log(record, run_id, body)
        assert group.group_contains(RecordError)
        states = [r.state for r in record.snapshot().tasks]
    finally:
        record.close()
    assert errors and "injected" in errors[0]
    assert states == ["in_doubt", "planned", "planned"]


def test_done_places_the_files_then_commits_and_a_bad_target_fails_alone(
        tmp_path: Path) -> None:
    tasks = make_tasks(3)
    out = tmp_path / "out"
    record, run_id = planned_record(out, tasks)
    (out / "v1.png").mkdir()  # task 1's target is a folder: its file cannot be placed
    outcome: dict[str, object] = {}
    try:
        async def one(log: RunLog, i: int) -> None:
            t = tasks[i]
            try:
                await log.done(t.task_key, "planned", [(f"v{i}.png", b"img%d" % i, "sha")],
                               Decimal("0.08"))
                outcome[t.variant_id] = (out / f"v{i}.png").read_bytes()  # placed when done
            except OSError as exc:
                outcome[t.variant_id] = type(exc).__name__

        async def body(log: RunLog) -> None:
            async with anyio.create_task_group() as tg:  # one batch for the three
                for i in range(3):
                    tg.start_soon(one, log, i)

        with_log(record, run_id, body)
        snap = record.snapshot()
    finally:
        record.close()
    assert outcome["v0"] == b"img0" and outcome["v2"] == b"img2"
    assert outcome["v1"] in ("IsADirectoryError", "PermissionError")
    assert [r.state for r in snap.tasks] == ["done", "planned", "done"]
    assert sorted(p.name for p in out.iterdir()) == [".specrunner", "v0.png", "v1.png", "v2.png"]
    assert not list(out.glob(".*.tmp"))  # no temporary file left behind


def test_an_old_schema_record_is_migrated_and_keeps_its_runs(tmp_path: Path) -> None:
    db = tmp_path / ".specrunner" / "run.db"
    db.parent.mkdir()
    shutil.copy(FIXTURES / "legacy" / "record-v1.db", db)
    before = read_snapshot(tmp_path)  # readable as it is, without migrating
    tasks = make_tasks(2)
    with open_record(tmp_path) as record:
        conn = record._conn
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND "
                            "name NOT LIKE 'sqlite_%'").fetchall() == []  # v3
        run_id = record.begin_run(meta())
        record.plan(run_id, tasks)
        snap = record.snapshot()
    assert len(snap.runs) == len(before.runs) + 1
    old = {r.task_key: r for r in before.tasks}
    for r in snap.tasks:
        if r.task_key in old:  # kept as they were; their axes are unknown (schema 1)
            assert (r.state, r.axes) == (old[r.task_key].state, None)
    for t in tasks:
        row = next(r for r in snap.tasks if r.task_key == t.task_key)
        assert row.axes == dict(t.axes) and row.input_name == t.input_name
        assert row.inputs is not None


def test_a_plan_is_stored_by_the_first_run_that_has_it(tmp_path: Path) -> None:
    plan_a = json.dumps([{"task_key": "a"}])
    plan_b = json.dumps([{"task_key": "b"}])
    with open_record(tmp_path) as record:
        runs = [record.begin_run(meta(p)) for p in (plan_a, plan_a, plan_b, plan_a)]
        stored = [r[0] for r in record._conn.execute("SELECT plan_json FROM runs ORDER BY run_id")]
        snap = record.snapshot()
    assert stored == [plan_a, None, plan_b, None]  # each plan's text once
    assert [snap.plan_keys(r) for r in snap.runs] == [("a",), ("a",), ("b",), ("a",)]
    assert len(runs) == 4


V1_TASKS = """CREATE TABLE tasks (
  task_key TEXT PRIMARY KEY, idx INTEGER NOT NULL, variant_id TEXT NOT NULL,
  state TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0, task_uuid TEXT NOT NULL,
  est_cost TEXT NOT NULL, cost TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  error_code TEXT, error_message TEXT, request_json TEXT NOT NULL, outputs_json TEXT NOT NULL,
  run_id INTEGER, updated_at REAL NOT NULL)"""


def test_a_record_half_created_by_an_older_version_is_completed(tmp_path: Path) -> None:
    rec = tmp_path / ".specrunner"
    rec.mkdir()
    conn = sqlite3.connect(rec / "run.db")  # killed after two CREATE TABLEs, before the ids
    conn.executescript("PRAGMA journal_mode=WAL; CREATE TABLE meta (key TEXT PRIMARY KEY, "
                       "value TEXT NOT NULL);" + V1_TASKS + ";")
    conn.close()
    record, _ = planned_record(tmp_path, make_tasks(2))
    try:
        assert record._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert len(record.snapshot().tasks) == 2
    finally:
        record.close()


def test_a_foreign_database_with_rows_is_still_refused_untouched(tmp_path: Path) -> None:
    rec = tmp_path / ".specrunner"
    rec.mkdir()
    conn = sqlite3.connect(rec / "run.db")
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "INSERT INTO meta VALUES ('a', 'b');")
    conn.close()
    before = (rec / "run.db").read_bytes()
    with pytest.raises(RecordError, match="schema version"):
        open_record(tmp_path)
    assert (rec / "run.db").read_bytes() == before


def test_a_kill_at_any_moment_of_record_creation_leaves_a_usable_folder(tmp_path: Path) -> None:
    """SIGKILL a process creating records after random delays; the next open must work."""
    child = ("import sys; from pathlib import Path; from specrunner.record import open_record\n"
             "sys.stdin.readline()\n"
             "for i in range(1000):\n"
             "    open_record(Path(sys.argv[1]) / str(i)).close()\n")
    rng = random.Random(5)
    root = Path(__file__).resolve().parent.parent
    for n in range(12):
        out = tmp_path / f"k{n}"
        proc = subprocess.Popen([sys.executable, "-c", child, str(out)], stdin=subprocess.PIPE,
                                env={**os.environ, "PYTHONPATH": str(root)})
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        time.sleep(rng.uniform(0.05, 0.4))  # lands somewhere in a stream of creations
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for folder in sorted(out.iterdir()) if out.exists() else []:
            open_record(folder).close()
