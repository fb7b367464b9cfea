"""The run record: schema, locking, refusal of damaged records, group commit."""

from __future__ import annotations

import dataclasses
import marshal
import os
import sqlite3
import struct
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from specrunner import batching
from specrunner.batching import _RECORD_HELPER, Writer, _Entry
from specrunner.helper_process import HelperProcess
from specrunner.outputs import FileSink
from specrunner.errors import RecordError
from specrunner.store import SCHEMA_VERSION, op_attempt, op_result, op_state, open_store
from test_run_support import make_tasks, planned_store, states_after, to_state


def test_new_record_is_wal_full_sync_and_versioned(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    finally:
        store.close()
    reopened = open_store(tmp_path)  # reopening our own record is fine
    reopened.close()


def test_lock_names_the_holder_and_is_released_on_close(tmp_path: Path) -> None:
    first = open_store(tmp_path)
    with pytest.raises(RecordError, match=f"pid {os.getpid()}"):
        open_store(tmp_path)
    first.close()
    open_store(tmp_path).close()


def test_wrong_schema_version_is_refused_untouched(tmp_path: Path) -> None:
    open_store(tmp_path).close()
    db = tmp_path / ".specrunner" / "run.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=99")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(RecordError, match="schema version"):
        open_store(tmp_path)
    assert db.read_bytes() == before


def test_results_keep_huge_seeds_exact_and_plan_is_idempotent(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        tasks = make_tasks(2)
        store.plan_tasks(1, tasks)
        store.plan_tasks(2, tasks)  # a resume does not duplicate or reset tasks
        assert len(store.task_rows()) == 2
        seed = 2**63 + 12345
        store.apply([op_result(tasks[0].task_key, 0, {"taskUUID": tasks[0].task_uuid,
                                                      "imageUUID": "x", "seed": seed,
                                                      "cost": 0.08, "NSFWContent": False}, 0.0)])
        [row] = store.results(tasks[0].task_key)
        assert int(row.seed) == seed and row.cost == Decimal("0.08") and row.nsfw is False
    finally:
        store.close()


def test_planning_again_rewrites_only_the_tasks_whose_placement_changed(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    try:
        tasks = make_tasks(5)
        store.plan_tasks(1, tasks)
        store.apply(op_state(tasks[0].task_key, 1, "planned", "done", now=1.0, cost="0.08"))
        before = store.conn.total_changes
        store.plan_tasks(2, tasks)  # the same plan: nothing to write
        assert store.conn.total_changes == before
        moved = dataclasses.replace(tasks[0], output_stem="renamed/v0")
        store.plan_tasks(3, [moved, *tasks[1:]])  # one output name changed
        assert store.conn.total_changes == before + 1
        row = store.conn.execute("SELECT state, outputs_json, idx FROM tasks WHERE task_key=?",
                                 (moved.task_key,)).fetchone()
        assert row == ("done", '["renamed/v0.png"]', 0)  # placement followed, state kept
        assert len(store.task_rows()) == 5
    finally:
        store.close()


@pytest.mark.parametrize("use_helper", [True, False], ids=["record-helper", "in-process"])
def test_writer_group_commits_concurrent_writes(tmp_path: Path, use_helper: bool) -> None:
    store, tasks = planned_store(tmp_path, 200)

    async def main() -> int:
        writer = Writer(store, use_helper=use_helper)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            async with anyio.create_task_group() as inner:
                for t in tasks:
                    inner.start_soon(writer.write, op_state(t.task_key, 1, "planned", "sending",
                                                            now=1.0) +
                                     [op_attempt(t.task_key, 1, t.task_uuid, "send", 1, 2,
                                                 200, "ok")])
            await writer.close()
        return writer.commits

    try:
        commits = anyio.run(main)
        states = {r.state for r in store.task_rows().values()}
        n = store.conn.execute("SELECT count(*) FROM transitions").fetchone()[0]
    finally:
        store.close()
    assert states == {"sending"} and n == 200
    assert commits < 200  # batched: fewer transactions (fsyncs) than writers


@pytest.mark.parametrize("use_helper", [True, False], ids=["record-helper", "in-process"])
def test_a_failed_commit_applies_nothing_of_its_batch_and_stops_the_writer(
        tmp_path: Path, use_helper: bool) -> None:
    store, tasks = planned_store(tmp_path, 3)
    errors: list[str] = []

    async def main() -> None:
        writer = Writer(store, use_helper=use_helper)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            await writer.write(to_state(tasks[0], "sending"))
            writer.queue(to_state(tasks[1], "sending"))  # same transaction as the failing statement
            for ops in ([("INSERT INTO no_such_table VALUES (1)", ())], to_state(tasks[2], "sending")):
                try:
                    await writer.write(ops)
                except RecordError as exc:
                    errors.append(str(exc))
            await writer.close()

    states = states_after(store, main, tasks)
    assert len(errors) == 2 and "no such table: no_such_table" in errors[0]
    assert errors[1] == errors[0]  # the writer refuses everything after a failed commit
    assert states == ["sending", "planned", "planned"]


def test_a_writer_whose_record_helper_dies_fails_instead_of_guessing(tmp_path: Path) -> None:
    store, tasks = planned_store(tmp_path, 2)
    seen: list[str] = []

    async def main() -> None:
        writer = Writer(store)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            await writer.write(to_state(tasks[0], "sending"))
            assert writer._helper is not None
            writer._helper.proc.kill()
            writer._helper.proc.wait()
            try:
                await writer.write(to_state(tasks[1], "sending"))
            except RecordError as exc:
                seen.append(str(exc))
            await writer.close()

    states = states_after(store, main, tasks)
    assert len(seen) == 1 and "record helper process exited" in seen[0]
    assert states == ["sending", "planned"]


def test_the_record_helper_ignores_a_frame_cut_short_by_a_killed_runner(tmp_path: Path) -> None:
    store, tasks = planned_store(tmp_path, 2)
    payload = marshal.dumps(Writer._statements([_Entry(to_state(t, "sending"), None) for t in tasks]))
    helper = HelperProcess(_RECORD_HELPER, [str(store.path)], "record helper")

    async def main() -> None:
        # The whole length, then all but the last byte: what a runner killed mid-send leaves.
        await helper.send(struct.pack("!I", len(payload)) + payload[:-1])
        helper.stop()

    try:
        anyio.run(main)
        assert helper.proc.wait(timeout=20) == 0  # end of input: it exits, cleanly
        assert {r.state for r in store.task_rows().values()} == {"planned"}
        assert store.conn.execute("SELECT count(*) FROM transitions").fetchone()[0] == 0
    finally:
        store.close()


def test_a_killed_runners_helper_keeps_the_folder_locked_until_it_exits(tmp_path: Path) -> None:
    gone = tmp_path / "helper-gone"
    runner = textwrap.dedent("""
        import subprocess, sys, time
        from specrunner.store import open_store
        store = open_store(sys.argv[1])
        # a helper sharing the folder's lock that finishes its batch 1 s after the kill
        subprocess.Popen([sys.executable, "-c", "import pathlib, sys, time; time.sleep(1); "
                          "pathlib.Path(sys.argv[1]).write_text('done')", sys.argv[2]],
                         pass_fds=(store.lock_fd,))
        print("ready", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", runner, str(tmp_path), str(gone)],
                             stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    child.kill()
    child.wait()
    child.stdout.close()
    store = open_store(tmp_path)  # waits for the helper instead of refusing
    try:
        assert gone.read_text() == "done"  # it had finished before the folder was ours
    finally:
        store.close()


@pytest.mark.parametrize("code", ["raise SystemExit(3)", "import time; time.sleep(60)"],
                         ids=["exits", "never-ready"])
def test_a_record_helper_that_cannot_start_leaves_the_writer_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    # e.g. an interpreter whose sqlite3 does not import without the caller's environment,
    # or whose start hangs (its input closed, it is reaped once it ends)
    monkeypatch.setattr(batching, "_RECORD_HELPER", code)
    monkeypatch.setattr(batching, "HELPER_READY_S", 0.5)
    store, tasks = planned_store(tmp_path, 2)

    async def main() -> None:
        writer = Writer(store)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            for t in tasks:
                await writer.write(to_state(t, "sending"))
            assert writer._use_helper is False and writer.commits == 2
            await writer.close()

    assert set(states_after(store, main, tasks)) == {"sending"}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_runs_helpers_hold_the_folder_lock(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    lock = os.readlink(f"/proc/self/fd/{store.lock_fd}")

    async def main() -> list[bool]:
        writer = Writer(store)
        files = FileSink(writer, lock_fd=store.lock_fd)
        async with anyio.create_task_group() as tg:
            tg.start_soon(writer.run)
            tg.start_soon(files.run)
            # started, and ready: they have exec'd, so only the descriptors passed are open
            helpers = [await writer._ready_helper(), await files._ready_helper()]
            assert all(h is not None for h in helpers)
            held = [lock in {os.readlink(f"/proc/{h.proc.pid}/fd/{fd}")  # type: ignore[union-attr]
                             for fd in os.listdir(f"/proc/{h.proc.pid}/fd")}  # type: ignore[union-attr]
                    for h in helpers]
            await files.close()
            await writer.close()
            return held

    try:
        assert anyio.run(main) == [True, True]
    finally:
        store.close()


V1_TASKS = """CREATE TABLE tasks (
  task_key TEXT PRIMARY KEY, idx INTEGER NOT NULL, variant_id TEXT NOT NULL,
  state TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0, task_uuid TEXT NOT NULL,
  est_cost TEXT NOT NULL, cost TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  error_code TEXT, error_message TEXT, request_json TEXT NOT NULL, outputs_json TEXT NOT NULL,
  run_id INTEGER, updated_at REAL NOT NULL)"""


V1_RUNS = """CREATE TABLE runs (
  run_id INTEGER PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, status TEXT,
  exit_code INTEGER, spec_path TEXT, spec_text TEXT, spec_sha256 TEXT, git_commit TEXT,
  git_dirty INTEGER, plan_json TEXT, versions_json TEXT, max_usd TEXT, spent_usd TEXT)"""


def test_plan_records_axes_input_and_prompt_and_a_v1_record_is_migrated(tmp_path: Path) -> None:
    import json

    store = open_store(tmp_path)
    store.close()
    db = tmp_path / ".specrunner" / "run.db"
    conn = sqlite3.connect(db)  # make it a schema-1 record holding one task and one run
    conn.executescript("DROP TABLE tasks;" + V1_TASKS + ";DROP TABLE runs;" + V1_RUNS +
                       ";PRAGMA user_version=1;"
                       "CREATE INDEX transitions_task ON transitions(task_key);"
                       "CREATE INDEX attempts_task ON attempts(task_key);")
    conn.execute("INSERT INTO runs (run_id, started_at, plan_json) VALUES (1, 0.0, '[1]')")
    tasks = make_tasks(3)
    conn.execute("INSERT INTO tasks VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                 (tasks[0].task_key, 0, tasks[0].variant_id, "done", 0, tasks[0].task_uuid,
                  "0.08", "0.08", 1, None, None, "{}", "[]", 1, 0.0))
    conn.commit()
    conn.close()
    store = open_store(tmp_path)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND "
                                  "name NOT LIKE 'sqlite_%'").fetchall() == []  # v3
        old = store.conn.execute("SELECT state, axes_json FROM tasks").fetchall()
        assert old == [("done", None)]  # kept; its axes are unknown until it is planned again
        assert store.run_plan(1) == "[1]"  # v4: an older run keeps its plan, with no hash
        assert store.begin_run({"plan_json": "[1]"}) == 2 and store.run_plan(2) == "[1]"
        store.plan_tasks(2, tasks)
        rows = {r[0]: r[1:] for r in store.conn.execute(
            "SELECT task_key, state, axes_json, input_name, prompt_name FROM tasks")}
    finally:
        store.close()
    for t in tasks:
        state, axes, inp, prompt = rows[t.task_key]
        assert json.loads(axes) == dict(t.axes) and inp == t.input_name
        assert prompt == t.prompt_name
    assert rows[tasks[0].task_key][0] == "done"


def test_a_plan_is_stored_by_the_first_run_that_has_it_and_read_back_for_every_run(
        tmp_path: Path) -> None:
    store = open_store(tmp_path)
    plan_a, plan_b = '[{"task_key": "a"}]', '[{"task_key": "b"}]'
    try:
        runs = [store.begin_run({"plan_json": p}) for p in (plan_a, plan_a, plan_b, plan_a)]
        runs.append(store.begin_run({"spec_path": "no plan"}))
        stored = [r[0] for r in store.conn.execute(
            "SELECT plan_json FROM runs ORDER BY run_id")]
        read = [store.run_plan(r) for r in runs]
    finally:
        store.close()
    assert stored == [plan_a, None, plan_b, None, None]  # each plan's text once
    assert read == [plan_a, plan_a, plan_b, plan_a, None]


def test_a_record_half_created_by_an_older_version_is_completed(tmp_path: Path) -> None:
    rec = tmp_path / ".specrunner"
    rec.mkdir()
    conn = sqlite3.connect(rec / "run.db")  # killed after two CREATE TABLEs, before the ids
    conn.executescript("PRAGMA journal_mode=WAL; CREATE TABLE meta (key TEXT PRIMARY KEY, "
                       "value TEXT NOT NULL);" + V1_TASKS + ";")
    conn.close()
    store = open_store(tmp_path)
    try:
        store.plan_tasks(1, make_tasks(2))
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert len(store.task_rows()) == 2
    finally:
        store.close()


def test_a_foreign_database_with_rows_is_still_refused_untouched(tmp_path: Path) -> None:
    rec = tmp_path / ".specrunner"
    rec.mkdir()
    conn = sqlite3.connect(rec / "run.db")
    conn.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                       "INSERT INTO meta VALUES ('a', 'b');")
    conn.close()
    before = (rec / "run.db").read_bytes()
    with pytest.raises(RecordError, match="schema version"):
        open_store(tmp_path)
    assert (rec / "run.db").read_bytes() == before


def test_a_kill_at_any_moment_of_record_creation_leaves_a_usable_folder(tmp_path: Path) -> None:
    """SIGKILL a process creating a record after random delays; the next open must work."""
    import random
    import signal
    import subprocess
    import sys
    import time

    child = ("import sys; from pathlib import Path; from specrunner.store import open_store\n"
             "sys.stdin.readline()\n"
             "for i in range(1000):\n"
             "    open_store(Path(sys.argv[1]) / str(i)).close()\n")
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
        made = sorted(out.iterdir()) if out.exists() else []
        for folder in made:  # the one being created when the kill landed is among them
            open_store(folder).close()
