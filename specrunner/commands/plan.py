"""`specrunner plan SPEC`: the exact requests a campaign will send, and what they cost.

Formats: `table` (default; the first --limit rows, totals, a per-axis breakdown), `markdown`
(the same in GitHub tables), `csv` (one row per task, always complete) and `json` (always
complete; one task per line):

    {"spec": path, "name": str, "model": str, "price_per_image": "0.08",
     "totals": {"tasks": int, "images": int, "est_cost": "0.96", "max_usd": "1.00",
                "max_tasks": int},
     "breakdown": {axis: [{"value", "tasks", "images", "est_cost"}, ...], ...},
     "tasks": [{"index" (0-based), "variant", "input", "prompt", "repeat" (1-based, as
                {repeat} in output names), "axes", "task_key", "task_uuid",
                "number_results", "est_cost", "outputs" (relative to output_dir),
                "local_inputs": {key: {"path", "sha256", "invert"}} (key: seedImage,
                maskImage, or the request path of a style reference image, e.g.
                providerSettings.ideogram.styleReferenceImages[0]),
                "request" (the body item sent, local files as "local:<sha256>")}, ...],
     "output_dir": path}

Money is a decimal string. `--explain VARIANT` tells where a variant came from (axis
values, product index, include entries) or which exclude entry removed it.

When the run folder (`--out DIR`, default the spec's output.dir) holds a run record, every
task also gets a status (plan_status.py: `done`, `new`, `changed: <fields>`, `retry: <code>`,
`in doubt: reconcile first`, `pending`): a `status` column in table, markdown and csv, a
`"status"` member of each JSON task, a line "N done, M would run (est. $X)" under the
summary, and in JSON `"record": {"path", <status kind>: count..., "would_run",
"est_cost_to_run", "not_in_plan"}`. Without a record these are absent.
Exit codes: 0 ok, 2 invalid spec, over budget or task cap, unknown variant, or a missing
(with --out) or damaged run record.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from specrunner.errors import (
    EXIT_INVALID,
    EXIT_OK,
    Diagnostic,
    PlanLimitError,
    SpecError,
    UsageError,
)

FORMATS = ("table", "json", "csv", "markdown", "github")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `plan`."""
    parser.add_argument("spec", metavar="SPEC", help="the campaign spec (YAML)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output format (default: table)")
    parser.add_argument("--explain", metavar="VARIANT",
                        help="show which matrix values and include/exclude rules made VARIANT")
    parser.add_argument("--max-usd", metavar="USD",
                        help="budget for this plan, overriding the spec's")
    parser.add_argument("--max-tasks", metavar="N", help="task cap, overriding the spec's")
    parser.add_argument("--limit", metavar="N", default="50",
                        help="table/markdown rows to show (default 50)")
    parser.add_argument("--all", action="store_true", help="show every row of the table")
    parser.add_argument("--out", metavar="DIR",
                        help="run folder whose record says what is done (default: the spec's "
                        "output.dir; a status column appears when it holds a run record)")
    parser.add_argument("--shard", metavar="K/N",
                        help="only shard K of N (1-based), with its totals and its share of "
                        "the budget (--max-usd: the shard's own budget)")


def _positive_decimal(text: str, option: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0:
        raise UsageError(f"{option} must be a positive number of dollars, not {text!r}")
    return value


def _positive_int(text: str, option: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise UsageError(f"{option} must be a whole number >= 1, not {text!r}")
    return int(text)


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Load, plan and print; SpecError/PlanLimitError propagate to the CLI (exit 2), except
    with --format github, which prints them as workflow commands."""
    import dataclasses

    from specrunner import plan as planmod
    from specrunner import spec as specmod
    from specrunner.annotations import DiagnosticWriter
    from specrunner.plan.check import limit_diagnostic
    from specrunner.plan.reproducibility import reproducibility_diagnostics
    from specrunner.plan.shard import Shard, describe, shard_of, shard_plan

    shard = None if args.shard is None else Shard.parse(args.shard)
    limit = None if args.all else _positive_int(args.limit, "--limit")
    overrides: dict[str, Any] = {}
    cap = None if args.max_usd is None else _positive_decimal(args.max_usd, "--max-usd")
    if cap is not None:
        # with --shard, --max-usd is the shard's budget, not the whole campaign's
        overrides["max_usd"] = cap if shard is None else Decimal("Infinity")
    if args.max_tasks is not None:
        overrides["max_tasks"] = _positive_int(args.max_tasks, "--max-tasks")
    secrets = (os.environ.get("RUNWARE_API_KEY", ""),)
    github = args.format == "github"
    # Warnings go where they do not spoil the output: stderr, except as workflow commands.
    writer = DiagnosticWriter(out if github else err, "github" if github else "text",
                              redact=secrets)
    try:
        spec, warnings = specmod.load_spec_checked(args.spec, secrets=secrets)
        if overrides:
            spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, **overrides))
        plan = planmod.build_plan(spec)
        whole, plan = plan, plan if shard is None else shard_plan(plan, shard, cap)
    except SpecError as exc:
        if not github:
            raise
        writer.write(exc.diagnostics)
        return EXIT_INVALID
    except PlanLimitError as exc:
        if not github:
            raise  # it carries its hint (errors.LIMIT_HINTS) to the CLI
        writer.write([limit_diagnostic(exc, spec)])
        return EXIT_INVALID
    if args.explain is not None:
        status, text = planmod.explain(whole, args.explain)
        if status == "unknown":
            print(f"error: {text}", file=err)
            return EXIT_INVALID
        print(text, file=out)
        if shard is not None and status == "found":
            keys = [t.task_key for t in whole.tasks if t.variant_id == args.explain]
            print(f"  shard: {', '.join(f'{shard_of(k, shard.n)}/{shard.n}' for k in keys)}"
                  f" (this is {shard})", file=out)
        return EXIT_OK
    record = _record_status(plan, args.out)  # RecordError before any other output
    diagnostics = [*warnings, *reproducibility_diagnostics(plan)]
    writer.write(diagnostics)
    note = None if shard is None else describe(whole, plan, shard, cap is not None)
    if github:
        write_github(plan, out, record, note)
        return EXIT_OK
    if note is not None and args.format in ("table", "markdown"):
        print(note, file=out)
    if args.format == "markdown":
        write_markdown(plan, out, limit, record, diagnostics)
    elif args.format == "json":
        write_json(plan, out, limit, record, diagnostics,
                   None if shard is None else {"shard": str(shard), "of_tasks": len(whole.tasks),
                                               "of_est_cost": str(whole.total_cost),
                                               "budget": "max_usd" if cap else "share"})
    else:
        {"table": write_table, "csv": write_csv}[args.format](plan, out, limit, record)
    return EXIT_OK


def _record_status(plan: Any, out_dir: str | None) -> Any:
    """The plan against the run record of `out_dir` (given: it must hold one) or of the
    spec's output folder (when it holds one); None without a record to compare."""
    from specrunner.plan import status as plan_status
    from specrunner.record import record_path

    run_dir = Path(out_dir).resolve() if out_dir else plan.spec.output.dir
    if out_dir is None and not record_path(run_dir).exists():
        return None
    return plan_status.compare(plan, run_dir)  # RecordError (exit 2) if missing or damaged


def _style(request: Any) -> str:
    style = request.get("providerSettings", {}).get("ideogram", {}).get("styleType")
    return "-" if style is None else str(style)


def _rows(plan: Any, limit: int | None, record: Any) -> list[list[Any]]:
    from specrunner.money import money

    tasks = plan.tasks if limit is None else plan.tasks[:limit]
    rows = [[t.variant_id, t.input_name, t.prompt_name, _style(t.request), t.number_results,
             money(t.est_cost)] for t in tasks]
    if record is not None:
        for row, status in zip(rows, record.statuses, strict=True):  # statuses: one per task
            row.append(status.text)
    return rows


def _headers(record: Any) -> tuple[list[str], tuple[str, ...]]:
    if record is None:
        return HEADERS, ROW_ALIGN
    return [*HEADERS, "status"], (*ROW_ALIGN, "left")


HEADERS = ["variant", "input", "prompt", "style", "results", "est. cost"]
AXIS_HEADERS = ["axis", "value", "tasks", "images", "est. cost"]
ROW_ALIGN = ("left", "left", "left", "left", "right", "right")
AXIS_ALIGN = ("left", "left", "right", "right", "right")


def _summary(plan: Any) -> str:
    from specrunner.money import money

    b = plan.spec.budget
    return (f"plan {plan.spec.name}: {len(plan.tasks):,} tasks, {plan.total_images:,} images, "
            f"estimated {money(plan.total_cost)} (budget {money(b.max_usd)}, "
            f"max {b.max_tasks:,} tasks)")


def _axis_rows(plan: Any) -> list[list[Any]]:
    from specrunner.money import money
    from specrunner.plan.identity import text_of

    rows = []
    for key, values in plan.breakdown:
        for av in values:
            shown = "(not set)" if av.value is None else text_of(av.value)
            rows.append([key, shown, av.tasks, av.images, money(av.cost)])
    return rows


def _hidden(plan: Any, limit: int | None) -> str | None:
    hidden = 0 if limit is None else max(0, len(plan.tasks) - limit)
    if not hidden:
        return None
    return (f"({hidden:,} more tasks not shown; --all shows them, --format json or csv "
            "lists them all)")


def _record_line(record: Any) -> str:
    return f"{record.summary()} (record: {record.record})"


def _tabulate(rows: list[list[Any]], headers: list[str], fmt: str, align: Any) -> str:
    """A table whose every cell is one line, and in Markdown literal text (axis values are
    the user's: `|`, line breaks or HTML in them must not change the table)."""
    from tabulate import tabulate  # not at the top: `--help` need not import it

    from specrunner.report.cells import cell

    md = fmt == "github"
    return tabulate([[cell(x, md) for x in row] for row in rows],
                    headers=[cell(h, md) for h in headers], tablefmt=fmt,
                    disable_numparse=True, colalign=align)


def write_table(plan: Any, out: TextIO, limit: int | None, record: Any = None) -> None:
    """The human view: summary, task rows (up to `limit`), per-axis breakdown; with a run
    record, each task's status and a line counting what is done and what would run."""
    print(_summary(plan), file=out)
    if record is not None:
        print(_record_line(record), file=out)
    print(file=out)
    headers, align = _headers(record)
    print(_tabulate(_rows(plan, limit, record), headers, "simple", align), file=out)
    note = _hidden(plan, limit)
    if note:
        print(note, file=out)
    print(file=out)
    print("by axis:", file=out)
    print(_tabulate(_axis_rows(plan), AXIS_HEADERS, "simple", AXIS_ALIGN), file=out)


def write_markdown(plan: Any, out: TextIO, limit: int | None, record: Any = None,
                   diagnostics: Sequence[Diagnostic] = ()) -> None:
    """The table view as GitHub-flavoured Markdown; warnings first, in a GitHub alert."""
    from specrunner.report.cells import markdown

    print(f"## {markdown(_summary(plan))}", file=out)
    print(file=out)
    warnings = [d for d in diagnostics if d.severity == "warning"]
    if warnings:
        print("> [!WARNING]", file=out)
        for d in warnings:
            hint = f" ({markdown(d.hint)})" if d.hint else ""
            print(f"> - `{d.loc or d.path}` {markdown(d.message)}{hint}", file=out)
        print(file=out)
    if record is not None:
        print(f"{markdown(_record_line(record))}\n", file=out)
    headers, align = _headers(record)
    print(_tabulate(_rows(plan, limit, record), headers, "github", align), file=out)
    note = _hidden(plan, limit)
    if note:
        print(f"\n{note}", file=out)
    print("\n### By axis\n", file=out)
    print(_tabulate(_axis_rows(plan), AXIS_HEADERS, "github", AXIS_ALIGN), file=out)


def _axis_keys(plan: Any) -> list[str]:
    return [k for k, _ in plan.breakdown if k not in ("input", "prompt")]


def write_csv(plan: Any, out: TextIO, limit: int | None = None, record: Any = None) -> None:
    """One row per task (always all of them): ids, axes, cost, output, identity, prompt, and
    with a run record its status."""
    from specrunner.plan.identity import text_of

    axes = _axis_keys(plan)
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["index", "variant", "input", "prompt", "repeat", *axes, "number_results",
                "est_cost", "outputs", "task_uuid", "task_key", "positive_prompt",
                *(["status"] if record is not None else [])])
    for i, t in enumerate(plan.tasks):
        w.writerow([t.index, t.variant_id, t.input_name, t.prompt_name, t.repeat + 1,
                    *(text_of(t.axes[k]) if k in t.axes else "" for k in axes),
                    t.number_results, str(t.est_cost), ";".join(t.output_paths()),
                    t.task_uuid, t.task_key, t.request["positivePrompt"],
                    *([record.statuses[i].text] if record is not None else [])])


def task_json(t: Any) -> dict[str, Any]:
    """One task as the JSON format documents it."""
    return {
        "index": t.index, "variant": t.variant_id, "input": t.input_name,
        "prompt": t.prompt_name, "repeat": t.repeat + 1, "axes": dict(t.axes),
        "task_key": t.task_key, "task_uuid": t.task_uuid, "number_results": t.number_results,
        "est_cost": str(t.est_cost), "outputs": t.output_paths(),
        "local_inputs": {k: {"path": str(v.path), "sha256": v.sha256, "invert": v.invert}
                         for k, v in t.local_inputs.items()},
        "request": dict(t.request),
    }


def write_json(plan: Any, out: TextIO, limit: int | None = None, record: Any = None,
               diagnostics: Sequence[Diagnostic] = (), shard: Any = None) -> None:
    """The whole plan as one JSON document (always all tasks), streamed one task a line;
    `shard`: the "shard" member of a shard's plan."""
    spec = plan.spec
    head = {
        "spec": str(spec.path), "name": spec.name, "model": spec.model,
        "price_per_image": str(spec.prices.get(spec.model)),
        "output_dir": str(spec.output.dir),
        "totals": {"tasks": len(plan.tasks), "images": plan.total_images,
                   "est_cost": str(plan.total_cost), "max_usd": str(spec.budget.max_usd),
                   "max_tasks": spec.budget.max_tasks},
        "breakdown": {k: [{"value": av.value, "tasks": av.tasks, "images": av.images,
                           "est_cost": str(av.cost)} for av in vals]
                      for k, vals in plan.breakdown},
        "diagnostics": [d.to_json() for d in diagnostics],
    }
    if record is not None:
        head["record"] = {"path": str(record.record), **record.counts(),
                          "would_run": sum(s.would_run for s in record.statuses),
                          "est_cost_to_run": str(record.to_run_cost),
                          "not_in_plan": record.not_in_plan}
    if shard is not None:
        head["shard"] = shard
    text = json.dumps(head, ensure_ascii=False)
    out.write(text[:-1] + ', "tasks": [')
    for i, t in enumerate(plan.tasks):
        item = task_json(t)
        if record is not None:
            item["status"] = record.statuses[i].text
        out.write(("\n" if i == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
    out.write("\n]}\n")


def write_github(plan: Any, out: TextIO, record: Any = None, note: str | None = None) -> None:
    """The plan's summary (and record status) as a GitHub notice on the spec, for CI logs;
    the diagnostics were written before it."""
    from specrunner.annotations import workflow_command

    text = _summary(plan) + (f"\n{_record_line(record)}" if record is not None else "")
    text += f"\n{note}" if note is not None else ""
    print(workflow_command("notice", text, file=plan.spec.loc("$").file,
                           title="specrunner plan"), file=out)
