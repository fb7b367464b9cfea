"""The exception tree and exit codes of specrunner.

    SpecrunnerError              root; carries the process exit code for the CLI
    ├── UsageError               bad CLI value or environment (exit 2)
    ├── SpecError                invalid spec; holds every Diagnostic found (exit 2)
    ├── PlanLimitError           plan over budget or over the task cap (exit 2 at plan time)
    └── RecordError              run record damaged, or locked by another process (exit 2)

Expected per-task failures are records, not exceptions; how a run ended is its status
(run.RunResult). Exit codes: 0 ok, 1 tasks failed (or the API refused the run), 2 invalid
spec, usage or record, 3 stopped at the budget, 4 incomplete (tasks in doubt, none failed:
run again to finish), 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

EXIT_OK = 0
EXIT_TASKS_FAILED = 1
EXIT_INVALID = 2
EXIT_BUDGET = 3
EXIT_INCOMPLETE = 4
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, order=True)
class Loc:
    """A 1-based position in a source file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def nearest_loc(locs: Mapping[str, Loc], path: str) -> Loc | None:
    """The position of JSON path `path` in `locs` (JSON path -> Loc), else of its nearest
    ancestor there (`$.a[0].b`, `$.a[0]`, `$.a`, `$`); None when not even `$` is located."""
    while path not in locs and path != "$":
        cut = max(path.rfind("."), path.rfind("["))
        path = path[:cut] if cut > 0 else "$"
    return locs.get(path)


@dataclass(frozen=True)
class Diagnostic:
    """One problem found in a spec: where (file:line:col and JSON path), what, and a hint.

    A problem of the whole file (missing, a folder, too large, empty) has no `loc` but its
    `file`, and prints as `file: error: message`, with no made-up position.
    """

    message: str
    path: str = "$"
    loc: Loc | None = None
    code: str = "invalid"
    hint: str | None = None
    severity: str = "error"
    file: str | None = None  # the file when there is no `loc` (a problem of the whole file)

    def format(self) -> str:
        """`file:line:col: severity: message [json.path] (hint)`; without a position,
        `file: severity: message (hint)`."""
        where = str(self.loc) if self.loc else (self.file or "<unknown>")
        text = f"{where}: {self.severity}: {self.message}"
        if self.loc or self.path != "$":
            text += f" [{self.path}]"
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_json(self) -> dict:
        """The JSON form of `validate --format json` (line and column null without a loc)."""
        return {
            "file": self.loc.file if self.loc else self.file,
            "line": self.loc.line if self.loc else None,
            "column": self.loc.col if self.loc else None,
            "path": self.path,
            "code": self.code,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }


class SpecrunnerError(Exception):
    """Root of specrunner's exceptions; `exit_code` is what the CLI exits with, `hint` (when
    not None) what to do about it, printed after the message."""

    exit_code: int = EXIT_INVALID
    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class UsageError(SpecrunnerError):
    """A bad command-line value or environment setting."""

    exit_code = EXIT_INVALID


@dataclass
class SpecError(SpecrunnerError):
    """A spec that does not validate; `diagnostics` lists every problem, most relevant first."""

    diagnostics: list[Diagnostic] = field(default_factory=list)
    exit_code: int = EXIT_INVALID

    def __post_init__(self) -> None:
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(d.format() for d in self.diagnostics) or "invalid spec"


class PlanLimitError(SpecrunnerError):
    """The plan exceeds the budget (`max_usd`) or the task cap.

    `limit` names the spec setting that was exceeded ("max_tasks" or "max_usd"; None for
    specrunner's own matrix-product cap), `needed` and `allowed` are the numbers, so callers
    never have to parse the message.
    """

    exit_code = EXIT_INVALID

    def __init__(self, message: str, *, limit: str | None = None,
                 needed: object = None, allowed: object = None) -> None:
        super().__init__(message)
        self.limit = limit
        self.needed = needed
        self.allowed = allowed
        # One hint per limit, shared by every command that plans (validate, plan, run).
        self.hint = LIMIT_HINTS.get(limit, LIMIT_HINTS[None])


# What to do about each limit a plan can exceed (PlanLimitError.limit).
LIMIT_HINTS: dict[str | None, str] = {
    "max_usd": "raise budget.max_usd, or override it with --max-usd USD (plan, run)",
    "max_tasks": "raise budget.max_tasks, or try the plan with `specrunner plan --max-tasks N`",
    None: "use fewer axis values, or several specs",
}


class RecordError(SpecrunnerError):
    """The run record is damaged, incompatible, or locked by another process."""

    exit_code = EXIT_INVALID
