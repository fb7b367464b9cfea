"""Run record -> what reviewers read: totals, per-axis breakdowns, failures; table/JSON/CSV/MD.

`load_run(run_dir)` reads the record's snapshot (record.read_snapshot: read-only, safe while
a run writes it) into a `RunData`; `summarize(data, by)` computes a `Summary`;
`render(summary, fmt)` formats it. Pure apart from that read: no httpx/anyio, no re-planning.
The current tasks are those of the last run's plan (or of `plan`, when given); recorded tasks
of earlier plans are reported apart as superseded. Each task's axes are what its plan
recorded: input, prompt and its combination's values (a field a combination does not set
reads as the value its request carries); records made before axes were recorded fall back to
the request fields whose values differ between tasks.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from tabulate import tabulate

from specrunner import runware
from specrunner.errors import UsageError
from specrunner.money import usd
from specrunner.plan import identity
from specrunner.plan.reproducibility import magic_prompt_of
from specrunner.record import IN_DOUBT_STATES, RunRow, Snapshot, TaskRow, read_snapshot
from specrunner.redact import Redactor
from specrunner.report.review import ReviewSummary, shown

FORMATS = ("table", "markdown", "json", "csv")
STATUS_OF = {"done": "done", "failed": "failed", "planned": "pending",
             **dict.fromkeys(sorted(IN_DOUBT_STATES), "in_doubt")}
STATUSES = ("done", "failed", "pending", "in_doubt")


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
    provider_prompt: str | None = None  # the prompt the provider says it used, if it said


@dataclass(frozen=True)
class InputRef:
    """A seed or mask of a task: a local file (absolute path, sha256) or a URL/UUID as text."""

    field: str  # seedImage | maskImage | a dotted request path
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
    prompt_name: str | None = None
    request: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def prompt(self) -> str | None:
        """The prompt text the task sends."""
        value = self.request.get("positivePrompt")
        return value if isinstance(value, str) else None

    @property
    def magic_prompt(self) -> str | None:
        """ON or AUTO: the provider may have rewritten the prompt (None: no such setting)."""
        return magic_prompt_of(self.request)

    @property
    def provider_prompt(self) -> str | None:
        """The prompt the provider says it used, when an answer said and it differs."""
        said = [i.provider_prompt for i in self.images if i.provider_prompt]
        sent = self.prompt if said else None
        return next((p for p in said if p != sent), None)

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
    superseded: tuple[TaskInfo, ...] = ()  # recorded tasks of earlier plans
    snapshot: Snapshot | None = field(default=None, compare=False, repr=False)

    @property
    def run_rows(self) -> tuple[RunRow, ...]:
        """Every run of the folder, in order (each one's spend, provenance, shard)."""
        return self.snapshot.runs if self.snapshot is not None else ()


def category_of(code: str) -> str:
    """The category of an error code (the API's, or `runner` for specrunner's own)."""
    return runware.classify(code).value


def text_of(value: Any) -> str:
    """How an axis value reads in a report (true/false, 2, DESIGN; None -> "-")."""
    return "-" if value is None else identity.text_of(value)


def _leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            if not prefix and k in runware.RUNNER_OWNED:
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
    names = {k: (n if leaf.count(n) == 1 else k) for k, n in zip(varying, leaf, strict=True)}
    return [names[k] for k in varying], [{names[k]: text_of(f.get(k)) for k in varying}
                                          for f in flat]


def _recorded_axes(rows: Sequence[TaskRow], requests: Sequence[Mapping[str, Any]]
                   ) -> tuple[list[str], list[tuple[tuple[str, str], ...]]]:
    """Axis names (input, prompt, then every combination key in order of first appearance)
    and each task's values, from what the plan recorded. A key a task's combination does not
    set reads as the value its request carries for that field, or "-" (only those tasks'
    requests are read)."""
    names = ["input", "prompt"]
    key_sets = set()
    for r in rows:
        keys = tuple(r.axes or ())
        if keys not in key_sets:  # (the combinations of a matrix share a few key sets)
            key_sets.add(keys)
            names += [k for k in keys if k not in names]
    fields: dict[str, dict[str, tuple[str, ...]]] = {}
    pairs: dict[str, dict[Any, tuple[str, str]]] = {k: {} for k in names}  # shared values
    out = []
    for r, req in zip(rows, requests, strict=True):
        axes = r.axes or {}
        values = []
        for k in names:
            if k == "input":
                v: Any = r.input_name
            elif k == "prompt":
                v = r.prompt_name
            elif k in axes:
                v = axes[k]
            else:
                model = str(req.get("model", ""))
                if model not in fields:
                    from specrunner import models  # (only here: jsonschema is slow to import)

                    fields[model] = models.field_paths(model) if model in models.MODELS else {}
                v = req if k in fields[model] else None
                for part in fields[model].get(k, ()):
                    v = v.get(part) if isinstance(v, Mapping) else None
            text = v if type(v) is str else text_of(v)
            pair = pairs[k].get(text)
            if pair is None:
                pair = pairs[k][text] = (k, text)
            values.append(pair)
        out.append(tuple(values))
    return names, out


def _input_refs(row: TaskRow) -> tuple[InputRef, ...]:
    refs = []
    for name, ref in sorted((row.inputs or {}).items(), key=lambda kv: (kv[0] != "seedImage",
                                                                        kv[0] != "maskImage",
                                                                        kv[0])):
        refs.append(InputRef(name, str(ref.get("kind")), str(ref.get("value")),
                             ref.get("sha256"),
                             "black-edits" if ref.get("inverted") else "white-edits"))
    return tuple(refs)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it


def _spec_name(text: str | None) -> str | None:
    try:
        doc = yaml.load(text, Loader=_Loader) if text else None
    except yaml.YAMLError:
        return None
    name = doc.get("name") if isinstance(doc, dict) else None
    return name if isinstance(name, str) else None


def load_run(run_dir: Path, plan: Any = None, warnings: Sequence[str] = (),
             redact: Redactor | None = None) -> RunData:
    """Read a run record (a read-only snapshot) into RunData; RecordError if it is unusable.

    `plan`: a Plan whose tasks are the current ones (default: the last run's plan).
    `redact`: applied to every message from a server (default: credentials by their form;
    pass Redactor([key]) to remove a known key too).
    """
    return from_snapshot(read_snapshot(run_dir), plan, warnings, redact)


def from_snapshot(snap: Snapshot, plan: Any = None, warnings: Sequence[str] = (),
                  redact: Redactor | None = None) -> RunData:
    """RunData from a record's snapshot (see `load_run`)."""
    return _from_snapshot(snap, plan, warnings, redact or Redactor())


def _from_snapshot(snap: Snapshot, plan: Any, warnings: Sequence[str],
                   redact: Redactor) -> RunData:
    current = ({t.task_key for t in plan.tasks} if plan is not None
               else set(snap.plan_keys() or ()) or None)
    rows = [r for r in snap.tasks if current is None or r.task_key in current]
    old = [r for r in snap.tasks if current is not None and r.task_key not in current]
    # Every request is read (the notes ask each its magicPrompt): parsed here, with the
    # GC paused, where parsing each when first read cost twice as much.
    requests = [snap.request(r) for r in rows + old]
    notes = list(warnings)
    if all(r.axes is not None for r in rows + old):
        axis_names, values = _recorded_axes(rows + old, requests)
    else:
        axis_names, fallback = _fallback_axes(requests)
        values = [tuple((k, f.get(k, "-")) for k in axis_names) for f in fallback]
        notes.append("this record predates recorded axes: they come from the requests")
    refs: dict[int, tuple[InputRef, ...]] = {}  # by inputs object: the snapshot shares them
    infos = [_info(snap, r, req, axes, redact, refs)
             for r, req, axes in zip(rows + old, requests, values, strict=True)]
    runs = snap.runs
    wall = 0.0
    for run in runs:
        end = run.ended_at if run.ended_at is not None else (run.last_seen or run.started_at)
        wall += max(0.0, end - run.started_at)
    last = runs[-1] if runs else None
    return RunData(
        name=(plan.spec.name if plan is not None else _spec_name(snap.spec_text)),
        spec_path=last.spec_path if last else None, status=last.status if last else None,
        runs=len(runs), started_at=runs[0].started_at if runs else None,
        ended_at=last.ended_at if last else None, wall_s=wall,
        budget=last.max_usd if last else None, axes=tuple(axis_names),
        tasks=tuple(infos[:len(rows)]), request_latencies=snap.request_latencies,
        new_uuids=snap.new_uuids, warnings=tuple(notes), superseded=tuple(infos[len(rows):]),
        snapshot=snap)


def _info(snap: Snapshot, r: TaskRow, request: Mapping[str, Any],
          axes: tuple[tuple[str, str], ...], redact: Redactor,
          refs: dict[int, tuple[InputRef, ...]]) -> TaskInfo:
    images = tuple([Image(x.index, x.output_path, x.sha256, x.bytes, x.cost, x.seed,
                          x.image_uuid, x.provider_prompt)
                    for x in snap.results.get(r.task_key, ())])
    first, done = snap.first_send.get(r.task_key), snap.done_at.get(r.task_key)
    if r.outputs:  # one output name per image asked: the plan's numberResults
        nres: Any = len(r.outputs)
    else:
        nres = request.get("numberResults", 1)
    inputs = refs.get(id(r.inputs))
    if inputs is None:
        inputs = refs[id(r.inputs)] = _input_refs(r)
    return TaskInfo(
        r.index, r.variant_id, r.task_key, r.state, STATUS_OF.get(r.state, "in_doubt"), axes,
        r.est_cost, r.cost, nres if isinstance(nres, int) else 1, images, r.error_code,
        None if r.error_message is None else redact(r.error_message),
        snap.sends.get(r.task_key, 0),
        done - first if first is not None and done is not None else None,
        r.input_name, inputs, r.prompt_name, request)


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
    totals: Mapping[str, Any]  # in the order reports show them
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
    """What the provider reported charging for a task (0 when it reported nothing: see
    `unreported` for the images whose cost is unknown)."""
    if task.cost is not None:
        return task.cost
    return sum((i.cost for i in task.images if i.cost is not None), Decimal(0))


def unreported(task: TaskInfo) -> int:
    """The task's images whose cost the provider did not report."""
    if task.cost is not None:
        return 0
    return sum(i.cost is None for i in task.images)


def group(value: str, tasks: Sequence[TaskInfo]) -> Group:
    """The figures of `tasks`: count, images, tasks per status, estimated and actual cost."""
    return _group(value, [_facts(t) for t in tasks])


def _facts(t: TaskInfo) -> tuple[str, int, Decimal, Decimal]:
    """What `group` adds up of a task: status, images, estimated and actual cost."""
    return t.status, len(t.images), t.est_cost, t.cost if t.cost is not None else actual_cost(t)


def _group(value: str, facts: Sequence[tuple[str, int, Decimal, Decimal]]) -> Group:
    counts = dict.fromkeys(STATUSES, 0)
    images, estimated, actual = 0, Decimal(0), Decimal(0)
    for status, n, est, cost in facts:  # one pass, in task order
        if status in counts:
            counts[status] += 1
        images += n
        estimated += est
        actual += cost
    return Group(value, len(facts), images, tuple(counts.values()),  # type: ignore[arg-type]
                 estimated, actual)


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
    # Each task's value of every axis, as TaskInfo.axis reads it, in one pass: a dict per
    # task, not one per call of axis()
    column: dict[str, list[str]] = {a: [] for a in data.axes}
    for t in tasks:
        values = dict(t.axes)
        for axis, out in column.items():
            out.append(values.get(axis, "-"))
    if by is None:  # varying_axes
        by = [a for a in data.axes if len(set(column[a])) > 1]
    check_axes(by, data.axes)
    facts = [_facts(t) for t in tasks]  # (read once for every axis)
    breakdown = []
    for axis in by:
        groups: dict[str, list[tuple[str, int, Decimal, Decimal]]] = {}
        for v, f in zip(column[axis], facts, strict=True):
            groups.setdefault(v, []).append(f)
        breakdown.append((axis, tuple(_group(v, fs) for v, fs in groups.items())))
    failed = [t for t in tasks if t.status == "failed"]
    cats: dict[str, int] = {}
    for t in failed:
        cats[t.category or "unknown"] = cats.get(t.category or "unknown", 0) + 1
    codes: dict[str, int] = {}
    for t in tasks:
        if t.error_code:
            codes[t.error_code] = codes.get(t.error_code, 0) + 1
    whole = _group("", facts)
    images, actual = whole.images, whole.actual
    done, n_failed, pending, in_doubt = whole.counts
    task_lat = [t.latency_s for t in tasks if t.latency_s is not None]
    unknown = sum(unreported(t) for t in tasks)
    known = images - unknown
    extra = sum(max(0, len(t.images) - t.number_results) for t in tasks)
    campaign = actual + sum((actual_cost(t) for t in data.superseded), Decimal(0))
    totals = dict((
        ("tasks", whole.tasks),
        ("images", images),
        ("images_refused", sum(max(0, t.number_results - len(t.images)) for t in tasks
                               if t.status == "done")),
        ("succeeded", done),
        ("failed", n_failed),
        ("pending", pending),
        ("in_doubt", in_doubt),
        ("failed_by_category", dict(sorted(cats.items()))),
        ("images_extra", extra),
        ("estimated_usd", whole.estimated),
        # None: the provider reported no cost at all (unknown, never $0.00)
        ("actual_usd", actual if known or not images else None),
        ("actual_unreported_images", unknown),
        ("spend_per_image_usd", (actual / known).quantize(Decimal("0.0001"))
         if known else None),
        ("campaign_usd", campaign if known or not images else None),
        ("retries", sum(max(0, t.sends - 1) for t in tasks)),
        ("new_uuids", data.new_uuids),
        ("wall_s", round(data.wall_s, 3)),
        ("request_latency_s", _lat(data.request_latencies)),
        ("task_latency_s", _lat(task_lat)),
    ))
    errors = tuple((c, category_of(c), n) for c, n in sorted(codes.items()))
    problems = [t for t in tasks if t.status not in ("done", "pending") or t.error_code]
    return Summary(data, tuple(by), totals, tuple(breakdown), errors, tuple(problems), review)


def _lat(values: Sequence[float]) -> dict[str, Any]:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return {"n": len(values), "p50": None if p50 is None else round(p50, 3),
            "p95": None if p95 is None else round(p95, 3)}


# -- formats -------------------------------------------------------------------------------
def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


LABELS = {"images_refused": "images refused (content policy)", "in_doubt": "in doubt",
          "images_extra": "images beyond numberResults",
          "actual_unreported_images": "images without a reported cost",
          "campaign_usd": "campaign spend (every run)", "price": "price per image",
          "provenance": "provenance",
          "failed_by_category": "failed by category", "estimated_usd": "estimated spend",
          "actual_usd": "actual spend", "spend_per_image_usd": "spend per image",
          "new_uuids": "fresh UUIDs (provider failures)", "wall_s": "wall time",
          "request_latency_s": "request latency", "task_latency_s": "task latency (send->done)",
          "budget_usd": "budget"}


def to_json(s: Summary) -> dict[str, Any]:
    """The documented JSON shape (see the module docstring)."""
    d = s.data
    totals = {k: (usd(v) if isinstance(v, Decimal) else v) for k, v in s.totals.items()}
    return {
        "format": "specrunner.report/1",
        "run": {"name": d.name, "spec_path": d.spec_path, "status": d.status, "runs": d.runs,
                "started_at": _iso(d.started_at), "ended_at": _iso(d.ended_at),
                "budget_usd": usd(d.budget), "notes": notes(s),
                "price": price_of(d), "provenance": provenance_of(d)},
        "totals": totals,
        "runs": [{"run_id": r.run_id, "started_at": _iso(r.started_at),
                  "ended_at": _iso(r.ended_at), "status": r.status, "shard": r.shard,
                  "spent_usd": usd(r.spent_usd), "git_commit": r.git_commit,
                  "git_dirty": r.git_dirty, "lock_sha256": r.lock_sha256}
                 for r in d.run_rows],
        "breakdown": {axis: [{"value": g.value, "tasks": g.tasks, "images": g.images,
                              **dict(zip(("succeeded", "failed", "pending", "in_doubt"),
                                         g.counts, strict=True)),
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
                   "sends": t.sends, "magic_prompt": t.magic_prompt,
                   "error": ({"code": t.error_code, "message": t.error_message}
                             if t.error_code else None),
                   "images": [{"index": i.index, "path": i.path, "sha256": i.sha256,
                               "bytes": i.bytes, "cost_usd": usd(i.cost), "seed": i.seed,
                               "provider_prompt": i.provider_prompt,
                               **verdict_json(s, t, i)}
                              for i in t.images]}
                  for t in d.tasks],
    }


def price_of(d: RunData) -> dict[str, str] | None:
    """The last run's price per image: {"table", "learned", "source"} (source: reported,
    unreported, or table when no answer came back); None for records without it."""
    rows = d.run_rows
    price = rows[-1].price if rows else None
    return dict(price) if price else None


def _price_text(price: dict[str, str] | None) -> str | None:
    if not price:
        return None
    table, learned = Decimal(price["table"]), Decimal(price["learned"])
    if price["source"] == "unreported":
        return f"${usd(table)} (table price: the provider reported no cost)"
    if learned != table:
        return f"${usd(learned)} as the provider billed it (table ${usd(table)})"
    return f"${usd(learned)}"


def provenance_of(d: RunData) -> dict[str, Any] | None:
    """The last run's provenance (git commit, what differed, lock, tool version), or None."""
    rows = d.run_rows
    return dict(rows[-1].provenance) if rows and rows[-1].provenance else None




def _provenance_text(prov: dict[str, Any] | None) -> str | None:
    if not prov:
        return None
    from specrunner.provenance import Provenance

    return Provenance.from_json(prov).short()


def notes(s: Summary) -> list[str]:
    """What a reader must not miss: superseded tasks, images beyond what was asked, costs the
    provider did not report, a run made from a dirty tree, and the record's own notes."""
    d, t = s.data, s.totals
    out = list(d.warnings)
    if d.superseded:
        spent = sum((actual_cost(x) for x in d.superseded), Decimal(0))
        out.append(f"{len(d.superseded)} recorded task(s) belong to earlier plans (superseded): "
                   f"not counted above; ${usd(spent)} of the campaign's spend")
    if t.get("images_extra"):
        n = sum(len(x.images) > x.number_results for x in d.tasks)
        out.append(f"{n} task(s) returned {t['images_extra']} image(s) beyond numberResults: "
                   "every one is kept, billed and counted")
    if t.get("actual_unreported_images"):
        out.append(f"the provider reported no cost for {t['actual_unreported_images']} "
                   "image(s): their spend is unknown (estimated at the table price)")
    rewritable = [x for x in d.tasks if x.magic_prompt in ("ON", "AUTO")]
    if rewritable:
        rewritten = sum(x.provider_prompt is not None for x in rewritable)
        out.append(f"{len(rewritable)} task(s) ran with magicPrompt ON or AUTO: the provider "
                   "may rewrite their prompts, so the same spec can give other images"
                   + (f"; it reported a rewritten prompt for {rewritten}" if rewritten else ""))
    prov = provenance_of(d)
    if prov and prov.get("dirty"):
        out.append("the last run was made from a dirty tree: its commit alone does not "
                   "reproduce it")
    return out


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

    def table(rows: Any, headers: Sequence[Any], **options: Any) -> str:
        # Every cell, header included, through _cell: values are data, never markup.
        return tabulate([[_cell(x, md) for x in row] for row in rows],
                        headers=[_cell(h, md) for h in headers], tablefmt=fmt,
                        disable_numparse=True, **options)

    head = (lambda t: f"### {_cell(t, md)}") if md else (lambda t: t)
    title = (f"run {d.name or '(unnamed)'}: {d.status or 'no run recorded'}, {d.runs} run(s), "
             f"started {_iso(d.started_at) or '-'}, ended {_iso(d.ended_at) or '-'}")
    parts = [f"## {_cell(title, md)}" if md else title, ""]
    extra: list[tuple[str, Any]] = [("budget_usd", d.budget)] if d.budget is not None else []
    price, prov = _price_text(price_of(d)), _provenance_text(provenance_of(d))
    extra += [("price", price)] if price else []
    extra += [("provenance", prov)] if prov else []
    t = s.totals
    rows: list[tuple[Any, ...]] = []
    for k, v in list(t.items()) + extra:
        if k in ("images_extra", "actual_unreported_images") and not v:
            continue  # only when there is something to say
        if k in ("actual_usd", "campaign_usd") and v is None:
            text = f"unknown (estimate ${usd(t['estimated_usd'])})"
        elif k == "actual_usd" and t.get("actual_unreported_images"):
            text = f"${usd(v)} + unknown for {t['actual_unreported_images']} image(s)"
        elif k == "spend_per_image_usd" and v is None and t.get("images"):
            text = "unknown"
        else:
            text = _fmt_total(k, v)
        rows.append((LABELS.get(k, k), text))
    parts.append(table(rows, ["total", "value"]))
    if len(d.run_rows) > 1:
        parts += ["", head("runs"), ""]
        rows = [(r.run_id, _iso(r.started_at) or "-", r.status or "-", r.shard or "-",
                 f"${usd(r.spent_usd)}" if r.spent_usd is not None else "-",
                 (r.git_commit or "-")[:12]) for r in d.run_rows]
        parts.append(table(rows, ["run", "started", "status", "shard", "spent", "commit"]))
    cols = ["tasks", "images", "done", "failed", "pending", "in doubt", "est. USD",
            "actual USD"]
    for axis, groups in s.breakdown:
        parts += ["", head(f"by {axis}"), ""]
        rows = [(g.value, g.tasks, g.images, *g.counts, usd(g.estimated), usd(g.actual))
                for g in groups]
        parts.append(table(rows, [axis, *cols], colalign=("left",) + ("right",) * len(cols)))
    if s.errors:
        parts += ["", head("by error code"), ""]
        parts.append(table(s.errors, ["code", "category", "tasks"],
                           colalign=("left", "left", "right")))
    if s.failures:
        parts += ["", head("failures"), ""]
        rows = [(t.variant_id, t.status, t.error_code or "-", t.error_message or "-")
                for t in s.failures]
        parts.append(table(rows, ["variant", "status", "code", "message"]))
    for w in notes(s):
        parts += ["", f"note: {_cell(w, md)}"]
    if s.review is not None and s.review.exists:
        parts += _review_text(s, table, head)
    return "\n".join(parts) + "\n"


def _cell(value: Any, md: bool) -> str:
    from specrunner.report import cells  # here, so this file's imports stay as they are

    return cells.cell(value, md)


def rate_text(rate: float | None) -> str:
    """An approval rate as a whole percentage ("-" before any decision)."""
    return "-" if rate is None else f"{round(rate * 100)}%"


def _review_text(s: Summary, table: Callable[..., str], head: Callable[[str], str]
                 ) -> list[str]:
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
        parts.append(table(rows, [axis, *cols], colalign=("left",) + ("right",) * len(cols)))
    return parts


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
