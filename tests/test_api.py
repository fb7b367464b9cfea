"""The public Python API: the exported names are pinned, and README's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import specrunner

ROOT = Path(__file__).resolve().parent.parent

EXPORTED = [
    "Plan", "PlanLimitError", "RecordError", "RunResult", "Runner", "Spec", "SpecError",
    "SpecrunnerError", "Summary", "Task", "UsageError", "__version__", "build_plan",
    "load_spec", "read_report", "render_report", "run_plan",
]


def test_the_exported_names_are_pinned_and_each_one_resolves() -> None:
    assert specrunner.__all__ == EXPORTED
    for name in EXPORTED:
        value = getattr(specrunner, name)
        if name != "__version__":
            assert value.__doc__, f"{name} has no docstring"


def test_importing_the_package_loads_no_stage() -> None:
    code = ("import sys, specrunner; print(sorted(m for m in sys.modules "
            "if m.startswith('specrunner.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


def readme_python_block() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, re.S)
    code = next(body for lang, body in blocks if lang == "python")
    shown = next(body for lang, body in blocks if lang == "")
    return code, shown


def test_the_readme_example_runs_exactly_as_written() -> None:
    code, shown = readme_python_block()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == shown


def test_run_plan_runs_twice_in_one_process(tmp_path) -> None:
    """The entry stays callable once the run stage is imported (a function named `run` was
    replaced by the subpackage specrunner.run at its first call)."""
    plan = specrunner.build_plan(specrunner.load_spec(
        ROOT / "specs" / "examples" / "storefront-local.yaml"))
    first = specrunner.run_plan(plan, local=True, out_dir=tmp_path / "out")
    again = specrunner.run_plan(plan, local=True, out_dir=tmp_path / "out")
    assert (first.exit_code, first.counters.done) == (0, 12)
    assert (again.exit_code, again.counters.done, again.counters.skipped) == (0, 0, 12)
    assert len(list((tmp_path / "out").rglob("*.jpg"))) == 12
