"""The run record: one SQLite database per output folder, and the only module that speaks SQL.

    <out>/.specrunner/run.db    WAL, synchronous=FULL (a commit survives a crash and power loss)
    <out>/.specrunner/lock      flock held by the one process writing the folder; holds its PID

Writing: `open_record(out)` locks the folder and returns a `Record`; a run gets a `RunLog`
(`record.run_log(...)`) whose typed events (sending, accepted, results, done, ended,
attempt, upload) are group-committed by one worker thread: the changes of every task that
reached the same point are one transaction, one fsync. Output files are placed in that thread
too, before the commit that marks their task done: temporary name beside the target, write,
fsync, rename, fsync of the folder. So a crash never leaves a partial file under a final name,
and a task is never "done" without its files.

The durability contract (docs/DESIGN.md): a task's UUID is durable before it is sent (with the
plan for generation 0, with `sending` for a fresh one); whatever the server returned is
durable before the task is done; the record is never rewritten by a specrunner that does not
know its schema (older schemas 1-4 are migrated in place, newer or foreign files refused
untouched).

Reading: `read_snapshot(out)` opens the record read-only (no lock: a run may be writing it)
and returns a `Snapshot`, one consistent view that report, plan status, diff, dry-run, merge
and review read instead of SQL of their own.

Task states: planned -> sending -> accepted -> received -> done, or failed / in_doubt.
sending, accepted, received and in_doubt are "in doubt": the next run asks the server about
the UUID (getResponse, getTaskDetails) before it sends anything again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter, itemgetter, methodcaller
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio

from specrunner.errors import RecordError

if TYPE_CHECKING:
    from specrunner.plan.task import Task

SCHEMA_VERSION = 5
APP_ID = 0x53505243  # "SPRC": marks a specrunner record in PRAGMA application_id
RECORD_DIR = ".specrunner"
DB_NAME = "run.db"
LOCK_NAME = "lock"
UPLOAD_TTL_S = 29 * 24 * 3600  # Runware deletes uploads 30 days after last use; keep a margin

FINAL_STATES = frozenset({"done", "failed"})
IN_DOUBT_STATES = frozenset({"sending", "accepted", "received", "in_doubt"})
STATES = frozenset({"planned"}) | FINAL_STATES | IN_DOUBT_STATES

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id INTEGER PRIMARY KEY, started_at REAL NOT NULL, ended_at REAL, status TEXT,
  exit_code INTEGER, spec_path TEXT, spec_text TEXT, spec_sha256 TEXT, git_commit TEXT,
  git_dirty INTEGER, plan_json TEXT, versions_json TEXT, max_usd TEXT, spent_usd TEXT,
  plan_sha256 TEXT, shard TEXT, lock_sha256 TEXT, provenance_json TEXT, price_json TEXT);
CREATE TABLE IF NOT EXISTS tasks (
  task_key TEXT PRIMARY KEY, idx INTEGER NOT NULL, variant_id TEXT NOT NULL,
  state TEXT NOT NULL, generation INTEGER NOT NULL DEFAULT 0, task_uuid TEXT NOT NULL,
  est_cost TEXT NOT NULL, cost TEXT, attempts INTEGER NOT NULL DEFAULT 0,
  error_code TEXT, error_message TEXT, request_json TEXT NOT NULL, outputs_json TEXT NOT NULL,
  run_id INTEGER, updated_at REAL NOT NULL, axes_json TEXT, input_name TEXT, prompt_name TEXT,
  inputs_json TEXT);
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
  received_at REAL NOT NULL, provider_prompt TEXT, PRIMARY KEY (task_key, idx));
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
    # Nothing reads the two logs by task key: an index on it only slowed every insert.
    2: ["DROP INDEX IF EXISTS transitions_task",
        "DROP INDEX IF EXISTS attempts_task"],
    # A plan is stored by the first run that has it; later runs keep only its hash.
    3: ["ALTER TABLE runs ADD COLUMN plan_sha256 TEXT"],
    # Reports read a task's inputs from the record instead of planning the spec again;
    # runs record their shard, lock and provenance; results the prompt the provider used.
    4: ["ALTER TABLE tasks ADD COLUMN inputs_json TEXT",
        "ALTER TABLE runs ADD COLUMN shard TEXT",
        "ALTER TABLE runs ADD COLUMN lock_sha256 TEXT",
        "ALTER TABLE runs ADD COLUMN provenance_json TEXT",
        "ALTER TABLE runs ADD COLUMN price_json TEXT",
        "ALTER TABLE results ADD COLUMN provider_prompt TEXT"],
}


def record_dir(out_dir: Path) -> Path:
    """The folder holding a run folder's record and lock."""
    return Path(out_dir) / RECORD_DIR


def record_path(out_dir: Path) -> Path:
    """The record database of a run folder."""
    return record_dir(out_dir) / DB_NAME


def _dec(text: str | None) -> Decimal | None:
    return Decimal(text) if text else None


class _Decimals(dict[str, Decimal]):
    """Decimal(text), made once per distinct text: a record's 50,000 costs are a few values.
    (Decimals are immutable, so tasks may share one.)"""

    def __missing__(self, text: str) -> Decimal:
        value = self[text] = Decimal(text)
        return value

    def __call__(self, text: str) -> Decimal:
        return self[text]

    def maybe(self, text: str | None) -> Decimal | None:
        """`_dec(text)`: None for no text."""
        return self[text] if text else None


# -- values ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunMeta:
    """What a run records when it starts."""

    spec_path: str
    spec_text: str
    spec_sha256: str
    # [{"task_key": ...}, ...] of the plan (older runs' also hold each "variant_id",
    # "task_uuid" and "est_cost"); readers use the task keys
    plan_json: str
    max_usd: Decimal
    versions: Mapping[str, str] = field(default_factory=dict)
    git_commit: str | None = None
    git_dirty: bool | None = None
    lock_sha256: str | None = None
    provenance: Mapping[str, Any] | None = None  # provenance.Provenance.to_json()
    shard: str | None = None


@dataclass(frozen=True)
class Result:
    """One result item the server returned for a task, and where its bytes went."""

    task_key: str
    index: int
    task_uuid: str
    image_uuid: str | None
    seed: str | None  # kept as text: seeds can exceed 2^53
    cost: Decimal | None
    url: str | None
    nsfw: bool | None
    output_path: str | None
    sha256: str | None
    bytes: int | None
    provider_prompt: str | None = None

    def item(self) -> dict[str, Any]:
        """The result item as the server sent it (what a resume finishes from)."""
        return {"taskUUID": self.task_uuid, "imageUUID": self.image_uuid,
                "imageURL": self.url, "seed": self.seed,
                "cost": None if self.cost is None else str(self.cost),
                "NSFWContent": self.nsfw}


@dataclass(frozen=True)
class TaskState:
    """Where a task stands in the record (what a run starts from)."""

    state: str
    generation: int
    task_uuid: str
    cost: Decimal | None
    est_cost: Decimal
    error_code: str | None = None
    results: tuple[Result, ...] = ()


@dataclass(frozen=True)
class Standing:
    """Where a record's tasks stand as a run starts (`Record.standing`)."""

    done: tuple[tuple[Decimal | None, Decimal, int], ...]  # (cost, estimate, how many) of the
    # done tasks, one entry per distinct pair as recorded
    open: dict[str, TaskState]  # the tasks not done, by key, in record order (with results)


@dataclass(frozen=True)
class TaskRow:
    """One task as the record holds it (the read side)."""

    task_key: str
    index: int
    variant_id: str
    state: str
    generation: int
    task_uuid: str
    est_cost: Decimal
    cost: Decimal | None
    error_code: str | None
    error_message: str | None
    request_json: str
    outputs: tuple[str, ...]
    run_id: int | None
    updated_at: float
    axes: Mapping[str, Any] | None  # None for tasks recorded before schema 2
    input_name: str | None
    prompt_name: str | None
    inputs: Mapping[str, Mapping[str, Any]] | None  # None before schema 5



@dataclass(frozen=True)
class RunRow:
    """One run (an invocation of `specrunner run`) as the record holds it."""

    run_id: int
    started_at: float
    ended_at: float | None
    status: str | None
    exit_code: int | None
    spec_path: str | None
    spec_sha256: str | None
    git_commit: str | None
    git_dirty: bool | None
    provenance: Mapping[str, Any] | None  # what the tree held: changed files, lock, tool
    max_usd: Decimal | None
    spent_usd: Decimal | None
    plan_sha256: str | None
    shard: str | None
    lock_sha256: str | None
    versions: Mapping[str, str]
    price: Mapping[str, str] | None
    last_seen: float | None  # the last transition of a run that never ended (else None)


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of a run record (see `read_snapshot`)."""

    path: Path
    runs: tuple[RunRow, ...]
    tasks: tuple[TaskRow, ...]  # in plan order (idx, then variant id)
    results: Mapping[str, tuple[Result, ...]]  # by task key, in index order
    sends: Mapping[str, int]  # imageInference requests per task key
    first_send: Mapping[str, float]  # when each task's first request left
    done_at: Mapping[str, float]
    request_latencies: tuple[float, ...]  # every request's seconds, in start order
    new_uuids: int  # UUIDs minted after a provider failure (generation > 0; all: read_uuids)
    uploads: int
    plans: Mapping[str, tuple[str, ...]]  # plan sha256 -> its task keys, in order
    spec_text: str | None  # the spec file as the last run read it

    def request(self, row: TaskRow) -> dict[str, Any]:
        """The planned request of a task (local inputs as `local:<sha256>` placeholders);
        RecordError if the record holds none that is readable."""
        value = _json_fast(row.request_json)  # (a report reads every task's)
        if not isinstance(value, dict):
            raise _damaged(self.path, f"task {row.task_key} has no readable request")
        return value

    def plan_keys(self, run: RunRow | None = None) -> tuple[str, ...] | None:
        """The task keys of `run`'s plan (default: the last run's); None if not recorded."""
        run = run or (self.runs[-1] if self.runs else None)
        if run is None or run.plan_sha256 is None:
            return None
        return self.plans.get(run.plan_sha256)


# -- the lock ----------------------------------------------------------------------------------
def _try_lock(fd: int) -> bool:
    """Take an exclusive lock on `fd` without waiting; False when another process holds it."""
    if sys.platform == "win32":  # no fcntl there
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _lock(lock_path: Path) -> int:
    """Lock the run folder for this process (released when the process ends, even killed)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            raise RecordError(f"the run folder {lock_path.parent.parent} is in use by another "
                              f"specrunner process (pid {pid}); wait for it to finish or choose "
                              "another --out")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- opening -----------------------------------------------------------------------------------
def open_record(out_dir: Path) -> Record:
    """Open (creating if needed) and lock the run record of `out_dir`.

    Raises RecordError if the folder is locked by another process, if `out_dir` is not a
    folder, or if an existing record is damaged or not a specrunner record of a known schema
    (it is left untouched).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RecordError(f"the output folder {out_dir} is a file, not a folder: choose "
                          "another --out")
    rec = record_dir(out_dir)
    try:
        rec.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RecordError(f"cannot make the run folder {rec}: a file is in the way") from None
    fd = _lock(rec / LOCK_NAME)
    try:
        conn = _connect_rw(rec / DB_NAME)
    except BaseException:
        os.close(fd)
        raise
    return Record(conn, rec / DB_NAME, fd, out_dir)


def _damaged(db: Path, why: object) -> RecordError:
    return RecordError(f"the run record {db} is damaged ({why}); it was left untouched: move it "
                       "away or use another --out")


def _connect_rw(db: Path) -> sqlite3.Connection:
    if db.exists() and db.stat().st_size > 0:
        with open(db, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                raise _damaged(db, "not an SQLite database")
    try:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        # Read-only checks first: switching to WAL would already rewrite a foreign file.
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        ver = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise _damaged(db, exc) from None
    half = [] if tables == 0 and app == 0 else _half_created(conn, app, ver)
    older = half is None and app == APP_ID and 1 <= ver < SCHEMA_VERSION
    if half is None and not older and (app != APP_ID or ver != SCHEMA_VERSION):
        conn.close()
        newer = " (made by a newer specrunner?)" if app == APP_ID and ver > SCHEMA_VERSION else ""
        raise RecordError(f"the run record {db} is not a specrunner record of schema version "
                          f"{SCHEMA_VERSION} (found application_id={app}, version={ver}){newer}; "
                          "it was left untouched: move it away or use another --out")
    try:
        conn.execute("PRAGMA journal_mode=WAL")  # only now: a foreign file stays untouched
        conn.execute("PRAGMA synchronous=FULL")
        if half is not None:
            # One transaction: a kill at any moment leaves either no record or a whole one.
            _transaction(conn, [(f'DROP TABLE "{t}"', ()) for t in half]
                         + [(s, ()) for s in _SCHEMA_STATEMENTS]
                         + [(f"PRAGMA application_id={APP_ID}", ()),
                            (f"PRAGMA user_version={SCHEMA_VERSION}", ())])
        elif older:
            for v in range(ver, SCHEMA_VERSION):
                _transaction(conn, [(s, ()) for s in _MIGRATIONS[v]]
                             + [(f"PRAGMA user_version={v + 1}", ())])
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _damaged(db, exc) from None
    return conn


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


Op = tuple[str, Sequence[Any]]


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


# -- the write side ----------------------------------------------------------------------------
_NEW_UUID = "INSERT OR IGNORE INTO task_uuids VALUES (?,?,?,?,?)"
_TRANSITION = ("INSERT INTO transitions (task_key, run_id, from_state, to_state, at, detail) "
               "VALUES (?,?,?,?,?,?)")
_ATTEMPT = ("INSERT INTO attempts (task_key, run_id, task_uuid, kind, started_at, ended_at, "
            "http_status, outcome, error_code, error_message) VALUES (?,?,?,?,?,?,?,?,?,?)")
_RESULT = ("INSERT OR REPLACE INTO results (task_key, idx, task_uuid, image_uuid, seed, cost, "
           "url, nsfw, received_at, provider_prompt) VALUES (?,?,?,?,?,?,?,?,?,?)")
_OUTPUT = "UPDATE results SET output_path=?, sha256=?, bytes=? WHERE task_key=? AND idx=?"
_UPLOAD = "INSERT OR REPLACE INTO uploads VALUES (?,?,?,?)"


_PLACEMENT = "placement"  # meta key: "<placement digest> <run id that checked it>"
_MARK = "INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)"
_FIELD, _COLUMN = "\x1f", "\x1e"  # separators of the placement digest's text


def _placement_digest(tasks: Sequence[Task]) -> str:
    """sha256 over every task's key and what `Record.plan` writes of its placement (index,
    variant id, output names, axes, input and prompt names, inputs), in plan order.

    Column by column, each made and joined in C (a 50,000-task plan in ~40 ms, where a JSON
    array per task took 130): text columns joined with separators none of their values holds
    (checked; JSON otherwise), numbers joined, the axes as their key sets (numbered) and
    values, the inputs (shared by many tasks) numbered and listed once."""
    h = hashlib.sha256(b"specrunner.placement.v1\0")

    def column(values: list[Any]) -> None:
        try:
            joined = _FIELD.join(values)  # TypeError unless every value is text
        except TypeError:
            joined = None
        if joined is not None and joined.count(_FIELD) == len(values) - 1 \
                and _COLUMN not in joined:
            h.update(b"s" + joined.encode("utf-8", "surrogatepass") + b"\x1e")
        else:
            h.update(b"j" + json.dumps(values).encode() + b"\x1e")

    for name in ("task_key", "variant_id", "output_stem", "output_ext", "input_name",
                 "prompt_name"):
        column(list(map(attrgetter(name), tasks)))
    for name in ("index", "number_results"):
        column(list(map(str, map(attrgetter(name), tasks))))  # (ints: str() tells them apart)
    # (Key sets and input pairs are numbered as they are made: 50,000 tuples alive at once
    # would outlive young collections and bring on a full one, 50 ms of a resume.)
    axes = list(map(attrgetter("axes"), tasks))
    key_sets: dict[tuple[str, ...], str] = {}
    numbers = [key_sets.setdefault(tuple(a), str(len(key_sets))) for a in axes]
    h.update(json.dumps(list(key_sets)).encode() + b"\x1e")
    column(numbers)
    column(list(itertools.chain.from_iterable(map(methodcaller("values"), axes))))
    # inputs: a task's are its request's "inputs" and its local inputs (for a planned task,
    # its shared request shape's), numbered by those objects
    try:
        holders: list[Any] = list(map(attrgetter("request.shape"), tasks))
    except AttributeError:  # requests of other kinds
        holders = [t.request.get("inputs") for t in tasks]
    pairs: dict[tuple[int, int], str] = {}
    refs = [pairs.setdefault((id(held), id(local)), str(len(pairs)))
            for held, local in zip(holders, map(attrgetter("local_inputs"), tasks), strict=True)]
    # a task of each pair (any: they share their inputs)
    first = dict(zip(refs, tasks, strict=True))
    h.update(json.dumps([_inputs_of(t) for t in first.values()]).encode() + b"\x1e")
    column(refs)
    return h.hexdigest()


def _inputs_of(task: Task) -> str:
    """The task's seed, mask and other image inputs as the report shows them (JSON)."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in (task.request.get("inputs") or {}).items():
        local = task.local_inputs.get(name)
        if local is not None:
            out[name] = {"kind": "file", "value": str(local.path), "sha256": local.sha256,
                         "inverted": local.invert}
        elif isinstance(value, str):
            out[name] = {"kind": "url" if "://" in value else "uuid", "value": value}
    for name, local in task.local_inputs.items():
        if name not in out:
            out[name] = {"kind": "file", "value": str(local.path), "sha256": local.sha256,
                         "inverted": local.invert}
    return json.dumps(out, sort_keys=True)


class Record:
    """An open, locked run record (`open_record`). Close it with `close()`."""

    def __init__(self, conn: sqlite3.Connection, path: Path, lock_fd: int,
                 out_dir: Path) -> None:
        self._conn = conn
        self.path = path
        self.out_dir = out_dir
        self._lock_fd = lock_fd
        self._placed: str | None = None  # the placement digest `plan` checked or wrote

    def close(self) -> None:
        """Close the database and release the folder lock."""
        try:
            self._conn.close()
        finally:
            os.close(self._lock_fd)

    def __enter__(self) -> Record:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- a run's beginning and end ---------------------------------------------------------
    def begin_run(self, meta: RunMeta) -> int:
        """Record the start of a run; return its run_id. A plan already stored by an earlier
        run of this record is kept once: the new run records only its sha256."""
        digest = hashlib.sha256(meta.plan_json.encode()).hexdigest()
        have = self._conn.execute("SELECT 1 FROM runs WHERE plan_sha256=? AND plan_json IS NOT "
                                  "NULL LIMIT 1", (digest,)).fetchone()
        cur = self._conn.execute(
            "INSERT INTO runs (started_at, status, spec_path, spec_text, spec_sha256, "
            "git_commit, git_dirty, provenance_json, plan_json, plan_sha256, versions_json, "
            "max_usd, shard, lock_sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (time.time(), "running", meta.spec_path, meta.spec_text, meta.spec_sha256,
             meta.git_commit, None if meta.git_dirty is None else int(meta.git_dirty),
             None if meta.provenance is None else json.dumps(dict(meta.provenance),
                                                             sort_keys=True),
             None if have else meta.plan_json, digest, json.dumps(dict(meta.versions)),
             str(meta.max_usd), meta.shard, meta.lock_sha256))
        return int(cur.lastrowid or 0)

    def end_run(self, run_id: int, status: str, exit_code: int, spent: Decimal,
                price: Mapping[str, str] | None = None) -> None:
        """Record how a run ended (and the price it learned, if any)."""
        ops: list[Op] = [(
            "UPDATE runs SET ended_at=?, status=?, exit_code=?, spent_usd=?, price_json=? "
            "WHERE run_id=?", (time.time(), status, exit_code, str(spent),
                               None if price is None else json.dumps(dict(price)), run_id))]
        if self._placed is not None:  # this run's plan is what the rows say (see `plan`)
            ops.append((_MARK, (_PLACEMENT, f"{self._placed} {run_id}")))
        _transaction(self._conn, ops)

    def shards(self) -> set[str | None]:
        """The shards (e.g. "2/3"; None: the whole plan) earlier runs of this folder ran."""
        return {r[0] for r in self._conn.execute("SELECT DISTINCT shard FROM runs")}

    # -- the plan ---------------------------------------------------------------------------
    def plan(self, run_id: int, tasks: Sequence[Task]) -> None:
        """Insert the planned tasks the record does not know yet (by task key); keep the rest.

        Known tasks follow the plan's placement and naming (index, variant id, output names,
        axes, inputs): only rows that differ are written, so planning the same tasks again
        writes nothing. Generation 0 UUIDs are durable from here on.

        The record keeps a digest of the keys and placement of the last run that ended (in
        `meta`, with that run's id, written by `end_run`). When it equals this plan's and no
        other run came in between (a crashed one, another specrunner, a merge), the rows
        already say all this: none are read.
        """
        digest = _placement_digest(tasks)
        self._placed = digest
        mark = self._conn.execute("SELECT value FROM meta WHERE key=?", (_PLACEMENT,)).fetchone()
        previous = self._conn.execute("SELECT max(run_id) FROM runs WHERE run_id < ?",
                                      (run_id,)).fetchone()[0]
        if mark is not None and mark[0] == f"{digest} {previous}":
            return
        now = time.time()
        placed: dict[str, tuple[Task, tuple[Any, ...]]] = {}
        inputs_json: dict[tuple[int, int], str] = {}
        for t in tasks:
            shared = (id(t.request.get("inputs")), id(t.local_inputs))
            ins = inputs_json.get(shared)
            if ins is None:
                ins = inputs_json[shared] = _inputs_of(t)
            placed[t.task_key] = (t, (t.index, t.variant_id, json.dumps(t.output_paths()),
                                      json.dumps(dict(t.axes)), t.input_name, t.prompt_name,
                                      ins))
        # The record's rows one at a time (not all of them at once: 35 MB at 50,000 tasks).
        known: set[str] = set()
        updates: list[tuple[Any, ...]] = []
        for row in self._conn.execute("SELECT task_key, idx, variant_id, outputs_json, "
                                      "axes_json, input_name, prompt_name, inputs_json "
                                      "FROM tasks"):
            got = placed.get(row[0])
            if got is not None:
                t, placement = got
                known.add(t.task_key)
                if row[1:] != placement:
                    updates.append((*placement, t.task_key))
        inserts: list[tuple[Any, ...]] = []
        uuids: list[tuple[Any, ...]] = []
        for t, placement in placed.values():
            if t.task_key not in known:
                uuid = t.task_uuid
                inserts.append((t.task_key, t.index, t.variant_id, "planned", 0, uuid,
                                str(t.est_cost), json.dumps(dict(t.request), sort_keys=True),
                                run_id, now, *placement[2:]))
                uuids.append((uuid, t.task_key, 0, run_id, now))
        del placed
        if not (inserts or updates):
            return
        with _immediate(self._conn) as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO tasks (task_key, idx, variant_id, state, generation, "
                "task_uuid, est_cost, request_json, run_id, updated_at, outputs_json, axes_json, "
                "input_name, prompt_name, inputs_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                inserts)
            conn.executemany(_NEW_UUID, uuids)
            conn.executemany("UPDATE tasks SET idx=?, variant_id=?, outputs_json=?, axes_json=?, "
                             "input_name=?, prompt_name=?, inputs_json=? WHERE task_key=?",
                             updates)

    # -- what a run starts from -------------------------------------------------------------
    def task_states(self) -> dict[str, TaskState]:
        """Every recorded task's state by task key, with its results when it has some that
        are not yet finished (received, failed or in doubt)."""
        return self._states("")

    def open_states(self) -> dict[str, TaskState]:
        """`task_states` of the tasks that are not done, in record order."""
        return self._states(" WHERE state != 'done'")

    def _states(self, where: str) -> dict[str, TaskState]:
        states = self._conn.execute("SELECT task_key, state, generation, task_uuid, cost, "
                                    "est_cost, error_code FROM tasks" + where).fetchall()
        if not states:
            return {}
        results: dict[str, list[Result]] = {}
        for r in self._conn.execute(_RESULTS_SQL + " WHERE task_key IN (SELECT task_key FROM "
                                    "tasks WHERE state != 'done') ORDER BY task_key, idx"):
            results.setdefault(r[0], []).append(_result(r))
        money = _Decimals()
        return {r[0]: TaskState(r[1], r[2], r[3], money.maybe(r[4]), money(r[5]), r[6],
                                tuple(results.get(r[0], ()))) for r in states}

    def standing(self) -> Standing:
        """Where every recorded task stands, as a run starts: the done tasks counted by cost
        (a few groups, summed by SQLite), the others in full (a resumed campaign of 50,000
        done tasks makes no object per task)."""
        money = _Decimals()
        done, others = [], 0
        for finished, cost, est, n in self._conn.execute(
                "SELECT state = 'done', cost, est_cost, count(*) FROM tasks "
                "GROUP BY 1, 2, 3 ORDER BY min(rowid)"):
            if finished:
                done.append((money[cost] if cost else None, money[est], n))
            else:
                others += n
        return Standing(tuple(done), self.open_states() if others else {})

    def task_costs(self) -> list[tuple[str, str, Decimal | None, Decimal]]:
        """(task key, state, cost, estimate) of every recorded task, in record order."""
        money = _Decimals()
        return [(key, state, money[cost] if cost else None, money[est])
                for key, state, cost, est in self._conn.execute(
                    "SELECT task_key, state, cost, est_cost FROM tasks")]

    def reported_prices(self) -> list[Decimal]:
        """Each distinct cost per image the server reported in this record (the price a run
        learns is their maximum; a record of 50,000 images holds a handful)."""
        return [Decimal(r[0]) for r in self._conn.execute(
            "SELECT DISTINCT cost FROM results WHERE cost IS NOT NULL")]

    def uploads(self) -> dict[tuple[str, bool], tuple[str, float]]:
        """Recorded uploads: (content sha256, inverted) -> (imageUUID, uploaded at)."""
        return {(r[0], bool(r[1])): (r[2], r[3]) for r in self._conn.execute(
            "SELECT sha256, inverted, image_uuid, uploaded_at FROM uploads")}

    def snapshot(self) -> Snapshot:
        """A consistent read of this record (the same as `read_snapshot` gives)."""
        return _snapshot(self._conn, self.path)

    def run_log(self, run_id: int, *, wall: Callable[[], float] = time.time,
                redact: Callable[[str], str] = lambda s: s) -> RunLog:
        """The event writer of run `run_id` (start `serve()` in the run's task group)."""
        return RunLog(self._conn, run_id, self.out_dir, wall, redact)


@dataclass
class _Entry:
    ops: list[Op]
    files: Sequence[tuple[str, bytes]] = ()  # (path relative to the output folder, bytes)
    done: anyio.Event | None = None  # None: queued, nobody waits
    error: OSError | None = None  # a file of this entry could not be placed


class RunLog:
    """A run's events, group-committed by one worker thread (see the module docstring).

    Awaited events return once durable; queued ones (`accepted`, `results`, `attempt`) are
    committed in the same or an earlier transaction than anything written after them, so a
    task's results are always durable before its "done". A failed commit stops the log: every
    later event raises RecordError, and whether that last commit landed is unknown, so the
    next run reconciles the tasks in doubt.
    """

    def __init__(self, conn: sqlite3.Connection, run_id: int, out_dir: Path,
                 wall: Callable[[], float], redact: Callable[[str], str]) -> None:
        self._conn, self.run_id, self.out_dir = conn, run_id, out_dir
        self.wall, self.redact = wall, redact
        self._pending: list[_Entry] = []
        self._wake = anyio.Event()
        self._closed = False
        self._stopped = anyio.Event()
        self._error: BaseException | None = None
        self._dirs_known: set[Path] = set()
        self._syncers: ThreadPoolExecutor | None = None
        self.commits = 0

    # -- the commit loop --------------------------------------------------------------------
    async def serve(self) -> None:
        """Commit what is pending, batch after batch, until `close()`."""
        try:
            while True:
                await self._wake.wait()
                self._wake = anyio.Event()
                batch, self._pending = self._pending, []
                if batch:
                    with anyio.CancelScope(shield=True):  # a batch is never left half-way
                        await self._commit(batch)
                if self._closed and not self._pending:
                    return
        finally:
            self._stopped.set()

    async def close(self) -> None:
        """Commit everything pending, then stop the loop."""
        self._closed = True
        self._wake.set()
        with anyio.CancelScope(shield=True):
            await self._stopped.wait()
        if self._syncers is not None:
            self._syncers.shutdown()
        if self._error is not None:
            raise RecordError(f"the run record could not be written: {self._error}")

    async def _commit(self, batch: list[_Entry]) -> None:
        if self._error is None:
            try:
                await anyio.to_thread.run_sync(self._apply, batch)
                self.commits += 1
            except Exception as exc:  # the waiters (and every later event) see it
                self._error = exc
        for e in batch:
            if e.done is not None:
                e.done.set()

    def _apply(self, batch: list[_Entry]) -> None:
        """In the worker thread: place the files, then commit every entry whose files are in
        place, in one transaction."""
        placing = [e for e in batch if e.files]
        if placing:
            self._place(placing)
        with _immediate(self._conn) as conn:
            for e in batch:
                if e.error is None:
                    for sql, params in e.ops:
                        conn.execute(sql, params)

    def _place(self, entries: list[_Entry]) -> None:
        """Write every temporary file of the batch, then fsync them, then rename them into
        place, then fsync each folder once. Writing all before the first fsync lets the
        filesystem flush the batch in one journal commit: per file, 4-8x less time than
        write + fsync one by one (ext4, measured in bench/README.md ## run)."""
        staged: list[tuple[_Entry, int, Path, Path]] = []  # (entry, fd, temporary, target)
        for e in entries:
            mine: list[tuple[_Entry, int, Path, Path]] = []
            try:
                for rel, data in e.files:
                    target = self.out_dir / rel
                    self._mkdirs(target.parent)
                    # One name per target, not per process: the folder's lock lets one
                    # process write here, and the write that a crash interrupted is redone
                    # over the same name by the resume (O_TRUNC), then renamed: no debris.
                    tmp = target.with_name(f".{target.name}.tmp")
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    mine.append((e, fd, tmp, target))
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
            except OSError as exc:
                e.error = exc
                _discard(mine)
                continue
            staged += mine
            if len(staged) >= _OPEN_FILES_MAX:  # stay well under the descriptor limit
                self._finish_files(staged)
                staged = []
        self._finish_files(staged)

    def _finish_files(self, staged: list[tuple[_Entry, int, Path, Path]]) -> None:
        """fsync + close each staged file, rename those of entries still ok, fsync folders.
        The fsyncs run a few at once: each waits for the disk with the GIL released, and the
        filesystem serves concurrent ones in fewer journal commits (ext4 here: 2,900 files a
        second one at a time, 5,200 eight at a time)."""
        def sync(item: tuple[_Entry, int, Path, Path]) -> None:
            e, fd, _, _ = item
            try:
                if e.error is None:
                    os.fsync(fd)
            except OSError as exc:
                e.error = exc
            finally:
                os.close(fd)

        if len(staged) > 1:
            if self._syncers is None:
                self._syncers = ThreadPoolExecutor(_SYNCERS, thread_name_prefix="fsync")
            list(self._syncers.map(sync, staged))
        else:
            for item in staged:
                sync(item)
        dirs: set[Path] = set()
        for e, _, tmp, target in staged:
            if e.error is None:
                try:
                    os.replace(tmp, target)
                    dirs.add(target.parent)
                    continue
                except OSError as exc:
                    e.error = exc
            with contextlib.suppress(OSError):
                tmp.unlink()
        for d in dirs:
            _fsync_dir(d)

    def _mkdirs(self, folder: Path) -> None:
        """mkdir -p, fsyncing the parent of each folder made (so the new name is durable)."""
        if folder in self._dirs_known:
            return
        if not folder.is_dir():
            self._mkdirs(folder.parent)
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
            _fsync_dir(folder.parent)
        self._dirs_known.add(folder)

    # -- submitting -------------------------------------------------------------------------
    def _check(self) -> None:
        if self._error is not None:
            raise RecordError(f"the run record could not be written: {self._error}")

    def _queue(self, ops: list[Op]) -> None:
        self._check()
        self._pending.append(_Entry(ops))
        self._wake.set()

    async def _write(self, ops: list[Op], files: Sequence[tuple[str, bytes]] = ()) -> None:
        self._check()
        entry = _Entry(ops, files, anyio.Event())
        self._pending.append(entry)
        self._wake.set()
        assert entry.done is not None
        try:
            await entry.done.wait()
        except BaseException:  # cancelled: the commit still happens; wait for it, then go
            with anyio.CancelScope(shield=True):
                await entry.done.wait()
            raise
        self._check()
        if entry.error is not None:
            raise entry.error

    def _state(self, key: str, old: str | None, new: str, detail: str | None = None,
               **cols: Any) -> list[Op]:
        assert new in STATES, new
        now = self.wall()
        sets = "".join(f", {k}=?" for k in cols)
        return [(f"UPDATE tasks SET state=?, updated_at=?, run_id=?{sets} WHERE task_key=?",
                 (new, now, self.run_id, *cols.values(), key)),
                (_TRANSITION, (key, self.run_id, old, new, now, detail))]

    # -- the events of a task ---------------------------------------------------------------
    def sending(self, key: str, old: str, uuid: str, generation: int, attempts: int) -> None:
        """The task's request leaves now, under a UUID already durable (the plan's, or one
        recorded by `new_uuid`). Queued: a crash in the next milliseconds may leave the task
        "planned" though its request arrived; a resume sends the same UUID, which the server
        refuses to run twice (conflictTaskUUID) and answers with the results."""
        self._queue(self._state(key, old, "sending", task_uuid=uuid, generation=generation,
                                attempts=attempts))

    async def new_uuid(self, key: str, old: str, uuid: str, generation: int) -> None:
        """The provider failed the task's UUID: it goes back to planned under a fresh one."""
        await self._write([(_NEW_UUID, (uuid, key, generation, self.run_id, self.wall())),
                           *self._state(key, old, "planned", f"generation {generation}",
                                        task_uuid=uuid, generation=generation)])

    def accepted(self, key: str, old: str, detail: str) -> None:
        """The server has the task (acknowledged, or already known): poll it next."""
        self._queue(self._state(key, old, "accepted", detail))

    def results(self, key: str, old: str, items: Sequence[Mapping[str, Any]]) -> None:
        """Every result item the server returned for the task, exactly as returned."""
        now = self.wall()
        ops: list[Op] = []
        for i, it in enumerate(items):
            seed, cost, nsfw = it.get("seed"), it.get("cost"), it.get("NSFWContent")
            prompt = it.get("positivePrompt")
            ops.append((_RESULT, (key, i, it.get("taskUUID"), it.get("imageUUID"),
                                  None if seed is None else str(seed),
                                  None if cost is None else str(Decimal(str(cost))),
                                  it.get("imageURL"), None if nsfw is None else int(bool(nsfw)),
                                  now, prompt if isinstance(prompt, str) else None)))
        self._queue(ops + self._state(key, old, "received"))

    async def done(self, key: str, old: str, files: Sequence[tuple[str, bytes, str]],
                   cost: Decimal | None, code: str | None = None,
                   message: str | None = None) -> None:
        """Place the task's output files (relative path, bytes, sha256), then record them and
        mark the task done, in one commit; OSError if a file could not be placed (the task
        stays received: its results are recorded, a resume writes the files)."""
        ops: list[Op] = [(_OUTPUT, (rel, sha, len(data), key, i))
                         for i, (rel, data, sha) in enumerate(files)]
        ops += self._state(key, old, "done", None, cost=None if cost is None else str(cost),
                           error_code=code, error_message=self._clip(message))
        await self._write(ops, [(rel, data) for rel, data, _ in files])

    async def ended(self, key: str, old: str, state: str, code: str | None,
                    message: str | None) -> None:
        """The task ends this run failed, in doubt, or back to planned (never sent)."""
        await self._write(self._state(key, old, state, code, error_code=code,
                                      error_message=self._clip(message)))

    def attempt(self, key: str, uuid: str, kind: str, started: float, status: int | None,
                outcome: str, code: str | None = None, message: str | None = None) -> None:
        """One request made for a task (send, poll, details, download), ended now."""
        self._queue([(_ATTEMPT, (key, self.run_id, uuid, kind, started, self.wall(), status,
                                 outcome, code, self._clip(message)))])

    async def upload(self, sha256: str, inverted: bool, image_uuid: str) -> None:
        """An input uploaded once for the whole campaign (reused within Runware's retention)."""
        await self._write([(_UPLOAD, (sha256, int(inverted), image_uuid, self.wall()))])

    def _clip(self, message: str | None) -> str | None:
        return self.redact(message)[:500] or None if message else None


_OPEN_FILES_MAX = 256
_SYNCERS = 8  # fsyncs at once


def _discard(staged: list[tuple[_Entry, int, Path, Path]]) -> None:
    """Close and remove temporary files that will not be placed."""
    for _, fd, tmp, _ in staged:
        with contextlib.suppress(OSError):
            os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable without it
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the read side -----------------------------------------------------------------------------
_RESULTS_SQL = ("SELECT task_key, idx, task_uuid, image_uuid, seed, cost, url, nsfw, output_path, "
                "sha256, bytes, provider_prompt FROM results")


def _result(r: Sequence[Any]) -> Result:
    return Result(r[0], r[1], r[2], r[3], r[4], _dec(r[5]), r[6],
                  None if r[7] is None else bool(r[7]), r[8], r[9], r[10], r[11])


def _json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


# The C scanner behind json.loads: an instance attribute typeshed does not declare.
_Scanner = Callable[[str, int], tuple[Any, int]]
_scan: _Scanner = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _outputs(text: str | None) -> tuple[str, ...]:
    """A task's output names from their JSON: one printable name without escapes read as it
    is (most tasks), anything else parsed."""
    if text and text[:2] == '["' and text[-2:] == '"]' and '"' not in text[2:-2] \
            and "\\" not in text and text.isprintable():
        return (text[2:-2],)
    return tuple(_json_fast(text) or ())


def _json_fast(text: str | None) -> Any:
    """`_json(text)` without json.loads's Python layers around the C scanner (a snapshot
    parses two per task); whatever the scanner does not take whole goes the usual way."""
    if text is None:
        return None
    try:
        value, end = _scan(text, 0)
    except (StopIteration, ValueError):
        return _json(text)
    return value if end == len(text) else _json(text)


def read_snapshot(out_dir: Path) -> Snapshot:
    """Read the record of `out_dir` read-only, as one consistent snapshot (safe while a run
    writes it). RecordError if there is none, or it is damaged or not a specrunner record."""
    db = record_path(out_dir)
    if not db.is_file():
        raise RecordError(f"no run record in {out_dir} (expected {db})")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise RecordError(f"the run record {db} is damaged or unreadable ({exc})") from None
    try:
        try:
            app = conn.execute("PRAGMA application_id").fetchone()[0]
            ver = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise RecordError(f"the run record {db} is damaged or unreadable ({exc})") from None
        if app != APP_ID:
            raise RecordError(f"{db} is not a specrunner run record")
        if ver > SCHEMA_VERSION:
            raise RecordError(f"the run record {db} has schema version {ver}, newer than this "
                              f"specrunner's {SCHEMA_VERSION}: update specrunner")
        return _snapshot(conn, db, ver)
    finally:
        conn.close()


@dataclass(frozen=True)
class Attempt:
    """One request made for a task (send, poll, details, download) and how it ended."""

    task_key: str
    run_id: int | None
    task_uuid: str
    kind: str
    started_at: float
    ended_at: float
    http_status: int | None
    outcome: str
    error_code: str | None
    error_message: str | None


def read_attempts(out_dir: Path) -> list[Attempt]:
    """Every request the record logged, in the order they started (read-only)."""
    return _read_rows(out_dir, lambda conn: [Attempt(*r) for r in conn.execute(
        "SELECT task_key, run_id, task_uuid, kind, started_at, ended_at, http_status, "
        "outcome, error_code, error_message FROM attempts ORDER BY started_at, id")])


def read_uuids(out_dir: Path) -> dict[str, str]:
    """Every taskUUID the record ever minted -> its task key (read-only): whose task a
    UUID in a provider's ledger was."""
    return _read_rows(out_dir, lambda conn: dict(conn.execute(
        "SELECT task_uuid, task_key FROM task_uuids")))


_Out = TypeVar("_Out")


def _read_rows(out_dir: Path, read: Callable[[sqlite3.Connection], _Out]) -> _Out:
    """`read` of the record of `out_dir`, opened read-only; RecordError without one."""
    db = record_path(out_dir)
    if not db.is_file():
        raise RecordError(f"no run record in {out_dir} (expected {db})")
    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return read(conn)
    except sqlite3.Error as exc:
        raise _damaged(db, exc) from None
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def _snapshot(conn: sqlite3.Connection, db: Path, version: int = SCHEMA_VERSION) -> Snapshot:
    """Everything the readers need, in one read transaction. Records of an older schema (read
    without migrating them: nothing may write a record it does not lock) lack some columns:
    those read as NULL."""
    return _read_all(conn, db)


def _read_all(conn: sqlite3.Connection, db: Path) -> Snapshot:
    def col(table: str, name: str, have: set[str]) -> str:
        return name if name in have else "NULL"

    try:
        conn.execute("BEGIN")
        tcols, rcols, rscols = (_columns(conn, t) for t in ("tasks", "runs", "results"))
        # Only a run that never ended needs its last transition (the one reader, a report's
        # wall time, takes ended_at otherwise): grouping all of them sorted 200,000 rows.
        last_seen = dict(conn.execute(
            "SELECT run_id, max(at) FROM transitions WHERE run_id IN "
            "(SELECT run_id FROM runs WHERE ended_at IS NULL) GROUP BY run_id"))
        runs = tuple(RunRow(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], None if r[8] is None else bool(r[8]),
            _json(r[9]), _dec(r[10]), _dec(r[11]), r[12],
            r[13], r[14], _json(r[15]) or {}, _json(r[16]), last_seen.get(r[0]))
            for r in conn.execute(
                "SELECT run_id, started_at, ended_at, status, exit_code, spec_path, spec_sha256, "
                f"git_commit, git_dirty, {col('runs', 'provenance_json', rcols)}, max_usd, "
                f"spent_usd, {col('runs', 'plan_sha256', rcols)}, {col('runs', 'shard', rcols)}, "
                f"{col('runs', 'lock_sha256', rcols)}, versions_json, "
                f"{col('runs', 'price_json', rcols)} FROM runs ORDER BY run_id"))
        plans: dict[str, tuple[str, ...]] = {}
        if "plan_sha256" in rcols:
            for digest, text in conn.execute(
                    "SELECT plan_sha256, plan_json FROM runs WHERE plan_sha256 IS NOT NULL AND "
                    "plan_json IS NOT NULL GROUP BY plan_sha256"):
                plan = _json(text)
                if isinstance(plan, list):
                    plans[digest] = tuple(str(p.get("task_key")) for p in plan
                                          if isinstance(p, dict))
        # (Sorted here rather than by SQLite, which sorted whole rows, requests included.)
        rows = conn.execute(
            "SELECT task_key, idx, variant_id, state, generation, task_uuid, est_cost, cost, "
            "error_code, error_message, request_json, outputs_json, run_id, updated_at, "
            f"{col('tasks', 'axes_json', tcols)}, {col('tasks', 'input_name', tcols)}, "
            f"{col('tasks', 'prompt_name', tcols)}, {col('tasks', 'inputs_json', tcols)} "
            "FROM tasks").fetchall()
        rows.sort(key=itemgetter(1, 2))  # idx, variant id
        money = _Decimals()
        # Column by column, each converted by a C-level map (50,000 rows).
        cols: list[Any] = list(zip(*rows, strict=True)) or [()] * 18
        del rows
        cols[6] = map(money.__getitem__, cols[6])
        cols[7] = map(money.maybe, cols[7])
        cols[11] = map(_outputs, cols[11])
        cols[14] = map(_json_fast, cols[14])
        inputs = {text: _json(text) for text in set(cols[17])}  # a few texts: parsed once
        cols[17] = map(inputs.__getitem__, cols[17])
        tasks = tuple(map(TaskRow, *cols))
        del cols
        results: dict[str, list[Result]] = {}
        sql = _RESULTS_SQL.replace("provider_prompt", col("results", "provider_prompt", rscols))
        for r in conn.execute(sql):
            results.setdefault(r[0], []).append(Result(
                r[0], r[1], r[2], r[3], r[4], money.maybe(r[5]), r[6],
                None if r[7] is None else bool(r[7]), r[8], r[9], r[10], r[11]))
        for items in results.values():
            if len(items) > 1:
                items.sort(key=attrgetter("index"))
        sends: dict[str, int] = {}
        first: dict[str, float] = {}
        for key, started in conn.execute(
                "SELECT task_key, started_at FROM attempts WHERE kind='send'"):
            n = sends.get(key)
            if n is None:
                sends[key], first[key] = 1, started
            else:
                sends[key] = n + 1
                if started < first[key]:
                    first[key] = started
        latencies = tuple(e - s for (s, e) in conn.execute(
            "SELECT started_at, ended_at FROM attempts ORDER BY started_at, id"))
        # The last "done" of each task, found here: SQLite's GROUP BY sorted the 200,000
        # transitions of a 50,000-task record to find it, slower.
        done_at: dict[str, float] = {}
        for key, at in conn.execute("SELECT task_key, at FROM transitions "
                                    "WHERE to_state='done'"):
            if at >= done_at.get(key, at):
                done_at[key] = at
        new_uuids = conn.execute("SELECT count(*) FROM task_uuids WHERE generation > 0"
                                 ).fetchone()[0]
        uploads = conn.execute("SELECT count(*) FROM uploads").fetchone()[0]
        spec = conn.execute("SELECT spec_text FROM runs ORDER BY run_id DESC LIMIT 1").fetchone()
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _damaged(db, exc) from None
    return Snapshot(db, runs, tasks, {k: tuple(v) for k, v in results.items()}, sends, first,
                    done_at, latencies, new_uuids, int(uploads), plans,
                    spec[0] if spec else None)


# == merge: run folders of one campaign joined into one (`specrunner merge`) ====================
# Everything below serves `merge_records`; nothing above uses it.
#
# Same campaign: every folder's latest run planned the same set of task keys. A task key is the
# sha256 of exactly what a task generates (request, input bytes, mask polarity, repeat index),
# and a shard's run records the whole plan, not only its slice. So edits that change no task
# (comments, budget, concurrency, prices, key order) merge; an edit of any task of the campaign,
# even one another shard runs, or of an input file's bytes, is refused.
#
# One row per task key: done beats anything; then the higher generation (a generation exists
# only once the server failed the one before it, and UUIDs follow from key and generation, so
# that knowledge holds in every folder); then received > accepted > sending / in doubt >
# failed > planned: a send whose outcome is unknown is kept in doubt, so the next run asks the
# server before it sends again. Ties (and among done copies): the destination's own row, then
# the earliest.

def _table_columns() -> dict[str, tuple[str, ...]]:
    """Each table's columns, read from _SCHEMA (the one list of them)."""
    out = {}
    for stmt in _SCHEMA_STATEMENTS:
        m = re.match(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*)\)$", stmt, re.S)
        if m:
            out[m.group(1)] = tuple(re.findall(r"(?:^|,)\s*(\w+) (?:TEXT|INTEGER|REAL)",
                                               m.group(2)))
    return out


_COLS = _table_columns()
_T = {name: i for i, name in enumerate(_COLS["tasks"])}  # tasks column -> index in a row
_R = {name: i for i, name in enumerate(_COLS["runs"])}
_RS = {name: i for i, name in enumerate(_COLS["results"])}
_MERGE_RANK = {"received": 4, "accepted": 3, "sending": 2, "in_doubt": 2, "failed": 1,
               "planned": 0}


@dataclass(frozen=True)
class MergeResult:
    """What `merge_records` did (`changed` False: the destination already held it all), and
    what the merged record holds of the campaign's plan."""

    dest: Path
    sources: tuple[Path, ...]
    runs_added: int
    tasks_added: int
    tasks_replaced: int  # by a copy further along (e.g. done elsewhere, in doubt here)
    files_copied: int
    bytes_copied: int
    shards: tuple[str, ...]  # the shards the merged record's runs ran ("whole" for no shard)
    missing_shards: tuple[str, ...]  # shards of a common N that no folder ran
    planned: int  # tasks of the campaign's plan
    recorded: int  # of those, in the merged record
    done: int  # of those, done
    done_twice: int  # tasks done in more than one source folder
    billed_again: int  # of those, done under more than one taskUUID (each billed)
    duplicate_cost: Decimal  # what the extra taskUUIDs cost
    refetch: tuple[str, ...]  # variant ids merged as received: no folder had their images
    spec_path: str | None  # the spec the latest run ran

    @property
    def changed(self) -> bool:
        """Whether the merge added or replaced anything."""
        return bool(self.runs_added or self.tasks_added or self.tasks_replaced
                    or self.files_copied)


@dataclass
class _Folder:
    """A run folder's snapshot and every row of its record, as stored."""

    path: Path
    snap: Snapshot
    rows: dict[str, list[tuple[Any, ...]]]
    tasks: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    results: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tasks = {r[0]: r for r in self.rows["tasks"]}
        for r in self.rows["results"]:
            self.results.setdefault(r[0], []).append(r)


_Row = tuple[Any, ...]
_Copy = tuple[_Folder, _Row]  # a task's row as one folder holds it


def _rows(conn: sqlite3.Connection, db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in one read transaction (columns a record of an older schema
    lacks read as NULL)."""
    try:
        conn.execute("BEGIN")
        out = {}
        for table, cols in _COLS.items():
            have = _columns(conn, table)
            order = " ORDER BY idx" if table == "results" else ""
            out[table] = list(conn.execute(
                f"SELECT {', '.join(c if c in have else 'NULL' for c in cols)} FROM {table}"
                + order))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise _damaged(db, exc) from None
    return out


def _read_folder(path: Path) -> _Folder:
    snap = read_snapshot(path)  # the checks: a specrunner record of a known schema
    conn = sqlite3.connect(f"{snap.path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return _Folder(path, snap, _rows(conn, snap.path))
    finally:
        conn.close()


def _hold(path: Path) -> int | None:
    """Lock a source folder for the merge (a run cannot start in it meanwhile); RecordError if a
    run holds it now. None when it has no lock file (no run ever locked it here)."""
    lock = record_dir(path) / LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RecordError(f"cannot open {lock}: {exc.strerror}") from None
    if not _try_lock(fd):
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise RecordError(f"the run folder {path} is in use by a running specrunner (pid {pid}): "
                          "merge it once that run has finished")
    return fd


def _campaign(folders: Sequence[_Folder]) -> tuple[str, ...]:
    """The task keys of the plan every folder's latest run planned; UsageError if they differ."""
    from specrunner.errors import UsageError

    first: tuple[_Folder, tuple[str, ...]] | None = None
    for f in folders:
        keys = f.snap.plan_keys()
        if keys is None:
            raise UsageError(f"the record in {f.path} holds no plan (no run, or a record older "
                             "than plans): cannot tell which campaign it belongs to")
        if first is None:
            first = (f, keys)
            continue
        a, b = set(first[1]), set(keys)
        if a != b:
            f0 = first[0]
            older = min((f0, f), key=lambda x: x.snap.runs[-1].started_at).path
            raise UsageError(
                f"{f0.path} and {f.path} hold different plans ({len(a):,} and {len(b):,} tasks, "
                f"{len(a & b):,} in common; the specs: {f0.snap.runs[-1].spec_path} and "
                f"{f.snap.runs[-1].spec_path}): merge joins run folders of one campaign. If the "
                f"spec or an input file changed between these runs, run {older} again with "
                "the current spec (its done tasks are kept), then merge")
    assert first is not None
    return first[1]


def _run_identity(row: Sequence[Any]) -> tuple[Any, ...]:
    """What makes a run the same run in every folder it was merged into."""
    return (row[_R["started_at"]], row[_R["spec_sha256"]], row[_R["plan_sha256"]],
            row[_R["shard"]], row[_R["spec_path"]])


def _choose(copies: list[_Copy], here: _Folder) -> _Copy:
    """The copy of a task to keep (see the section's head)."""
    def rank(copy: _Copy) -> tuple[Any, ...]:
        f, row = copy
        state = row[_T["state"]]
        if state == "done":  # the first done, whatever its generation
            return (1, 0, 0, f is here, -row[_T["updated_at"]])
        return (0, row[_T["generation"]], _MERGE_RANK.get(state, 0), f is here,
                -row[_T["updated_at"]])
    return max(copies, key=rank)


def _sha256_of(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _safe_rel(rel: str) -> bool:
    """An output path a record may name: relative, inside the folder, not in the record's."""
    parts = Path(rel).parts
    return bool(parts) and not Path(rel).is_absolute() and ".." not in parts \
        and parts[0] != RECORD_DIR


def _place_copy(data: bytes, target: Path, made: set[Path]) -> None:
    """Write `data` at `target` atomically: temporary name beside it, fsync, rename (the folders
    are fsynced by the caller, once each, from `made`)."""
    folder = target.parent
    missing = []
    while not folder.is_dir():
        missing.append(folder)
        folder = folder.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
        made.add(d.parent)
    tmp = target.with_name(f".{target.name}.merge.tmp")  # (one per target: see _place)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, target)
    made.add(target.parent)


def merge_records(dest: Path, sources: Sequence[Path]) -> MergeResult:
    """Join the run folders `sources` (shards, or any run folders of one campaign) into `dest`:
    one record holding every run (with its shard), every UUID minted, every attempt and
    transition (run ids remapped), one copy of each task with its results and images (copied
    atomically, sha256 checked), every upload. Idempotent. Every folder is locked meanwhile.

    Raises UsageError for folders of different campaigns (or none to merge), RecordError for a
    missing, damaged or busy record; nothing is written then. A done task whose images no
    folder holds intact is merged as received: the next run fetches them (not paid again).
    """
    from specrunner.errors import UsageError

    dest = Path(dest).resolve()
    paths = list(dict.fromkeys(Path(s).resolve() for s in sources))
    paths = [p for p in paths if p != dest]
    if not paths:
        raise UsageError("nothing to merge: name at least one run folder other than --out")
    held: list[int] = []
    try:
        folders = []
        for p in paths:
            if not record_path(p).is_file():
                raise RecordError(f"no run record in {p} (expected {record_path(p)})")
            fd = _hold(p)
            if fd is not None:
                held.append(fd)
            folders.append(_read_folder(p))
        _campaign(folders)  # before the destination is touched
        with open_record(dest) as rec:
            here = _Folder(dest, rec.snapshot(), _rows(rec._conn, rec.path))
            keys = _campaign([here, *folders] if here.snap.runs else folders)
            return _merge(rec, here, folders, keys)
    finally:
        for fd in held:
            os.close(fd)


def _insert(table: str, cols: Sequence[str], verb: str = "INSERT") -> str:
    return f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


def _merge(rec: Record, here: _Folder, folders: list[_Folder],
           plan_keys: tuple[str, ...]) -> MergeResult:
    current = set(plan_keys)
    ids, new_runs = _number_runs(here, folders)
    remap = {id(f): {r[0]: ids[_run_identity(r)] for r in f.rows["runs"]} for f in folders}
    copies: dict[str, list[_Copy]] = {}
    for f in (here, *folders):
        for key, row in f.tasks.items():
            copies.setdefault(key, []).append((f, row))
    chosen = {key: _choose(c, here) for key, c in copies.items()}
    copied, nbytes, broken = _copy_images(here, chosen, copies, current)
    ops = _run_ops(here, new_runs, ids)
    ops += _log_ops(folders, remap, {(id(f), r[0]) for f, r in new_runs})
    added = replaced = 0
    for key, (f, row) in chosen.items():
        if f is not here:
            added += key not in here.tasks
            replaced += key in here.tasks
            ops += _task_ops(key, f, row, remap[id(f)], key in broken)
    # Rows from other folders may place tasks as their plan did: the next run checks them all.
    ops.append(("DELETE FROM meta WHERE key=?", (_PLACEMENT,)))
    _transaction(rec._conn, ops)

    done_twice = billed_again = 0
    duplicate_cost = Decimal(0)
    for key, c in copies.items():
        done = [(f, row) for f, row in c if row[_T["state"]] == "done"]
        done_twice += sum(f is not here for f, _ in done) > 1
        keep = chosen[key][1][_T["task_uuid"]]
        extra = {row[_T["task_uuid"]]: row for _, row in done if row[_T["task_uuid"]] != keep}
        billed_again += bool(extra)
        for row in extra.values():
            duplicate_cost += Decimal(row[_T["cost"]] or row[_T["est_cost"]])
    states = {k: "received" if k in broken else row[_T["state"]]
              for k, (_, row) in chosen.items()}
    runs = [r for f in (here, *folders) for r in f.rows["runs"]]
    shards = sorted({r[_R["shard"]] or "whole" for r in runs}, key=_shard_order)
    ns = {s.split("/")[1] for s in shards if "/" in s}
    missing: list[str] = []
    if len(ns) == 1 and "whole" not in shards:
        n = int(next(iter(ns)))
        missing = [f"{k}/{n}" for k in range(1, n + 1) if f"{k}/{n}" not in shards]
    return MergeResult(
        dest=here.path, sources=tuple(f.path for f in folders), runs_added=len(new_runs),
        tasks_added=added, tasks_replaced=replaced, files_copied=copied, bytes_copied=nbytes,
        shards=tuple(shards), missing_shards=tuple(missing), planned=len(current),
        recorded=sum(k in states for k in current),
        done=sum(states.get(k) == "done" for k in current), done_twice=done_twice,
        billed_again=billed_again, duplicate_cost=duplicate_cost,
        refetch=tuple(sorted(chosen[k][1][_T["variant_id"]] for k in broken)),
        spec_path=max(runs, key=lambda r: r[_R["started_at"]])[_R["spec_path"]])


def _number_runs(here: _Folder, folders: list[_Folder]
                 ) -> tuple[dict[tuple[Any, ...], int], list[_Copy]]:
    """Every run's id in the destination (by identity), and the runs it lacks, each once, in
    the order they started, numbered after its own."""
    ids = {_run_identity(r): r[0] for r in here.rows["runs"]}
    first = max(ids.values(), default=0) + 1
    new_runs: list[_Copy] = []
    for f in folders:
        for r in f.rows["runs"]:
            if _run_identity(r) not in ids:
                ids[_run_identity(r)] = 0  # numbered below
                new_runs.append((f, r))
    new_runs.sort(key=lambda fr: fr[1][_R["started_at"]])
    for i, (_, r) in enumerate(new_runs):
        ids[_run_identity(r)] = first + i
    return ids, new_runs


def _copy_images(here: _Folder, chosen: Mapping[str, _Copy], copies: Mapping[str, list[_Copy]],
                 current: set[str]) -> tuple[int, int, set[str]]:
    """Place the images of every kept done task in the destination (a path two tasks claim
    goes to the current plan's, then the later one's): (files copied, bytes, the current
    tasks no folder holds intact images of)."""
    wanted: dict[str, tuple[tuple[bool, float], str, str]] = {}  # rel -> (priority, sha, key)
    for key, (f, row) in chosen.items():
        if row[_T["state"]] != "done":
            continue
        for r in f.results.get(key, ()):
            rel, sha = r[_RS["output_path"]], r[_RS["sha256"]]
            if rel and sha and _safe_rel(rel):
                prio = (key in current, r[_RS["received_at"]])
                if rel not in wanted or prio > wanted[rel][0]:
                    wanted[rel] = (prio, sha, key)
    made: set[Path] = set()
    copied = nbytes = 0
    broken: set[str] = set()
    for rel, (_, sha, key) in sorted(wanted.items()):
        target = here.path / rel
        if target.is_file() and _sha256_of(target) == sha:
            continue
        kept = chosen[key][0]
        # the same taskUUID gives the same image: any folder that has the task done will do
        holders = sorted((f for f, row in copies[key] if row[_T["state"]] == "done"
                          and f is not here), key=lambda f: f is not kept)
        data = next((d for d in ((_read(f.path / rel) for f in holders))
                     if d is not None and hashlib.sha256(d).hexdigest() == sha), None)
        if data is None:
            if key in current and kept is not here:
                broken.add(key)
            continue
        _place_copy(data, target, made)
        copied += 1
        nbytes += len(data)
    for d in made:
        _fsync_dir(d)
    return copied, nbytes, broken


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _run_ops(here: _Folder, new_runs: list[_Copy], ids: Mapping[tuple[Any, ...], int]
             ) -> list[Op]:
    """The runs the destination lacks; each plan's JSON stored once, as begin_run does."""
    ops: list[Op] = []
    have_plans = {r[_R["plan_sha256"]] for r in here.rows["runs"] if r[_R["plan_json"]]}
    plan, digest_at = _R["plan_json"], _R["plan_sha256"]
    for f, r in new_runs:
        run = list(r)
        run[0] = ids[_run_identity(r)]
        digest = run[digest_at]
        if digest in have_plans:
            run[plan] = None
        elif run[plan] is None:  # another run of its folder stored this plan
            run[plan] = next((x[plan] for x in f.rows["runs"]
                              if x[digest_at] == digest and x[plan]), None)
        if run[plan] is not None:
            have_plans.add(digest)
        ops.append((_insert("runs", _COLS["runs"]), run))
    return ops


def _log_ops(folders: list[_Folder], remap: Mapping[int, Mapping[int, int]],
             added: set[tuple[int, int]]) -> list[Op]:
    """Every UUID, the attempts and transitions of the runs added (run ids remapped), and the
    newest upload of each input."""
    ops: list[Op] = []
    for f in folders:
        m = remap[id(f)]
        ops += [("INSERT OR IGNORE INTO task_uuids VALUES (?,?,?,?,?)",
                 (*r[:3], m.get(r[3]), r[4])) for r in f.rows["task_uuids"]]
        for table in ("transitions", "attempts"):
            cols = _COLS[table][1:]  # not the id: the rows get the destination's
            at = cols.index("run_id") + 1  # in a row, which starts with the id
            ops += [(_insert(table, cols), (*r[1:at], m[r[at]], *r[at + 1:]))
                    for r in f.rows[table] if (id(f), r[at]) in added]
        ops += [("INSERT INTO uploads VALUES (?,?,?,?) ON CONFLICT (sha256, inverted) DO "
                 "UPDATE SET image_uuid=excluded.image_uuid, uploaded_at=excluded.uploaded_at "
                 "WHERE excluded.uploaded_at > uploads.uploaded_at", r)
                for r in f.rows["uploads"]]
    return ops


def _task_ops(key: str, f: _Folder, row: _Row, remap: Mapping[int, int], broken: bool
              ) -> list[Op]:
    """A task's row and results as `f` holds them (as received, without its files, when no
    folder had them intact)."""
    task = list(row)
    task[_T["run_id"]] = remap.get(row[_T["run_id"]])
    results = [list(r) for r in f.results.get(key, ())]
    if broken:
        task[_T["state"]] = "received"
        for r in results:
            r[_RS["output_path"]] = r[_RS["sha256"]] = r[_RS["bytes"]] = None
    return [(_insert("tasks", _COLS["tasks"], "INSERT OR REPLACE"), task),
            ("DELETE FROM results WHERE task_key=?", (key,)),
            *((_insert("results", _COLS["results"]), r) for r in results)]


def _shard_order(shard: str) -> tuple[int, int]:
    if "/" not in shard:
        return (0, 0)
    k, n = shard.split("/")
    return (int(n), int(k))
