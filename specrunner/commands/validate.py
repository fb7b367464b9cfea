"""`specrunner validate SPEC... [--format text|json]`: check specs; nothing is ever sent.

Each spec is loaded and validated (spec.load_spec), then expanded with plan.build_plan, so
expansion-time problems (task cap, budget, output collisions, prompts too long after
templating) are reported too; a plan over a limit is located at that budget setting
(PlanLimitError.limit). Exit 0 when every spec is valid, 2 otherwise.

Text output: one line per diagnostic, `file:line:col: error: message [json.path] (hint)`,
then one summary line. JSON output (`--format json`), one object:
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

from specrunner.errors import EXIT_INVALID, EXIT_OK, Diagnostic, PlanLimitError, SpecError

if TYPE_CHECKING:
    from specrunner.spec.types import Spec
def configure(parser: argparse.ArgumentParser) -> None:
    """Declare validate's arguments."""
    parser.add_argument("specs", nargs="+", metavar="SPEC", help="spec files to check")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="output format (default: text)")


def limit_path(exc: PlanLimitError, spec: Spec) -> str:
    """The JSON path of the setting a PlanLimitError exceeded (the matrix for specrunner's
    own product cap); located where the spec writes it, else at its nearest parent."""
    if exc.limit is None:
        return "$.matrix" if spec.matrix is not None else "$"
    return f"$.budget.{exc.limit}"


def check(path: str, secrets: tuple[str, ...]) -> dict[str, Any]:
    """Validate and plan one spec; a dict as in the JSON output."""
    # Imported here, not at the top: they pull in jsonschema, Pillow and PyYAML, which
    # `--help`, `report` and `diff` (every command module is imported) need not pay for.
    from specrunner.plan import build_plan
    from specrunner.spec import load_spec_checked

    result: dict[str, Any] = {"file": path, "valid": False, "tasks": None, "planned": False,
                              "diagnostics": []}
    try:
        spec, warnings = load_spec_checked(path, secrets=secrets)
    except SpecError as exc:
        result["diagnostics"] = exc.diagnostics
        return result
    result["diagnostics"] = list(warnings)
    try:
        plan = build_plan(spec)
    except SpecError as exc:
        result["diagnostics"] = list(warnings) + exc.diagnostics
        return result
    except PlanLimitError as exc:
        where = limit_path(exc, spec)
        result["diagnostics"] = list(warnings) + [
            Diagnostic(str(exc), path=where, loc=spec.loc(where), code="plan-limit",
                       hint=exc.hint)]
        return result
    result.update(valid=True, tasks=len(plan.tasks), planned=True)
    return result


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        text = text.replace(s, "[redacted]")
    return text


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Check every spec given; print diagnostics and a summary; 0 if all valid, else 2."""
    key = os.environ.get("RUNWARE_API_KEY", "")
    secrets = (key,) if key else ()
    results = [check(path, secrets) for path in args.specs]
    all_valid = all(r["valid"] for r in results)
    if args.format == "json":
        payload = {
            "valid": all_valid,
            "specs": [dict(r, diagnostics=[d.to_json() for d in r["diagnostics"]])
                      for r in results],
        }
        out.write(_redact(json.dumps(payload, indent=2), secrets) + "\n")
    else:
        errors = 0
        for r in results:
            for d in r["diagnostics"]:
                out.write(_redact(d.format(), secrets) + "\n")
                errors += d.severity == "error"
            if r["valid"]:
                out.write(f"{r['file']}: valid ({r['tasks']} tasks)\n")
        bad = sum(not r["valid"] for r in results)
        out.write(f"{len(results)} spec(s) checked: {len(results) - bad} valid, {bad} invalid, "
                  f"{errors} error(s)\n")
    return EXIT_OK if all_valid else EXIT_INVALID
