"""Compare two runs: variants added, removed and changed, and cost/failure deltas per axis.

Variants are matched by id. A variant `changed` when its request differs (another task_key),
its output images differ (sha256 of the files, in result order) or its status differs; a
changed request names its fields (dotted paths, as `plan` does: positivePrompt,
providerSettings.ideogram.styleType, inputs.seedImage; `task key` when no field differs).
Pure over two `report.Summary` values. JSON shape (`to_json`):

    {"format": "specrunner.diff/1",
     "a": {"name", "status", "tasks"}, "b": {...},
     "added": [variant, ...], "removed": [variant, ...],
     "changed": [{"variant", "request_changed", "request_fields": [path, ...],
                  "outputs_changed", "status": [a, b], "actual_usd": [a, b]}, ...],
     "unchanged": int,
     "totals": {"tasks" | "succeeded" | "failed" | "images": [a, b, delta],
                "estimated_usd" | "actual_usd": [a, b, delta]},
     "by_axis": {axis: [{"value", "tasks": [a, b], "failed": [a, b, delta],
                         "actual_usd": [a, b, delta]}, ...]}}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from tabulate import tabulate

from specrunner.errors import UsageError
from specrunner.money import usd
from specrunner.report.cells import cell
from specrunner.report.summary import (
    Summary,
    TaskInfo,
    actual_cost,
    group,
    provenance_of,
    varying_axes,
)

FORMATS = ("table", "markdown", "json")


@dataclass(frozen=True)
class Change:
    """How one variant present in both runs differs; `request_fields` names the request
    fields that changed (empty when the request did not)."""

    variant: str
    request_changed: bool
    outputs_changed: bool
    status: tuple[str, str]
    cost: tuple[Decimal, Decimal]
    request_fields: tuple[str, ...] = ()

    def kinds(self) -> str:
        """What changed, as the table shows it: `request: positivePrompt; outputs; status`."""
        parts = []
        if self.request_changed:
            parts.append("request: " + ", ".join(self.request_fields or ("task key",)))
        if self.outputs_changed:
            parts.append("outputs")
        if self.status[0] != self.status[1]:
            parts.append("status")
        return "; ".join(parts)


@dataclass(frozen=True)
class RunDiff:
    """The comparison of run A (before) with run B (after)."""

    a: Summary
    b: Summary
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[Change, ...]
    unchanged: int
    axes: tuple[str, ...]


def _hashes(t: TaskInfo) -> tuple[str | None, ...]:
    return tuple(i.sha256 for i in t.images)


def _fields(x: TaskInfo, y: TaskInfo) -> tuple[str, ...]:
    """The request fields that differ between two recorded tasks (none when either request
    is unknown or they are equal: then only the task key says it changed)."""
    if x.task_key == y.task_key or not x.request or not y.request:
        return ()
    from specrunner.plan.status import changed_fields  # the one definition, shared with plan

    return tuple(changed_fields(x.request, y.request))


def compare(a: Summary, b: Summary, by: Sequence[str] | None = None) -> RunDiff:
    """Compare two summaries; `by` defaults to the shared axes with 2+ values in either run.

    Raises UsageError for an axis neither run has.
    """
    ta = {t.variant_id: t for t in a.data.tasks}
    tb = {t.variant_id: t for t in b.data.tasks}
    changed, same = [], 0
    for vid, x in ta.items():
        y = tb.get(vid)
        if y is None:
            continue
        c = Change(vid, x.task_key != y.task_key,
                   bool(x.images and y.images and _hashes(x) != _hashes(y)),
                   (x.status, y.status), (actual_cost(x), actual_cost(y)), _fields(x, y))
        if c.request_changed or c.outputs_changed or x.status != y.status:
            changed.append(c)
        else:
            same += 1
    if by is None:
        axes = tuple(varying_axes([ax for ax in b.data.axes if ax in a.data.axes],
                                  a.data.tasks + b.data.tasks))
    else:
        for ax in by:
            if ax not in a.data.axes and ax not in b.data.axes:
                raise UsageError(f"unknown axis {ax!r}; axes: "
                                 + ", ".join(dict.fromkeys(a.data.axes + b.data.axes)))
        axes = tuple(by)
    return RunDiff(a, b, tuple(v for v in tb if v not in ta), tuple(v for v in ta if v not in tb),
                   tuple(changed), same, axes)


def _totals(s: Summary) -> dict[str, Any]:
    t = dict(s.totals)
    return {k: t[k] for k in ("tasks", "images", "succeeded", "failed", "estimated_usd",
                              "actual_usd")}


def _triple(x: Any, y: Any) -> list[Any]:
    if isinstance(x, Decimal):
        return [usd(x), usd(y), usd(y - x)]
    return [x, y, y - x]


def _by_axis(d: RunDiff, axis: str) -> list[dict[str, Any]]:
    groups: dict[str, list[list[TaskInfo]]] = {}
    for side, s in enumerate((d.a, d.b)):
        for t in s.data.tasks:
            groups.setdefault(t.axis(axis), [[], []])[side].append(t)
    rows = []
    for value, (xs, ys) in groups.items():
        ga, gb = group(value, xs), group(value, ys)
        rows.append({"value": value, "tasks": [ga.tasks, gb.tasks],
                     "failed": _triple(ga.counts[1], gb.counts[1]),
                     "actual_usd": _triple(ga.actual, gb.actual)})
    return rows


def to_json(d: RunDiff) -> dict[str, Any]:
    """The documented JSON shape (see the module docstring)."""
    ta, tb = _totals(d.a), _totals(d.b)
    return {
        "format": "specrunner.diff/1",
        **{side: {"name": s.data.name, "status": s.data.status, "tasks": len(s.data.tasks),
                  "provenance": provenance_of(s.data)}
           for side, s in (("a", d.a), ("b", d.b))},
        "added": list(d.added), "removed": list(d.removed),
        "changed": [{"variant": c.variant, "request_changed": c.request_changed,
                     "request_fields": list(c.request_fields),
                     "outputs_changed": c.outputs_changed, "status": list(c.status),
                     "actual_usd": [usd(c.cost[0]), usd(c.cost[1])]} for c in d.changed],
        "unchanged": d.unchanged,
        "totals": {k: _triple(ta[k], tb[k]) for k in ta},
        "by_axis": {axis: _by_axis(d, axis) for axis in d.axes},
    }


def _origin(prov: dict[str, Any] | None) -> str | None:
    if not prov:
        return None
    from specrunner.provenance import Provenance

    return Provenance.from_json(prov).short()


def _signed(v: Any) -> str:
    text = str(v)
    return text if text.startswith("-") or text in ("0", "0.00") else f"+{text}"


def _text(d: RunDiff, fmt: str) -> str:
    doc = to_json(d)
    md = fmt == "github"

    def table(rows: Any, headers: Sequence[Any], **options: Any) -> str:
        # Every cell through cells.cell: variant ids and axis values are data, not markup.
        return tabulate([[cell(x, md) for x in row] for row in rows],
                        headers=[cell(h, md) for h in headers], tablefmt=fmt,
                        disable_numparse=True, **options)

    head = (lambda t: f"### {cell(t, md)}") if md else (lambda t: t)
    a, b = doc["a"], doc["b"]
    title = (f"diff {a['name'] or 'A'} ({a['status']}, {a['tasks']} tasks) -> {b['name'] or 'B'} "
             f"({b['status']}, {b['tasks']} tasks): {len(d.added)} added, {len(d.removed)} "
             f"removed, {len(d.changed)} changed, {d.unchanged} unchanged")
    parts = [f"## {cell(title, md)}" if md else title, ""]
    pa, pb = (_origin(x["provenance"]) for x in (a, b))
    if pa or pb:  # where each side comes from; said plainly when the code or lock differ
        same = pa == pb
        parts += [cell(f"A: {pa or 'no provenance recorded'}", md),
                  cell(f"B: {pb or 'no provenance recorded'}"
                       + ("" if same else " (differs from A)"), md), ""]
    rows: list[tuple[Any, ...]] = [(k.replace("_usd", " (USD)"), x, y, _signed(z))
                                   for k, (x, y, z) in doc["totals"].items()]
    parts.append(table(rows, ["total", "A", "B", "delta"],
                       colalign=("left", "right", "right", "right")))
    variants = ([(v, "added", "", "") for v in d.added]
                + [(v, "removed", "", "") for v in d.removed]
                + [(c.variant, c.kinds(), f"{c.status[0]} -> {c.status[1]}",
                    f"{usd(c.cost[0])} -> {usd(c.cost[1])}") for c in d.changed])
    if variants:
        parts += ["", head("variants"), ""]
        parts.append(table(variants, ["variant", "change", "status", "USD"]))
    for axis, groups in doc["by_axis"].items():
        parts += ["", head(f"by {axis}"), ""]
        rows = [(g["value"], f"{g['tasks'][0]} -> {g['tasks'][1]}",
                 f"{g['failed'][0]} -> {g['failed'][1]}", _signed(g["failed"][2]),
                 f"{g['actual_usd'][0]} -> {g['actual_usd'][1]}", _signed(g["actual_usd"][2]))
                for g in groups]
        parts.append(table(rows, [axis, "tasks", "failed", "delta", "actual USD", "delta"],
                           colalign=("left",) + ("right",) * 5))
    return "\n".join(parts) + "\n"


def render(d: RunDiff, fmt: str) -> str:
    """Render a diff as table, markdown or json."""
    if fmt == "table":
        return _text(d, "simple")
    if fmt == "markdown":
        return _text(d, "github")
    if fmt == "json":
        return json.dumps(to_json(d), indent=2) + "\n"
    raise UsageError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
