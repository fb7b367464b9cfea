"""`specrunner validate SPEC... [--format text|json|github]`: check specs; nothing is ever sent.

Each spec is loaded and validated (spec.load_spec), then expanded with plan.build_plan, so
expansion-time problems (task cap, budget, output collisions, prompts too long after
templating) are reported too; a plan over a limit is located at that budget setting
(PlanLimitError.limit). Exit 0 when every spec is valid, 2 otherwise.

Text output: one line per diagnostic, `file:line:col: severity: message [json.path] (hint)`
(severity error, warning or note; a note, a fact about the model, is printed once), then
one summary line. `--format github` prints the same diagnostics as GitHub workflow commands
(annotations.py: `::error file=...,line=...,col=...::message`), then the summary line.
A valid spec may still warn (magicPrompt ON or AUTO, plan/reproducibility.py): exit 0.
JSON output (`--format json`), one object:
    {"valid": bool,
     "specs": [{"file": str, "valid": bool, "tasks": int | null, "planned": bool,
                "diagnostics": [Diagnostic.to_json(), ...]}]}
`tasks` is the planned task count (null when the spec is invalid); `planned` is true
exactly when the spec was planned.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import TYPE_CHECKING, Any, TextIO

from specrunner.errors import EXIT_INVALID, EXIT_OK

if TYPE_CHECKING:
    from specrunner.plan.check import Checked

FORMATS = ("text", "json", "github")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare validate's arguments."""
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="spec files to check")
    parser.add_argument("--format", choices=FORMATS, default="text",
                        help="output format (default: text; github: workflow commands)")


def _json(c: Checked) -> dict[str, Any]:
    return {"file": c.file, "valid": c.valid, "tasks": len(c.plan.tasks) if c.plan else None,
            "planned": c.valid, "diagnostics": [d.to_json() for d in c.diagnostics]}


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Check every spec given; print diagnostics and a summary; 0 if all valid, else 2."""
    # Imported here, not at the top: they pull in jsonschema, Pillow and PyYAML, which
    # `--help`, `report` and `diff` (every command module is imported) need not pay for.
    from specrunner.annotations import DiagnosticWriter
    from specrunner.plan.check import check_spec

    key = os.environ.get("RUNWARE_API_KEY", "")
    secrets = (key,) if key else ()
    results = [check_spec(path, secrets) for path in args.specs]
    all_valid = all(r.valid for r in results)
    writer = DiagnosticWriter(out, args.format, redact=secrets)
    if args.format == "json":
        payload = {"valid": all_valid, "specs": [_json(r) for r in results]}
        out.write(writer.redacted(json.dumps(payload, indent=2)) + "\n")
        return EXIT_OK if all_valid else EXIT_INVALID
    for r in results:
        writer.write(r.diagnostics)
        if r.valid:
            assert r.plan is not None
            out.write(f"{r.file}: valid ({len(r.plan.tasks)} tasks)\n")
    bad = sum(not r.valid for r in results)
    out.write(f"{len(results)} spec(s) checked: {len(results) - bad} valid, {bad} invalid, "
              f"{writer.errors} error(s), {writer.warnings} warning(s)\n")
    return EXIT_OK if all_valid else EXIT_INVALID
