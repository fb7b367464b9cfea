"""`specrunner lock SPEC... [--check] [--format text|github]`: write or check lock files.

`lock` writes `<stem>.lock` beside each spec (plan/lock.py: deterministic TOML, one block
per task), leaving a lock that already holds the same bytes untouched. `lock --check`
compares each lock with its spec's plan and writes nothing. A `.lock` path stands for the
spec beside it (`x.yaml` or `x.yml`), so a pre-commit hook can pass changed lock files too.

Each spec is validated and planned first (diagnostics as `validate` prints them, warnings
included). Exit codes, the worst over all specs: 0 every lock written or current, 1 a lock is
stale (--check), 2 a spec is invalid, or a lock is missing or unreadable (--check), or cannot
be written. `--format github` prints diagnostics and every lock that is not current as
GitHub workflow commands (`::error file=SPEC,line=...::...`, on the spec, since the fix is
running `specrunner lock` on it).
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING, TextIO

from specrunner.errors import EXIT_INVALID, EXIT_OK

if TYPE_CHECKING:
    from specrunner.annotations import DiagnosticWriter
    from specrunner.plan import Plan
    from specrunner.plan.lock import LockStatus


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare lock's arguments."""
    parser.add_argument("specs", nargs="+", metavar="SPEC",
                        help="spec files (or their .lock files)")
    parser.add_argument("--check", action="store_true",
                        help="compare each lock with its spec; write nothing")
    parser.add_argument("--format", choices=("text", "github"), default="text",
                        help="output format (default: text; github: workflow commands)")


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Write (or with --check compare) the lock of every spec; the worst exit code."""
    from specrunner.annotations import DiagnosticWriter
    from specrunner.plan.check import check_spec
    from specrunner.plan.lock import spec_for_lock

    key = os.environ.get("RUNWARE_API_KEY", "")
    writer = DiagnosticWriter(out, args.format, redact=(key,) if key else ())
    codes, states = [], []
    paths: dict[str, None] = {}  # a spec and its lock may both be named: check it once
    for arg in args.specs:
        try:
            paths[str(spec_for_lock(arg))] = None
        except ValueError as exc:
            _problem(writer, str(exc), arg)
            codes.append(EXIT_INVALID)
            states.append("invalid")
    for path in paths:
        checked = check_spec(path, writer.secrets)
        writer.write(checked.diagnostics)
        if checked.plan is None:
            codes.append(EXIT_INVALID)
            states.append("invalid")
            continue
        if args.check:
            status = _check(writer, checked.plan, path)
            codes.append(status.exit_code)
            states.append(status.state)
        else:
            codes.append(_write(writer, checked.plan, path))
            states.append("written" if codes[-1] == EXIT_OK else "invalid")
    if args.check:
        counts = {s: states.count(s) for s in ("current", "stale", "missing", "unreadable",
                                                "invalid")}
        out.write(f"{len(states)} lock(s) checked: {counts['current']} up to date, "
                  f"{counts['stale']} stale, {counts['missing']} missing, "
                  f"{counts['unreadable']} unreadable, {counts['invalid']} spec(s) invalid\n")
    return max(codes)


def _problem(writer: DiagnosticWriter, message: str, file: str) -> None:
    if writer.fmt == "github":
        from specrunner.annotations import workflow_command

        writer.out.write(workflow_command("error", message, file=file,
                                          title="specrunner lock") + "\n")
    else:
        writer.out.write(f"error: {message}\n")


def _check(writer: DiagnosticWriter, plan: Plan, path: str) -> LockStatus:
    from specrunner.plan.lock import check_lock

    status = check_lock(plan, path)
    if writer.fmt != "github" or (status.ok and not status.notes):
        writer.out.write(writer.redacted(status.message()) + "\n")
        return status
    from specrunner.annotations import workflow_command

    where = plan.spec.loc("$")
    command = "notice" if status.ok else "error"
    writer.out.write(writer.redacted(workflow_command(
        command, status.message(), file=path, line=where.line if where else None,
        title="specrunner lock")) + "\n")
    return status


def _write(writer: DiagnosticWriter, plan: Plan, path: str) -> int:
    from specrunner.money import money
    from specrunner.plan.lock import check_lock, lock_path, write_lock

    before = check_lock(plan, path)
    shown = str(lock_path(path))
    try:
        written = write_lock(plan)
    except OSError as exc:
        _problem(writer, f"cannot write {shown}: {exc.strerror or type(exc).__name__}", path)
        return EXIT_INVALID
    size = (f"{len(plan.tasks):,} tasks, {plan.total_images:,} images, "
            f"{money(plan.total_cost)}")
    if not written:
        text = f"{shown}: up to date ({size})"
    elif before.state in ("missing", "unreadable"):
        text = f"wrote {shown} ({size})"
    elif before.ok:
        text = f"updated {shown}: header refreshed, tasks unchanged ({size})"
    else:  # what the new lock changes, as `--check` would have listed it
        text = "\n  ".join([f"updated {shown} ({size})", *before.details()])
    writer.out.write(text + "\n")
    return EXIT_OK
