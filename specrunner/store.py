"""The run's durable record: one SQLite database (WAL, synchronous=FULL) per output folder.

Layout: `<out>/.specrunner/run.db` plus `<out>/.specrunner/lock` (flock, holds the PID).
A task's UUID is committed before it is sent; whatever the server returned is committed
before the task counts as done. Writes go through `batching.Writer`, which group-commits the
changes of every concurrent task in one transaction (one fsync) so thousands of tasks per
second fit; output files go through `outputs.FileSink`.

Task states: planned -> sending -> accepted -> received -> done, or -> failed / in_doubt.
`sending`, `accepted`, `received` and `in_doubt` are reconciled (never blindly re-minted) on
resume. Raises RecordError for a damaged or locked record; never overwrites one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from specrunner.errors import RecordError

# 2: tasks.axes_json, input_name, prompt_name; 3: no per-task indexes on transitions and
# attempts; 4: runs.plan_sha256, a plan's JSON kept once (older records are migrated)
SCHEMA_VERSION = 4
APP_ID = 0x53505243  # "SPRC": marks a specrunner record in PRAGMA application_id
RECORD_DIR = ".specrunner"
DB_NAME = "run.db"
LOCK_NAME = "lock"
UPLOAD_TTL_S = 29 * 24 * 3600  # Runware deletes uploads 30 days after last use; keep a margin

FINAL_STATES = frozenset({"done", "failed"})
IN_DOUBT_STATES = frozenset({"sending", "accepted", "received", "in_doubt"})
STATES = frozenset({"planned"}) | FINAL_STATES | IN_DOUBT_STATES

Op = tuple[str, Sequence[Any]]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id INTEGER PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, status TEXT,
  exit_code INTEGER, spec_path TEXT, spec_text TEXT, spec_sha256 TEXT, git_commit TEXT,
  git_dirty INTEGER, plan_json TEXT, versions_json TEXT, max_usd TEXT, spent_usd TEXT,
  plan_sha256 TEXT);
CREATE TABLE IF NOT EXISTS tasks (
  task_key TEXT PRIMARY KEY, idx INTEGER NOT NULL, variant_id TEXT NOT NULL,
  state TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0, task_uuid TEXT NOT NULL,
  est_cost TEXT NOT NULL, cost TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  error_code TEXT, error_message TEXT, request_json TEXT NOT NULL, outputs_json TEXT NOT NULL,
  run_id INTEGER, updated_at REAL NOT NULL, axes_json TEXT, input_name TEXT, prompt_name TEXT);
CREATE TABLE IF NOT EXISTS task_uuids (
  task_uuid TEXT PRIMARY KEY, task_key TEXT NOT NULL, generation INTEGER NOT NULL,
  run_id INTEGER, recorded_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (
  id INTEGER PRIMARY KEY, task_key TEXT NOT NULL, run_id INTEGER, from_state TEXT,
  to_state TEXT NOT NULL, at REAL NOT NULL, detail TEXT);
CREATE TABLE IF NOT EXISTS attempts (
  id INTEGER PRIMARY KEY, task_key TEXT NOT NULL, run_id INTEGER, task_uuid TEXT NOT NULL,
  kind TEXT NOT NULL, started_at REAL NOT NULL, ended_at REAL NOT NULL, http_status INTEGER,
  outcome TEXT NOT NULL, error_code TEXT, error_message TEXT);
CREATE TABLE IF NOT EXISTS results (
  task_key TEXT NOT NULL, idx INTEGER NOT NULL, task_uuid TEXT NOT NULL, image_uuid TEXT,
  seed TEXT, cost TEXT, url TEXT, nsfw INTEGER, output_path TEXT, sha256 TEXT, bytes INTEGER,
  received_at REAL NOT NULL, PRIMARY KEY (task_key, idx));
CREATE TABLE IF NOT EXISTS uploads (
  sha256 TEXT NOT NULL, inverted INTEGER NOT NULL, image_uuid TEXT NOT NULL,
  uploaded_at REAL NOT NULL, PRIMARY KEY (sha256, inverted));
"""
_SCHEMA_STATEMENTS = [x.strip() for x in _SCHEMA.split(";") if x.strip()]
# (plus the indexes of versions before 3, which a half-created older record may hold)
_SCHEMA_NAMES = frozenset(re.findall(r"IF NOT EXISTS (\w+)", _SCHEMA)) | {
    "transitions_task", "attempts_task"}
# Schema version N-1 -> N, each run in one transaction with the new user_version.
_MIGRATIONS = {
    1: ["ALTER TABLE tasks ADD COLUMN axes_json TEXT",
        "ALTER TABLE tasks ADD COLUMN input_name TEXT",
        "ALTER TABLE tasks ADD COLUMN prompt_name TEXT"],
    # Every insert into the two logs paid for an index on a 64-character key that nothing
    # reads by key (the report groups whole tables): ~25 us of the loop's CPU per task.
    2: ["DROP INDEX IF EXISTS transitions_task",
        "DROP INDEX IF EXISTS attempts_task"],
    # Every run stored its whole plan (~200 bytes per task: 20 MB per run and per resume
    # at 100,000 tasks). Runs of an older record keep theirs; from now on a plan is stored
    # by the first run that has it, later runs with the same plan only its hash.
    3: ["ALTER TABLE runs ADD COLUMN plan_sha256 TEXT"],
}


@dataclass(frozen=True)
class TaskRow:
    """What the record knows about one task."""

    task_key: str
    state: str
    generation: int
    task_uuid: str
    cost: Decimal | None


@dataclass(frozen=True)
class ResultRow:
    """One recorded result item of a task."""

    task_key: str
    idx: int
    task_uuid: str
    image_uuid: str | None
    seed: str | None
    cost: Decimal | None
    url: str | None
    nsfw: bool | None
    output_path: str | None
    sha256: str | None


HELPER_EXIT_WAIT_S = 30.0  # how long a new run waits for a killed runner's helpers to exit


def _lock(lock_path: Path) -> int:
    """Take the folder's lock (flock). The runner's helper processes share it (they inherit
    the descriptor), so after a runner is killed its folder stays locked until they have
    finished the batch they hold and exited: a resume never races a commit or a file of
    the run it resumes. A lock held although the recorded runner is gone is theirs: wait
    for it (at most HELPER_EXIT_WAIT_S) instead of refusing."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        waited_until = time.monotonic() + HELPER_EXIT_WAIT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                if not _gone(pid):
                    raise RecordError(
                        f"the run folder {lock_path.parent.parent} is in use by another "
                        f"specrunner process (pid {pid}); wait for it to finish or choose "
                        "another --out") from None
                if time.monotonic() >= waited_until:
                    raise RecordError(
                        f"the run folder {lock_path.parent.parent} is still locked by the "
                        f"helper processes of a specrunner run that has stopped (pid {pid}) "
                        f"after {HELPER_EXIT_WAIT_S:.0f} s; retry shortly") from None
                time.sleep(0.01)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _gone(pid: str) -> bool:
    """Whether the process that wrote `pid` into the lock file no longer exists."""
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # it exists (EPERM: another user's), or no real PID
        pass
    return False


class Store:
    """An open, locked run record. Use `open_store()`; close with `close()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int) -> None:
        self.conn = conn
        self.path = path
        self.lock_fd = lock_fd  # helper processes inherit it: see _lock

    # -- writing ----------------------------------------------------------------------------
    def apply(self, ops: Iterable[Op]) -> None:
        """Apply `ops` in one durable transaction."""
        _transaction(self.conn, ops)

    def begin_run(self, meta: dict[str, Any]) -> int:
        """Record the start of a run (spec, hashes, git state, plan); return its run_id.

        The plan (`plan_json`) is recorded with its sha256; when an earlier run of this
        record already holds the same plan, only the hash is stored (`run_plan` reads it).
        """
        meta = dict(meta)
        plan = meta.get("plan_json")
        if plan is not None:
            digest = hashlib.sha256(plan.encode()).hexdigest()
            meta["plan_sha256"] = digest
            if self.conn.execute("SELECT 1 FROM runs WHERE plan_sha256=? AND plan_json IS NOT "
                                 "NULL LIMIT 1", (digest,)).fetchone():
                meta["plan_json"] = None
        cols = ["started_at"] + sorted(meta)
        vals = [time.time()] + [meta[k] for k in sorted(meta)]
        cur = self.conn.execute(
            f"INSERT INTO runs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})", vals
        )
        return int(cur.lastrowid or 0)

    def run_plan(self, run_id: int) -> str | None:
        """The plan JSON a run recorded (stored by it, or by an earlier run with the same
        plan); None if the run recorded none."""
        row = self.conn.execute(
            "SELECT coalesce(r.plan_json, (SELECT p.plan_json FROM runs p WHERE "
            "p.plan_sha256 = r.plan_sha256 AND p.plan_json IS NOT NULL LIMIT 1)) "
            "FROM runs r WHERE r.run_id=?", (run_id,)).fetchone()
        return None if row is None else row[0]

    def end_run(self, run_id: int, status: str, exit_code: int, spent: Decimal) -> None:
        """Record how a run ended."""
        self.apply([("UPDATE runs SET ended_at=?, status=?, exit_code=?, spent_usd=? "
                     "WHERE run_id=?", (time.time(), status, exit_code, str(spent), run_id))])

    def plan_tasks(self, run_id: int, tasks: Sequence[Any]) -> None:
        """Insert planned tasks the record does not know yet (by task_key); keep the rest.

        Known tasks follow the plan's placement and naming (output name template, axes of a
        record made before schema 2): only the rows that differ are updated. One transaction,
        one executemany per statement (`python bench/bench_plan.py`, 100,000 tasks: 3.6 ->
        2.8 s into a new record, 2.4 -> 0.9 s again on every resume).
        """
        now = time.time()
        known = {r[0]: r[1:] for r in self.conn.execute(
            "SELECT task_key, idx, variant_id, outputs_json, axes_json, input_name, "
            "prompt_name FROM tasks")}
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        for t in tasks:
            outputs = json.dumps(t.output_paths())
            axes = json.dumps(dict(t.axes))  # the combination, in the plan's axis order
            placed = (t.index, t.variant_id, outputs, axes, t.input_name, t.prompt_name)
            have = known.get(t.task_key)
            if have is None:
                inserts.append((t.task_key, t.index, t.variant_id, "planned", 0, t.task_uuid,
                                str(t.est_cost), json.dumps(dict(t.request), sort_keys=True),
                                outputs, run_id, now, axes, t.input_name, t.prompt_name))
            elif have != placed:
                updates.append((*placed, t.task_key))
            known[t.task_key] = placed
        with _immediate(self.conn) as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO tasks (task_key, idx, variant_id, state, generation, "
                "task_uuid, est_cost, request_json, outputs_json, run_id, updated_at, "
                "axes_json, input_name, prompt_name) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                inserts)
            conn.executemany(_NEW_UUID_SQL, ((t.task_uuid, t.task_key, 0, run_id, now)
                                             for t in tasks))
            conn.executemany("UPDATE tasks SET idx=?, variant_id=?, outputs_json=?, "
                             "axes_json=?, input_name=?, prompt_name=? WHERE task_key=?",
                             updates)

    # -- reading ----------------------------------------------------------------------------
    def task_rows(self) -> dict[str, TaskRow]:
        """Every task the record knows, by task_key."""
        rows = self.conn.execute(
            "SELECT task_key, state, generation, task_uuid, cost FROM tasks")
        return {r[0]: TaskRow(r[0], r[1], r[2], r[3], Decimal(r[4]) if r[4] else None)
                for r in rows}

    def results(self, task_key: str | None = None) -> list[ResultRow]:
        """Recorded result items, optionally of one task, in (task_key, idx) order."""
        sql = ("SELECT task_key, idx, task_uuid, image_uuid, seed, cost, url, nsfw, output_path, "
               "sha256 FROM results")
        args: tuple[Any, ...] = ()
        if task_key is not None:
            sql += " WHERE task_key=?"
            args = (task_key,)
        out = []
        for r in self.conn.execute(sql + " ORDER BY task_key, idx", args):
            out.append(ResultRow(r[0], r[1], r[2], r[3], r[4], Decimal(r[5]) if r[5] else None,
                                 r[6], None if r[7] is None else bool(r[7]), r[8], r[9]))
        return out

    def uploads(self) -> dict[tuple[str, bool], tuple[str, float]]:
        """Recorded uploads: (content sha256, inverted) -> (imageUUID, uploaded at). Whether
        one is still inside Runware's retention is for the caller to tell, when it uses it."""
        return {(r[0], bool(r[1])): (r[2], r[3]) for r in self.conn.execute(
            "SELECT sha256, inverted, image_uuid, uploaded_at FROM uploads")}

    def close(self) -> None:
        """Close the database and release the folder lock."""
        try:
            self.conn.close()
        finally:
            os.close(self.lock_fd)


# -- op builders (pure: they return SQL to be group-committed by Writer) -----------------------
def op_state(task_key: str, run_id: int, old: str | None, new: str, *, detail: str | None = None,
             now: float, **cols: Any) -> list[Op]:
    """Move a task to `new` (with extra column updates) and log the transition."""
    assert new in STATES, new
    sql = _update_sql(tuple(cols))
    return [(sql, (new, now, run_id, *cols.values(), task_key)),
            (_TRANSITION_SQL, (task_key, run_id, old, new, now, detail))]


@functools.lru_cache(maxsize=64)
def _update_sql(cols: tuple[str, ...]) -> str:
    """The task UPDATE for these extra columns: one string object per column set, so a
    batch sent to the record helper carries each text once (marshal refers back to it)."""
    sets = "".join(f", {k}=?" for k in cols)
    return f"UPDATE tasks SET state=?, updated_at=?, run_id=?{sets} WHERE task_key=?"


_TRANSITION_SQL = ("INSERT INTO transitions (task_key, run_id, from_state, to_state, at, detail) "
                   "VALUES (?,?,?,?,?,?)")
_NEW_UUID_SQL = "INSERT OR IGNORE INTO task_uuids VALUES (?,?,?,?,?)"
_ATTEMPT_SQL = ("INSERT INTO attempts (task_key, run_id, task_uuid, kind, started_at, ended_at, "
                "http_status, outcome, error_code, error_message) VALUES (?,?,?,?,?,?,?,?,?,?)")
# Pure appends that no other statement reads or updates: Writer runs each kind of them with
# one executemany at the end of its transaction (same transaction, same order among them).
APPEND_ONLY = frozenset({_TRANSITION_SQL, _NEW_UUID_SQL, _ATTEMPT_SQL})


def op_new_uuid(task_key: str, run_id: int, task_uuid: str, generation: int, now: float) -> Op:
    """Remember a fresh UUID minted for a task (before it is sent)."""
    return (_NEW_UUID_SQL, (task_uuid, task_key, generation, run_id, now))


def op_attempt(task_key: str, run_id: int, task_uuid: str, kind: str, started: float,
               ended: float, http_status: int | None, outcome: str, code: str | None = None,
               message: str | None = None) -> Op:
    """Log one request made for a task (send, poll, fetch, download)."""
    return (_ATTEMPT_SQL, (task_key, run_id, task_uuid, kind, started, ended, http_status, outcome, code,
             (message or "")[:500] or None))


def op_result(task_key: str, idx: int, item: dict[str, Any], now: float) -> Op:
    """Record one result item exactly as the server returned it (seed kept exact as TEXT)."""
    seed = item.get("seed")
    cost = item.get("cost")
    nsfw = item.get("NSFWContent")
    return ("INSERT OR REPLACE INTO results (task_key, idx, task_uuid, image_uuid, seed, cost, "
            "url, nsfw, received_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (task_key, idx, item.get("taskUUID"), item.get("imageUUID"),
             None if seed is None else str(seed),
             None if cost is None else str(Decimal(str(cost))),
             item.get("imageURL"), None if nsfw is None else int(bool(nsfw)), now))


def op_output(task_key: str, idx: int, path: str, sha256: str, size: int) -> Op:
    """Record where a result's bytes were written."""
    return ("UPDATE results SET output_path=?, sha256=?, bytes=? WHERE task_key=? AND idx=?",
            (path, sha256, size, task_key, idx))


def op_upload(sha256: str, inverted: bool, image_uuid: str, now: float) -> Op:
    """Remember an uploaded input (for reuse within the retention window)."""
    return ("INSERT OR REPLACE INTO uploads VALUES (?,?,?,?)",
            (sha256, int(inverted), image_uuid, now))


def open_store(out_dir: Path) -> Store:
    """Open (creating if needed) and lock the run record of `out_dir`.

    Raises RecordError if another process holds the folder, or if an existing record is
    not a specrunner record of this schema version (it is left untouched).
    """
    rec = Path(out_dir) / RECORD_DIR
    rec.mkdir(parents=True, exist_ok=True)
    fd = _lock(rec / LOCK_NAME)
    db = rec / DB_NAME
    try:
        if db.exists() and db.stat().st_size > 0:
            with open(db, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    raise RecordError(f"the run record {db} is damaged (not an SQLite database); "
                                      "it was left untouched: move it away or use another --out")
        try:
            conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            # Read-only checks first: switching to WAL would already rewrite a foreign file.
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            ver = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise RecordError(f"the run record {db} is damaged ({exc}); it was left untouched: "
                              "move it away or use another --out") from None
        half = [] if tables == 0 and app == 0 else _half_created(conn, app, ver)
        older = half is None and app == APP_ID and 1 <= ver < SCHEMA_VERSION
        if half is None and not older and (app != APP_ID or ver != SCHEMA_VERSION):
            conn.close()
            newer = " (made by a newer specrunner?)" if app == APP_ID and ver > SCHEMA_VERSION \
                else ""
            raise RecordError(f"the run record {db} is not a specrunner record of schema version "
                              f"{SCHEMA_VERSION} (found application_id={app}, version={ver})"
                              f"{newer}; it was left untouched: move it away or use another "
                              "--out")
        conn.execute("PRAGMA journal_mode=WAL")  # only now: a foreign file stays untouched
        conn.execute("PRAGMA synchronous=FULL")
        if half is not None:
            # One transaction: a kill at any moment leaves either no record or a whole one.
            # (A half-made record of an older version holds nothing: start it over.)
            _transaction(conn, _statements([f'DROP TABLE "{t}"' for t in half]
                                           + _SCHEMA_STATEMENTS
                                           + [f"PRAGMA application_id={APP_ID}",
                                              f"PRAGMA user_version={SCHEMA_VERSION}"]))
        elif older:
            for v in range(ver, SCHEMA_VERSION):
                _transaction(conn, _statements(_MIGRATIONS[v]
                                               + [f"PRAGMA user_version={v + 1}"]))
    except BaseException:
        os.close(fd)
        raise
    return Store(conn, db, fd)


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One durable write transaction: BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _transaction(conn: sqlite3.Connection, ops: Iterable[Op]) -> None:
    with _immediate(conn):
        for sql, params in ops:
            conn.execute(sql, params)


def _statements(sqls: Sequence[str]) -> list[Op]:
    return [(sql, ()) for sql in sqls]


def _half_created(conn: sqlite3.Connection, app: int, ver: int) -> list[str] | None:
    """The tables of a record whose creation an older specrunner (one statement at a time)
    did not finish: version 0, no id or ours, only tables and indexes of our schema, all of
    them empty. None if it is anything else."""
    if ver != 0 or app not in (0, APP_ID):
        return None
    names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")
             if not r[0].startswith("sqlite_")]  # SQLite's own indexes of primary keys
    if not names or not set(names) <= _SCHEMA_NAMES:
        return None
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    if any(conn.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone() for t in tables):
        return None
    return tables

