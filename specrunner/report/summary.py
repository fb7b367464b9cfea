"""Run record -> what reviewers read: totals, per-axis breakdowns, failures; table/JSON/CSV/MD.

`load_run(run_dir, plan)` reads `<run_dir>/.specrunner/run.db` read-only (one snapshot, works
while a run is writing it: WAL) into a `RunData`; `summarize(data, by)` computes a `Summary`;
`render(summary, fmt)` formats it. Pure apart from the read-only SQLite read: no httpx/anyio.
Matrix axes come from the spec's plan (tasks matched by task_key, then by variant id); without
a plan they fall back to the request fields whose values differ between tasks.

Task status: `done` (succeeded; some results may have been refused), `failed`, `pending`
(planned, never sent) and `in_doubt` (sent, outcome unknown: the next run reconciles it).
JSON shape (`to_json`; money as decimal strings, times in seconds or ISO-8601 UTC; rendered
indented, one task per line):

    {"format": "specrunner.report/1",
     "run": {"name", "spec_path", "status", "runs", "started_at", "ended_at", "budget_usd",
             "notes": [str, ...]},
     "totals": {"tasks", "images", "images_refused", "succeeded", "failed", "pending",
                "in_doubt", "failed_by_category": {category: n}, "estimated_usd",
                "actual_usd", "spend_per_image_usd", "retries", "new_uuids", "wall_s",
                "request_latency_s": {"n", "p50", "p95"}, "task_latency_s": {"n", "p50", "p95"}},
     "breakdown": {axis: [{"value", "tasks", "images", "succeeded", "failed", "pending",
                           "in_doubt", "estimated_usd", "actual_usd"}, ...]},
     "errors": [{"code", "category", "tasks"}, ...],
     "failures": [{"variant", "status", "code", "category", "message"}, ...],
     "review": null | {"file", "exists", "approved", "rejected", "pending", "stale",
                       "approval_rate", "missing", "orphans",
                       "by": {axis: [{"value", "approved", "rejected", "pending", "stale",
                                      "approval_rate"}, ...]}},
     "tasks": [{"index", "variant", "status", "axes": {axis: value}, "task_key",
                "estimated_usd", "actual_usd", "sends", "error": {"code", "message"} | null,
                "images": [{"index", "path", "sha256", "bytes", "cost_usd", "seed",
                            "verdict", "note"}]}, ...]}

Review state (report/review.py) is per result image: approved / rejected (a decision whose
sha256 is the file's), stale (a decision for other bytes), pending (none), missing (no file);
the approval rate is approved / (approved + rejected). Table and Markdown show it when the
review file exists.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from tabulate import tabulate

from specrunner import runware

from specrunner.plan import identity
from specrunner.report.review import ReviewSummary, shown
from specrunner.errors import RecordError, UsageError
from specrunner.money import usd
from specrunner.store import APP_ID, DB_NAME, IN_DOUBT_STATES, RECORD_DIR

FORMATS = ("table", "markdown", "json", "csv")
RECORD = Path(RECORD_DIR) / DB_NAME
STATUS_OF = {"done": "done", "failed": "failed", "planned": "pending",
             **dict.fromkeys(sorted(IN_DOUBT_STATES), "in_doubt")}
STATUSES = ("done", "failed", "pending", "in_doubt")
# Codes the runner itself gives up with (executor.py), not the API's.
RUNNER_CODES = frozenset({"attemptsExhausted", "retryBudgetExhausted", "deadline",
                          "inputChanged", "uploadFailed", "noOutput", "error"})
_SKIP_FIELDS = frozenset({"taskType", "taskUUID", "model", "positivePrompt", "inputs",
                          "includeCost", "deliveryMethod"})


@dataclass(frozen=True)
class Image:
    """One recorded result image; `path` is relative to the run folder (None: not written)."""

    index: int
    path: str | None
    sha256: str | None
    bytes: int | None
    cost: Decimal | None
    seed: str | None
    image_uuid: str | None


@dataclass(frozen=True)
class InputRef:
    """A seed or mask of a task: a local file (absolute path, sha256) or a URL/UUID as text."""

    field: str  # seedImage | maskImage
    kind: str  # file | url | uuid
    value: str
    sha256: str | None = None
    polarity: str = "white-edits"


@dataclass(frozen=True)
class TaskInfo:
    """One task as the record knows it, with its matrix axes (ordered) and inputs."""

    index: int
    variant_id: str
    task_key: str
    state: str
    status: str
    axes: tuple[tuple[str, str], ...]
    est_cost: Decimal
    cost: Decimal | None
    number_results: int
    images: tuple[Image, ...]
    error_code: str | None
    error_message: str | None
    sends: int
    latency_s: float | None  # first send -> done
    input_name: str | None = None
    inputs: tuple[InputRef, ...] = ()
    prompt_name: str | None = None  # the spec's prompt template (None without the spec)
    # The recorded request body (local inputs as "local:<sha256>" placeholders): the prompt
    # text and the fields the review page shows. Not compared or hashed: a dict.
    request: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def prompt(self) -> str | None:
        """The prompt text sent (positivePrompt), if recorded."""
        text = self.request.get("positivePrompt")
        return text if isinstance(text, str) else None

    @property
    def category(self) -> str | None:
        """The error category of the task's error code, if any."""
        return category_of(self.error_code) if self.error_code else None

    @cached_property
    def _axis_values(self) -> dict[str, str]:
        # Not a field (no annotation): eq, hash and repr still see only `axes`. Cached in the
        # instance __dict__, which a frozen dataclass allows (it blocks only __setattr__).
        return dict(self.axes)

    def axis(self, name: str) -> str:
        """The task's value of axis `name` ("-" when it has none)."""
        return self._axis_values.get(name, "-")


@dataclass(frozen=True)
class RunData:
    """Everything a report needs, read from one snapshot of the record."""

    name: str | None
    spec_path: str | None
    status: str | None
    runs: int
    started_at: float | None
    ended_at: float | None
    wall_s: float
    budget: Decimal | None
    axes: tuple[str, ...]
    tasks: tuple[TaskInfo, ...]
    request_latencies: tuple[float, ...]
    new_uuids: int
    warnings: tuple[str, ...] = ()


def category_of(code: str) -> str:
    """runware.classify's category of an error code; `runner` for the runner's own codes."""
    cat = runware.classify(code)
    if cat == runware.Category.UNKNOWN and code in RUNNER_CODES:
        return "runner"
    return cat.value


def text_of(value: Any) -> str:
    """How an axis value reads in a report (true/false, 2, DESIGN; None -> "-")."""
    return "-" if value is None else identity.text_of(value)


def record_path(run_dir: Path) -> Path:
    """The record database of a run folder."""
    return Path(run_dir) / RECORD


def connect_ro(run_dir: Path) -> sqlite3.Connection:
    """Open a run record read-only; RecordError if missing, damaged or not ours."""
    db = record_path(run_dir)
    if not db.is_file():
        raise RecordError(f"no run record in {run_dir} (expected {db})")
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        conn.execute("SELECT count(*) FROM tasks").fetchone()
    except sqlite3.Error as exc:
        raise RecordError(f"the run record {db} is damaged or unreadable ({exc})") from None
    if app != APP_ID:
        conn.close()
        raise RecordError(f"{db} is not a specrunner run record")
    return conn


def _plan_index(plan: Any) -> tuple[dict[str, Any], dict[str, Any], tuple[str, ...], Any]:
    if plan is None:
        return {}, {}, (), None
    return ({t.task_key: t for t in plan.tasks}, {t.variant_id: t for t in plan.tasks},
            tuple(k for k, _ in plan.breakdown), plan.spec)


def _axes_from_plan(task: Any, keys: Sequence[str], fields: Mapping[str, tuple[str, ...]],
                    axis_value: Callable[[Any, str, Mapping[str, tuple[str, ...]]], Any]
                    ) -> tuple[tuple[str, str], ...]:
    return tuple((key, text_of(axis_value(task, key, fields))) for key in keys)


def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if not prefix and k in _SKIP_FIELDS:
                continue
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1], node


def _seed_of(request: Mapping[str, Any]) -> Any:
    seed = (request.get("inputs") or {}).get("seedImage")
    return seed[:18] if isinstance(seed, str) and seed.startswith("local:") else seed


def _fallback_axes(requests: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, str]]]:
    """Request leaves whose value differs between tasks, named by leaf when unambiguous.

    The seed image counts as a leaf (`seedImage`; local files as `local:` + 12 hex digits).
    """
    flat = [{"seedImage": _seed_of(r), **dict(_leaves(r))} for r in requests]
    seen: dict[str, set[str]] = {}
    for f in flat:
        for k, v in f.items():
            seen.setdefault(k, set()).add(json.dumps(v))
    varying = [k for k, vals in seen.items() if len(vals) > 1 or any(k not in f for f in flat)]
    leaf = [k.rsplit(".", 1)[-1] for k in varying]
    names = {k: (n if leaf.count(n) == 1 else k) for k, n in zip(varying, leaf)}
    return [names[k] for k in varying], [{names[k]: text_of(f.get(k)) for k in varying}
                                          for f in flat]


def _inputs(pair: Any) -> tuple[InputRef, ...]:
    return tuple(InputRef(name, ref.kind, ref.value if ref.kind == "file" else ref.display,
                          ref.sha256, pair.polarity)
                 for name, ref in (("seedImage", pair.seed), ("maskImage", pair.mask)))


def load_run(run_dir: Path, plan: Any = None, warnings: Sequence[str] = ()) -> RunData:
    """Read a run record (read-only snapshot) into RunData; RecordError if it is unusable.

    `plan`: the spec's Plan, for matrix axes and input files (optional).
    """
    conn = connect_ro(run_dir)
    try:
        conn.execute("BEGIN")  # one consistent snapshot even while a run commits
        runs = conn.execute("SELECT run_id, started_at, ended_at, status, spec_path, max_usd "
                            "FROM runs ORDER BY run_id").fetchall()
        rows = conn.execute("SELECT task_key, idx, variant_id, state, est_cost, cost, "
                            "error_code, error_message, request_json FROM tasks "
                            "ORDER BY idx, variant_id").fetchall()
        results: dict[str, list[Image]] = {}
        for r in conn.execute("SELECT task_key, idx, output_path, sha256, bytes, cost, seed, "
                              "image_uuid FROM results ORDER BY task_key, idx"):
            results.setdefault(r[0], []).append(
                Image(r[1], r[2], r[3], r[4], Decimal(r[5]) if r[5] else None, r[6], r[7]))
        # Sends per task, and when the first request left (the "sending" transition is
        # recorded ahead of dispatch, a window of tasks at a time, so it would count time
        # spent queued).
        sends: dict[str, int] = {}
        first: dict[str, float] = {}
        for key, n, started in conn.execute(
                "SELECT task_key, count(*), min(started_at) FROM attempts WHERE kind='send' "
                "GROUP BY task_key"):
            sends[key], first[key] = n, started
        latencies = tuple(e - s for (s, e) in conn.execute(
            "SELECT started_at, ended_at FROM attempts ORDER BY started_at, id"))
        done_at = dict(conn.execute("SELECT task_key, max(at) FROM transitions "
                                    "WHERE to_state='done' GROUP BY task_key"))
        new_uuids = conn.execute("SELECT count(*) FROM task_uuids WHERE generation>0"
                                 ).fetchone()[0]
        last_seen = dict(conn.execute(
            "SELECT run_id, max(at) FROM transitions GROUP BY run_id"))
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise RecordError(f"the run record {record_path(run_dir)} is damaged ({exc})") from None
    finally:
        conn.close()
    by_key, by_id, keys, spec = _plan_index(plan)
    fields: Mapping[str, tuple[str, ...]] = {}
    inputs: dict[str, tuple[InputRef, ...]] = {}
    if spec is not None:
        from specrunner import models
        from specrunner.plan import axis_value

        fields = models.field_paths(spec.model)
        inputs = {name: _inputs(pair) for name, pair in spec.inputs.items()}
    requests = [json.loads(r[8]) for r in rows]
    matched = [by_key.get(r[0]) or by_id.get(r[2]) for r in rows]
    notes = list(warnings)
    if spec is None or any(m is None for m in matched):
        axis_names, fallback = _fallback_axes(requests)
        if spec is not None:
            notes.append(f"{sum(m is None for m in matched)} recorded tasks are not in the "
                         "spec's plan; their axes come from their requests")
    else:
        axis_names, fallback = [], []
    axes_order = list(keys) if spec is not None else []
    for name in axis_names:
        if name not in axes_order:
            axes_order.append(name)
    tasks = []
    for i, (r, req, m) in enumerate(zip(rows, requests, matched)):  # m: only with a spec
        axes = (_axes_from_plan(m, keys, fields, axis_value) if m is not None
                else tuple((k, fallback[i].get(k, "-")) for k in axis_names))
        lat = done_at[r[0]] - first[r[0]] if r[0] in done_at and r[0] in first else None
        tasks.append(TaskInfo(
            index=r[1], variant_id=r[2], task_key=r[0], state=r[3],
            status=STATUS_OF.get(r[3], "in_doubt"), axes=axes, est_cost=Decimal(r[4]),
            cost=Decimal(r[5]) if r[5] else None,
            number_results=int(req.get("numberResults", 1)),
            images=tuple(results.get(r[0], ())), error_code=r[6], error_message=r[7],
            sends=sends.get(r[0], 0), latency_s=lat,
            input_name=m.input_name if m is not None else None,
            inputs=inputs.get(m.input_name, ()) if m is not None else (),
            prompt_name=m.prompt_name if m is not None else None, request=req))
    wall = 0.0
    for run_id, started, ended, *_ in runs:
        end = ended if ended is not None else last_seen.get(run_id, started)
        wall += max(0.0, (end or started) - started)
    last = runs[-1] if runs else None
    return RunData(
        name=spec.name if spec is not None else None,
        spec_path=last[4] if last else None, status=last[3] if last else None,
        runs=len(runs), started_at=runs[0][1] if runs else None,
        ended_at=last[2] if last else None, wall_s=wall,
        budget=Decimal(last[5]) if last and last[5] else None,
        axes=tuple(axes_order), tasks=tuple(tasks), request_latencies=latencies,
        new_uuids=int(new_uuids), warnings=tuple(notes))


# -- summary -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Group:
    """Figures of the tasks sharing one value of an axis (or one error code)."""

    value: str
    tasks: int
    images: int
    counts: tuple[int, int, int, int]  # done, failed, pending, in_doubt
    estimated: Decimal
    actual: Decimal


@dataclass(frozen=True)
class Summary:
    """Totals, breakdowns and failures of a run, ready to be rendered."""

    data: RunData
    by: tuple[str, ...]
    totals: tuple[tuple[str, Any], ...]
    breakdown: tuple[tuple[str, tuple[Group, ...]], ...]
    errors: tuple[tuple[str, str, int], ...]  # (code, category, tasks)
    failures: tuple[TaskInfo, ...]
    review: ReviewSummary | None = None  # None: the run's spec (so its review file) unknown


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank p-th percentile of `values` (None when empty)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def actual_cost(task: TaskInfo) -> Decimal:
    """What the record says was charged for a task: reported item costs (0 if none)."""
    if task.cost is not None:
        return task.cost
    return sum((i.cost for i in task.images if i.cost is not None), Decimal(0))


def group(value: str, tasks: Sequence[TaskInfo]) -> Group:
    """The figures of `tasks`: count, images, tasks per status, estimated and actual cost."""
    counts = tuple(sum(t.status == s for t in tasks) for s in STATUSES)
    return Group(value, len(tasks), sum(len(t.images) for t in tasks),
                 counts,  # type: ignore[arg-type]
                 sum((t.est_cost for t in tasks), Decimal(0)),
                 sum((actual_cost(t) for t in tasks), Decimal(0)))


def varying_axes(axes: Iterable[str], tasks: Sequence[TaskInfo]) -> list[str]:
    """The axes of `axes` (in order) on which `tasks` take 2+ values."""
    return [a for a in axes if len({t.axis(a) for t in tasks}) > 1]


def check_axes(names: Iterable[str | None], axes: Sequence[str]) -> None:
    """UsageError for the first of `names` (None: not asked) that is not one of `axes`."""
    for name in names:
        if name is not None and name not in axes:
            raise UsageError(f"unknown axis {name!r}; this run's axes: "
                             + (", ".join(axes) or "none"))


def summarize(data: RunData, by: Sequence[str] | None = None,
              review: ReviewSummary | None = None) -> Summary:
    """Compute totals and per-axis breakdowns; `by` defaults to every axis with 2+ values.

    `review` (report.review.review_of) adds the review state. Raises UsageError for an axis
    the run does not have.
    """
    tasks = data.tasks
    if by is None:
        by = varying_axes(data.axes, tasks)
    check_axes(by, data.axes)
    breakdown = []
    for axis in by:
        groups: dict[str, list[TaskInfo]] = {}
        for t in tasks:
            groups.setdefault(t.axis(axis), []).append(t)
        breakdown.append((axis, tuple(group(v, ts) for v, ts in groups.items())))
    failed = [t for t in tasks if t.status == "failed"]
    cats: dict[str, int] = {}
    for t in failed:
        cats[t.category or "unknown"] = cats.get(t.category or "unknown", 0) + 1
    codes: dict[str, int] = {}
    for t in tasks:
        if t.error_code:
            codes[t.error_code] = codes.get(t.error_code, 0) + 1
    whole = group("", tasks)
    images, actual = whole.images, whole.actual
    done, n_failed, pending, in_doubt = whole.counts
    task_lat = [t.latency_s for t in tasks if t.latency_s is not None]
    totals = (
        ("tasks", whole.tasks),
        ("images", images),
        ("images_refused", sum(max(0, t.number_results - len(t.images)) for t in tasks
                               if t.status == "done")),
        ("succeeded", done),
        ("failed", n_failed),
        ("pending", pending),
        ("in_doubt", in_doubt),
        ("failed_by_category", dict(sorted(cats.items()))),
        ("estimated_usd", whole.estimated),
        ("actual_usd", actual),
        ("spend_per_image_usd", (actual / images).quantize(Decimal("0.0001"))
         if images else None),
        ("retries", sum(max(0, t.sends - 1) for t in tasks)),
        ("new_uuids", data.new_uuids),
        ("wall_s", round(data.wall_s, 3)),
        ("request_latency_s", _lat(data.request_latencies)),
        ("task_latency_s", _lat(task_lat)),
    )
    errors = tuple((c, category_of(c), n) for c, n in sorted(codes.items()))
    problems = [t for t in tasks if t.status != "done" and t.status != "pending"
                or t.error_code]
    return Summary(data, tuple(by), totals, tuple(breakdown), errors, tuple(problems), review)


def _lat(values: Sequence[float]) -> dict[str, Any]:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return {"n": len(values), "p50": None if p50 is None else round(p50, 3),
            "p95": None if p95 is None else round(p95, 3)}


# -- formats -------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


LABELS = {"images_refused": "images refused (content policy)", "in_doubt": "in doubt",
          "failed_by_category": "failed by category", "estimated_usd": "estimated spend",
          "actual_usd": "actual spend", "spend_per_image_usd": "spend per image",
          "new_uuids": "fresh UUIDs (provider failures)", "wall_s": "wall time",
          "request_latency_s": "request latency", "task_latency_s": "task latency (send->done)",
          "budget_usd": "budget"}


def to_json(s: Summary) -> dict[str, Any]:
    """The documented JSON shape (see the module docstring)."""
    d = s.data
    totals = {k: (usd(v) if isinstance(v, Decimal) else v) for k, v in s.totals}
    return {
        "format": "specrunner.report/1",
        "run": {"name": d.name, "spec_path": d.spec_path, "status": d.status, "runs": d.runs,
                "started_at": _iso(d.started_at), "ended_at": _iso(d.ended_at),
                "budget_usd": usd(d.budget), "notes": list(d.warnings)},
        "totals": totals,
        "breakdown": {axis: [{"value": g.value, "tasks": g.tasks, "images": g.images,
                              **dict(zip(("succeeded", "failed", "pending", "in_doubt"),
                                         g.counts)),
                              "estimated_usd": usd(g.estimated),
                              "actual_usd": usd(g.actual)}
                             for g in groups] for axis, groups in s.breakdown},
        "errors": [{"code": c, "category": cat, "tasks": n} for c, cat, n in s.errors],
        "failures": [{"variant": t.variant_id, "status": t.status, "code": t.error_code,
                      "category": t.category, "message": t.error_message}
                     for t in s.failures],
        "review": review_json(s),
        "tasks": [{"index": t.index, "variant": t.variant_id, "status": t.status,
                   "axes": dict(t.axes), "task_key": t.task_key,
                   "estimated_usd": usd(t.est_cost), "actual_usd": usd(t.cost),
                   "sends": t.sends,
                   "error": ({"code": t.error_code, "message": t.error_message}
                             if t.error_code else None),
                   "images": [{"index": i.index, "path": i.path, "sha256": i.sha256,
                               "bytes": i.bytes, "cost_usd": usd(i.cost), "seed": i.seed,
                               **verdict_json(s, t, i)}
                              for i in t.images]}
                  for t in d.tasks],
    }


def review_json(s: Summary) -> dict[str, Any] | None:
    """The `review` object of the JSON report (None when the spec is unknown)."""
    r = s.review
    if r is None:
        return None
    return {"file": str(r.file), "exists": r.exists, **r.totals.as_dict(),
            "missing": r.missing, "orphans": r.orphans,
            "by": {axis: [{"value": v, **c.as_dict()} for v, c in groups]
                   for axis, groups in r.by if axis in s.by}}


def _verdict(s: Summary, t: TaskInfo, i: Image) -> tuple[str | None, str | None]:
    """(review state, note) of one image; (None, None) without a review file to read."""
    item = s.review.of(t.variant_id, i.index) if s.review is not None else None
    if item is None or item.task is not t:
        return None, None
    return item.state, item.decision.note if item.decision is not None else None


def verdict_json(s: Summary, t: TaskInfo, i: Image) -> dict[str, Any]:
    """`verdict` (approved | rejected | pending | stale | missing, null: no spec) and `note`
    of one image: a superseded task's image has neither."""
    verdict, note = _verdict(s, t, i)
    return {"verdict": verdict, "note": note}


def _fmt_total(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "failed_by_category":
        return ", ".join(f"{k} {n}" for k, n in value.items()) or "-"
    if key.endswith("latency_s"):
        if not value["n"]:
            return "-"
        return f"p50 {value['p50']:.3f} s, p95 {value['p95']:.3f} s (n={value['n']})"
    if key == "wall_s":
        return f"{value:.3f} s"
    if isinstance(value, Decimal):
        return f"${usd(value)}"
    return str(value)


def _text(s: Summary, fmt: str) -> str:
    d = s.data
    md = fmt == "github"
    head = (lambda t: f"### {t}") if md else (lambda t: t)
    title = (f"run {d.name or '(unnamed)'}: {d.status or 'no run recorded'}, {d.runs} run(s), "
             f"started {_iso(d.started_at) or '-'}, ended {_iso(d.ended_at) or '-'}")
    parts = [f"## {title}" if md else title, ""]
    budget = [("budget_usd", d.budget)] if d.budget is not None else []
    rows = [(LABELS.get(k, k), _fmt_total(k, v)) for k, v in list(s.totals) + budget]
    parts.append(tabulate(rows, headers=["total", "value"], tablefmt=fmt,
                          disable_numparse=True))
    cols = ["tasks", "images", "done", "failed", "pending", "in doubt", "est. USD",
            "actual USD"]
    for axis, groups in s.breakdown:
        parts += ["", head(f"by {axis}"), ""]
        rows = [(g.value, g.tasks, g.images, *g.counts, usd(g.estimated), usd(g.actual))
                for g in groups]
        parts.append(tabulate(rows, headers=[axis, *cols], tablefmt=fmt, disable_numparse=True,
                              colalign=("left",) + ("right",) * len(cols)))
    if s.errors:
        parts += ["", head("by error code"), ""]
        parts.append(tabulate(s.errors, headers=["code", "category", "tasks"], tablefmt=fmt,
                              disable_numparse=True, colalign=("left", "left", "right")))
    if s.failures:
        parts += ["", head("failures"), ""]
        rows = [(t.variant_id, t.status, t.error_code or "-",
                 _cell(t.error_message or "-", md)) for t in s.failures]
        parts.append(tabulate(rows, headers=["variant", "status", "code", "message"],
                              tablefmt=fmt, disable_numparse=True))
    if s.review is not None and s.review.exists:
        parts += _review_text(s, fmt, head)
    for w in d.warnings:
        parts += ["", f"note: {w}"]
    return "\n".join(parts) + "\n"


def rate_text(rate: float | None) -> str:
    """An approval rate as a whole percentage ("-" before any decision)."""
    return "-" if rate is None else f"{round(rate * 100)}%"


def _review_text(s: Summary, fmt: str, head: Callable[[str], str]) -> list[str]:
    r = s.review
    assert r is not None
    c = r.totals
    line = (f"{c.approved} approved, {c.rejected} rejected, {c.pending} pending, "
            f"{c.stale} stale; approval rate {rate_text(c.rate)} (approved of decided)")
    extra = [f"{r.missing} image(s) missing on disk"] if r.missing else []
    if r.orphans:
        extra.append(f"{r.orphans} decision(s) for images this run does not have")
    parts = ["", head(f"review ({shown(r.file)})"), "", line + "".join(f"; {e}" for e in extra)]
    cols = ["approved", "rejected", "pending", "stale", "approval rate"]
    for axis, groups in r.by:
        if axis not in s.by:
            continue
        parts += ["", head(f"review by {axis}"), ""]
        rows = [(v, g.approved, g.rejected, g.pending, g.stale, rate_text(g.rate))
                for v, g in groups]
        parts.append(tabulate(rows, headers=[axis, *cols], tablefmt=fmt, disable_numparse=True,
                              colalign=("left",) + ("right",) * len(cols)))
    return parts


def _cell(text: str, md: bool) -> str:
    text = " ".join(text.split())
    return text.replace("|", "\\|") if md else text


def to_csv(s: Summary) -> str:
    """One row per result image: variant, status, axes, index, path, sha256, bytes, cost,
    seed, image UUID, task key, review verdict and note (empty when the spec is unknown)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    axes = list(s.data.axes)
    w.writerow(["variant", "status", *axes, "image_index", "path", "sha256", "bytes",
                "cost_usd", "seed", "image_uuid", "task_key", "verdict", "note"])
    for t in s.data.tasks:
        for i in t.images:
            verdict, note = _verdict(s, t, i)
            w.writerow([t.variant_id, t.status, *(t.axis(a) for a in axes), i.index,
                        i.path or "", i.sha256 or "", "" if i.bytes is None else i.bytes,
                        usd(i.cost) or "", i.seed or "", i.image_uuid or "", t.task_key,
                        verdict or "", note or ""])
    return buf.getvalue()


def dump_json(doc: dict[str, Any]) -> str:
    """Indented JSON with one task per line (C-encoded: 10k tasks stay well under a second)."""
    doc = dict(doc)
    tasks = doc.pop("tasks", [])
    head = json.dumps(doc, indent=2)
    body = ",\n".join("    " + json.dumps(t) for t in tasks)
    return f'{head[:-2]},\n  "tasks": [' + (f"\n{body}\n  ]" if tasks else "]") + "\n}\n"


def render(s: Summary, fmt: str) -> str:
    """Render a summary as table, markdown, json or csv."""
    if fmt == "table":
        return _text(s, "simple")
    if fmt == "markdown":
        return _text(s, "github")
    if fmt == "json":
        return dump_json(to_json(s))
    if fmt == "csv":
        return to_csv(s)
    raise UsageError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
