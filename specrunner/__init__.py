"""specrunner: run Runware image-editing campaigns declared in YAML.

The pipeline, one call per stage::

    import specrunner

    spec = specrunner.load_spec("campaign.yaml")      # validate (SpecError: every problem)
    plan = specrunner.build_plan(spec)                # the exact requests and their cost
    result = specrunner.run_plan(plan, local=True)    # or api_key=..., base_url=...
    summary = specrunner.read_report(result.out_dir)  # totals, breakdowns, failures
    print(specrunner.render_report(summary, "markdown"))

`Runner` is `run_plan` in parts (an async `run()`, `drain()` and `cancel()`, live `counters`).
Every error is a SpecrunnerError; its `exit_code` is what the CLI exits with. Names load on
first use, so `import specrunner` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from pathlib import Path

    from specrunner.errors import (
        PlanLimitError,
        RecordError,
        SpecError,
        SpecrunnerError,
        UsageError,
    )
    from specrunner.plan import Plan, Task, build_plan
    from specrunner.report import Summary
    from specrunner.report import render as render_report
    from specrunner.run import Runner, RunResult
    from specrunner.spec import Spec, load_spec

__all__ = [
    "Plan", "PlanLimitError", "RecordError", "RunResult", "Runner", "Spec", "SpecError",
    "SpecrunnerError", "Summary", "Task", "UsageError", "__version__", "build_plan",
    "load_spec", "read_report", "render_report", "run_plan",
]

_WHERE = {
    "PlanLimitError": ("specrunner.errors", "PlanLimitError"),
    "RecordError": ("specrunner.errors", "RecordError"),
    "SpecError": ("specrunner.errors", "SpecError"),
    "SpecrunnerError": ("specrunner.errors", "SpecrunnerError"),
    "UsageError": ("specrunner.errors", "UsageError"),
    "Spec": ("specrunner.spec", "Spec"),
    "load_spec": ("specrunner.spec", "load_spec"),
    "Plan": ("specrunner.plan", "Plan"),
    "Task": ("specrunner.plan", "Task"),
    "build_plan": ("specrunner.plan", "build_plan"),
    "Runner": ("specrunner.run", "Runner"),
    "RunResult": ("specrunner.run", "RunResult"),
    "Summary": ("specrunner.report", "Summary"),
    "render_report": ("specrunner.report", "render"),
}


def run_plan(plan: Plan, **options: Any) -> RunResult:
    """Run `plan` to completion in a fresh event loop; `options` are Runner's (local,
    api_key, base_url, out_dir, concurrency, max_usd, ...). Raises UsageError for bad
    options and RecordError for a locked or damaged record, before any request."""
    from specrunner.run import Runner

    return Runner(plan, **options).run_sync()


# (Not `run`: once the subpackage specrunner.run is imported, the import system sets the
# package's attribute `run` to it, and a function of that name would be replaced.)


def read_report(out_dir: str | Path, by: list[str] | None = None) -> Summary:
    """The report of the run folder `out_dir` (finished or still running): totals,
    breakdowns by axis (`by`, default every axis with two or more values) and failures.
    Raises RecordError when the folder holds no usable record."""
    from pathlib import Path

    from specrunner.report import load_run, summarize

    return summarize(load_run(Path(out_dir)), by)


def __getattr__(name: str) -> Any:
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(where[0]), where[1])
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
