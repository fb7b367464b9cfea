"""Plan vs. run record: what `specrunner run` would do with each planned task, and why.

`compare(plan, run_dir)` reads `<run_dir>/.specrunner/run.db` read-only (report.connect_ro:
one snapshot, safe while a run is writing it) and gives every task of the plan a status:

    done                       recorded done under this task key: skipped on run
    new                        no recorded task with this key or this variant id
    changed: <fields>          the variant id was recorded under another task key; the
                               fields are the request fields that differ (dotted paths, e.g.
                               positivePrompt, providerSettings.ideogram.styleType,
                               inputs.seedImage), or mask_polarity, or `task key` when the
                               request is the same (a key from another specrunner version)
    retry: <error code>        recorded failed: runs again under a fresh taskUUID
    in doubt: reconcile first  recorded sent or accepted but not done: the run asks the server
                               before sending anything again
    pending                    recorded planned, never sent

Raises RecordError (exit 2) for a missing, damaged or foreign record. Pure apart from that
read: no httpx, no anyio.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from specrunner.errors import RecordError
from specrunner.money import money
from specrunner.plan.identity import NOT_IN_KEY, task_key
from specrunner.report.summary import connect_ro, record_path

if TYPE_CHECKING:
    from specrunner.plan.build import Plan

IN_DOUBT = frozenset({"sending", "accepted", "received", "in_doubt"})
_POLARITIES = ("white-edits", "black-edits")
_MISSING = object()


@dataclass(frozen=True)
class TaskStatus:
    """What a run would do with one planned task; `text` is what `plan` shows."""

    kind: str  # done | new | changed | retry | in_doubt | pending
    text: str

    @property
    def would_run(self) -> bool:
        """True unless the task is done (in-doubt tasks count: they may have to be sent)."""
        return self.kind != "done"


@dataclass(frozen=True)
class RecordStatus:
    """The status of every task of a plan (in plan order) against one run record."""

    record: Path
    statuses: tuple[TaskStatus, ...]
    to_run_cost: Decimal  # estimated cost of the tasks that would run
    not_in_plan: int  # recorded tasks this plan no longer has

    def counts(self) -> dict[str, int]:
        """Tasks per status kind, in a fixed order, kinds with no task left out."""
        out: dict[str, int] = {}
        for kind in ("done", "new", "changed", "retry", "in_doubt", "pending"):
            n = sum(s.kind == kind for s in self.statuses)
            if n:
                out[kind] = n
        return out

    def summary(self) -> str:
        """`N done, M would run (est. $X)`, what the M are, and what else the record holds."""
        counts = self.counts()
        done = counts.pop("done", 0)
        text = (f"{done:,} done, {len(self.statuses) - done:,} would run "
                f"(est. {money(self.to_run_cost)})")
        if counts:
            text += ": " + ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in counts.items())
        if self.not_in_plan:
            text += f"; {self.not_in_plan:,} recorded tasks are not in this plan"
        return text


def compare(plan: Plan, run_dir: Path) -> RecordStatus:
    """Every planned task's status against the record in `run_dir`; RecordError if unusable."""
    conn = connect_ro(run_dir)
    try:
        conn.execute("BEGIN")  # one snapshot even while a run commits
        rows = {r[0]: (r[1], r[2]) for r in conn.execute(
            "SELECT task_key, state, error_code FROM tasks")}
        keys = {t.task_key for t in plan.tasks}
        wanted = {t.variant_id for t in plan.tasks if t.task_key not in rows}
        previous = _previous(conn, wanted) if wanted else {}
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise RecordError(f"the run record {record_path(run_dir)} is damaged ({exc})") from None
    finally:
        conn.close()
    statuses = []
    cost = Decimal(0)
    for t in plan.tasks:
        row = rows.get(t.task_key)
        if row is not None:
            status = _of_state(row[0], row[1], run_dir)
        elif t.variant_id in previous:
            old_key, old_request = previous[t.variant_id]
            status = TaskStatus("changed", "changed: " + ", ".join(
                changed_fields(old_request, t.request)
                or _identity_change(old_key, old_request, t.repeat)))
        else:
            status = TaskStatus("new", "new")
        if status.would_run:
            cost += t.est_cost
        statuses.append(status)
    return RecordStatus(record_path(run_dir), tuple(statuses), cost,
                        sum(k not in keys for k in rows))


def _of_state(state: str, code: str | None, run_dir: Path) -> TaskStatus:
    if state == "done":
        return TaskStatus("done", "done")
    if state == "failed":
        return TaskStatus("retry", f"retry: {code or 'unknown error'}")
    if state in IN_DOUBT:
        return TaskStatus("in_doubt", "in doubt: reconcile first")
    if state == "planned":
        return TaskStatus("pending", "pending")
    raise RecordError(f"the run record {record_path(run_dir)} is damaged (unknown task state "
                      f"{state!r})")


def _previous(conn: sqlite3.Connection, variant_ids: set[str]
              ) -> dict[str, tuple[str, dict[str, Any]]]:
    """variant id -> (task key, request) of its latest recorded task, for `variant_ids`."""
    latest: dict[str, tuple[float, int, str, str]] = {}
    for rowid, key, vid, updated, request in conn.execute(
            "SELECT rowid, task_key, variant_id, updated_at, request_json FROM tasks"):
        if vid in variant_ids and (vid not in latest or (updated, rowid) > latest[vid][:2]):
            latest[vid] = (updated, rowid, key, request)
    out = {}
    for vid, (_, _, key, text) in latest.items():
        try:
            request = json.loads(text)
        except (TypeError, ValueError):
            request = None
        if not isinstance(request, dict):
            raise sqlite3.DatabaseError(f"task {key} has no readable request_json")
        out[vid] = (key, request)
    return out


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted paths of the request fields whose values differ, in the new request's order
    (then fields only the old request had); fields that do not change what is generated
    (taskUUID, deliveryMethod, includeCost) are left out."""
    return list(_diff(old, new, "", top=True))


def _diff(old: Any, new: Any, prefix: str, top: bool = False) -> Iterable[str]:
    keys = list(new) + [k for k in old if k not in new]
    for k in keys:
        if top and k in NOT_IN_KEY:
            continue
        a, b = old.get(k, _MISSING), new.get(k, _MISSING)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            yield from _diff(a, b, f"{prefix}{k}.")
        elif a != b or type(a) is not type(b):
            yield f"{prefix}{k}"



def _identity_change(old_key: str, old_request: Mapping[str, Any], repeat: int) -> list[str]:
    """Why the key changed when no request field did: the mask polarity (a local mask is
    inverted before sending, so the request itself looks the same), or something else."""
    if any(task_key(old_request, p, repeat) == old_key for p in _POLARITIES):
        return ["mask_polarity"]
    return ["task key"]
