"""Plan vs. run record: what `specrunner run` would do with each planned task, and why.

`compare(plan, run_dir)` reads `<run_dir>/.specrunner/run.db` read-only (record.read_snapshot:
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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from specrunner.errors import RecordError
from specrunner.money import money
from specrunner.plan.identity import task_key
from specrunner.record import IN_DOUBT_STATES, Snapshot, TaskRow, read_snapshot
from specrunner.runware import NOT_IN_KEY

if TYPE_CHECKING:
    from specrunner.plan.build import Plan

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
    snap = read_snapshot(run_dir)
    rows = {r.task_key: r for r in snap.tasks}
    keys = {t.task_key for t in plan.tasks}
    wanted = {t.variant_id for t in plan.tasks if t.task_key not in rows}
    previous = _previous(snap, wanted) if wanted else {}
    statuses = []
    cost = Decimal(0)
    for t in plan.tasks:
        row = rows.get(t.task_key)
        if row is not None:
            status = _of_state(row.state, row.error_code, snap.path)
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
    return RecordStatus(snap.path, tuple(statuses), cost, sum(k not in keys for k in rows))


def _of_state(state: str, code: str | None, db: Path) -> TaskStatus:
    if state == "done":
        return TaskStatus("done", "done")
    if state == "failed":
        return TaskStatus("retry", f"retry: {code or 'unknown error'}")
    if state in IN_DOUBT_STATES:
        return TaskStatus("in_doubt", "in doubt: reconcile first")
    if state == "planned":
        return TaskStatus("pending", "pending")
    raise RecordError(f"the run record {db} is damaged (unknown task state {state!r})")


def _previous(snap: Snapshot, variant_ids: set[str]) -> dict[str, tuple[str, dict[str, Any]]]:
    """variant id -> (task key, request) of its latest recorded task, for `variant_ids`."""
    latest: dict[str, tuple[float, int, TaskRow]] = {}
    for i, r in enumerate(snap.tasks):
        if r.variant_id in variant_ids and (r.variant_id not in latest
                                            or (r.updated_at, i) > latest[r.variant_id][:2]):
            latest[r.variant_id] = (r.updated_at, i, r)
    return {vid: (r.task_key, snap.request(r)) for vid, (_, _, r) in latest.items()}


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
