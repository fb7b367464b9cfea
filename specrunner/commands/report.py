"""`specrunner report [RUN_DIR | SPEC]`: summarise a run record (going, interrupted or done).

Formats: table (default), markdown (GitHub tables, for a pull-request comment), json (shape in
specrunner/report.py and docs/report-json.md), csv (one row per result image) and html (a
self-contained contact-sheet folder, default `<run>/report/`). Given a SPEC, the run folder is
its output.dir; given a RUN_DIR, the spec recorded by the last run supplies the matrix axes.
Exit codes: 0 ok, 2 no or damaged record, bad arguments.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, TextIO

from specrunner.errors import EXIT_OK, RecordError, SpecrunnerError, UsageError
from specrunner.redact import Redactor

FORMATS = ("table", "markdown", "json", "csv", "html")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `report`."""
    parser.add_argument("target", metavar="RUN_DIR|SPEC", nargs="?", default=".",
                        help="a run folder, or the spec whose output.dir holds the run "
                             "(default: the current folder)")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output format (default: table)")
    parser.add_argument("--by", metavar="AXIS,...",
                        help="break down by these matrix axes (default: every axis with "
                             "more than one value)")
    parser.add_argument("--out", metavar="PATH",
                        help="write to PATH instead of stdout (html: the folder, default "
                             "<run>/report)")
    parser.add_argument("--rows", metavar="AXIS", help="html: axis of the grid's rows")
    parser.add_argument("--cols", metavar="AXIS", help="html: axis of the grid's columns")
    parser.add_argument("--thumb", type=int, default=256, metavar="PX",
                        help="html: thumbnail size in pixels (default 256)")


def parse_by(value: str | None) -> list[str] | None:
    """The axis names of a `--by AXIS,...` option (None when not given)."""
    by = [a.strip() for a in value.split(",") if a.strip()] if value else None
    if value is not None and not by:
        raise UsageError("--by needs at least one axis name")
    return by


def locate(target: str) -> tuple[Path, Any, list[str]]:
    """(run folder, None, warnings) for a RUN_DIR or SPEC argument: a SPEC names its
    output.dir (it must validate; the report itself reads only the record). The middle item
    is a Plan whose tasks are the current ones, for callers that have one (load_run's `plan`).
    """
    from specrunner.record import record_path
    from specrunner.spec import load_spec

    path = Path(target)
    if path.is_file():
        spec = load_spec(path, secrets=[os.environ.get("RUNWARE_API_KEY", "")])
        return spec.output.dir, None, []
    if not path.is_dir():
        raise UsageError(f"{target} is neither a run folder nor a spec file")
    if not record_path(path).is_file():
        raise RecordError(f"no run record in {target} (expected {record_path(path)})",
                          hint=suggest_targets(path))
    return path, None, []


MAX_SUGGESTED = 5


def _shown(path: Path) -> str:
    """A path as short as it can be said from the current folder."""
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def suggest_targets(folder: Path) -> str | None:
    """What `report` could have been given instead of a folder with no run record: the spec
    files in it (with their output folders) or the run folders just below it."""
    from specrunner.record import record_path
    from specrunner.spec import load_spec

    specs = []
    candidates = sorted(p for pattern in ("*.yaml", "*.yml") for p in folder.glob(pattern))
    for candidate in candidates[:20]:
        try:
            spec = load_spec(candidate)
        except SpecrunnerError:
            continue  # not a spec, or one that does not validate: no output folder to name
        ran = record_path(spec.output.dir).is_file()
        specs.append((candidate, spec.output.dir, ran))
    if specs:
        listed = ", ".join(f"{_shown(p)} (output {_shown(d)}, "
                           f"{'has a run record' if ran else 'not run yet'})"
                           for p, d, ran in specs[:MAX_SUGGESTED])
        ran_specs = [p for p, _, ran in specs if ran]
        if ran_specs:
            return f"spec files here: {listed}; try `specrunner report {_shown(ran_specs[0])}`"
        return f"spec files here: {listed}; run one first: `specrunner run {_shown(specs[0][0])}`"
    runs = sorted(db.parent.parent for pattern in ("*/.specrunner/run.db",
                                                     "*/*/.specrunner/run.db")
                  for db in folder.glob(pattern))
    if runs:
        return (f"run folders below: {', '.join(_shown(r) for r in runs[:MAX_SUGGESTED])}; "
                f"try `specrunner report {_shown(runs[0])}`")
    return None


def review_state(run_dir: Path, data: Any, target: str, plan: Any, fmt: str) -> Any:
    """The review state of the spec's `<stem>.review.yaml` (the SPEC given, else the spec the
    record names); None when neither is known. An unreadable review file is an error.

    Table and Markdown show the review only when its file exists: without one they get None
    rather than the pending state of every image (0.2 s for 45,000 images, shown nowhere)."""
    from specrunner.report.review import find_spec, review_of, review_path

    spec = find_spec(target, run_dir, plan, data.spec_path)
    if spec is not None and fmt in ("table", "markdown") and not review_path(spec).exists():
        return None
    return review_of(run_dir, data.tasks, data.axes, spec)


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Render the report; return the exit code."""
    from specrunner import report

    by = parse_by(args.by)
    if not 16 <= args.thumb <= 2048:
        raise UsageError("--thumb must be between 16 and 2048 pixels")
    run_dir, plan, warnings = locate(args.target)
    redact = Redactor([os.environ.get("RUNWARE_API_KEY", "")])  # a server may have quoted it
    data = report.load_run(run_dir, plan, warnings, redact)
    review = review_state(run_dir, data, args.target, plan, args.format)
    summary = report.summarize(data, by, review)
    text = None if args.format == "html" else report.render(summary, args.format)
    if text is None:
        from specrunner.report import html as contact_sheet

        dest = Path(args.out) if args.out else run_dir / "report"
        sheet = contact_sheet.build(summary, run_dir, dest, rows=args.rows, cols=args.cols,
                                    size=args.thumb)
        print(f"contact sheet: {sheet.describe()}", file=out)
        return EXIT_OK
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        out.write(text)
    return EXIT_OK
