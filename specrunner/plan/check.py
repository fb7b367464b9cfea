"""Load, validate and plan one spec, collecting every diagnostic instead of raising.

`check_spec(path)` is what `validate` and `lock` share: the spec's loader warnings, its
errors (loading or planning, a plan over a limit located at that budget setting) and, for
a spec that plans, the reproducibility warnings and notes (reproducibility.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from specrunner.errors import Diagnostic, PlanLimitError, SpecError
from specrunner.plan.build import Plan, build_plan
from specrunner.plan.reproducibility import reproducibility_diagnostics
from specrunner.spec import Spec, load_spec_checked


@dataclass(frozen=True)
class Checked:
    """One spec's outcome: its Plan (None when invalid) and every diagnostic, in order."""

    file: str
    spec: Spec | None
    plan: Plan | None
    diagnostics: tuple[Diagnostic, ...]

    @property
    def valid(self) -> bool:
        """True when the spec loaded and planned within its limits."""
        return self.plan is not None


def limit_path(exc: PlanLimitError, spec: Spec) -> str:
    """The JSON path of the setting a PlanLimitError exceeded (the matrix for specrunner's
    own product cap); located where the spec writes it, else at its nearest parent."""
    if exc.limit is None:
        return "$.matrix" if spec.matrix is not None else "$"
    return f"$.budget.{exc.limit}"


def limit_diagnostic(exc: PlanLimitError, spec: Spec) -> Diagnostic:
    """A PlanLimitError as a Diagnostic located at the setting it exceeded, with the hint
    every command gives for it (errors.LIMIT_HINTS)."""
    where = limit_path(exc, spec)
    return Diagnostic(str(exc), path=where, loc=spec.loc(where), code="plan-limit",
                      hint=exc.hint)


def check_spec(path: str | Path, secrets: Sequence[str] = ()) -> Checked:
    """Validate and plan the spec at `path`; never raises SpecError or PlanLimitError."""
    file = str(path)
    try:
        spec, warnings = load_spec_checked(path, secrets=secrets)
    except SpecError as exc:
        return Checked(file, None, None, tuple(exc.diagnostics))
    try:
        plan = build_plan(spec)
    except SpecError as exc:
        return Checked(file, spec, None, (*warnings, *exc.diagnostics))
    except PlanLimitError as exc:
        return Checked(file, spec, None, (*warnings, limit_diagnostic(exc, spec)))
    return Checked(file, spec, plan, (*warnings, *reproducibility_diagnostics(plan)))
