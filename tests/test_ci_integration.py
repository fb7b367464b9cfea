"""The CI surface: the pre-commit hooks (run for real with `pre-commit try-repo` on a
temporary repository) and the documented GitHub Actions workflow (valid YAML, valid bash,
every specrunner command in it accepted by the real CLI, the pull-request checks run)."""

from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from specrunner import cli

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / ".pre-commit-hooks.yaml"
WORKFLOW = ROOT / "docs" / "ci" / "specrunner.yml"
EXAMPLES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs" / "examples").glob("*.yaml"))
IMAGES = ROOT / "specs" / "examples" / "images"


# -- the hooks manifest ------------------------------------------------------------------------

def hooks() -> dict[str, dict[str, Any]]:
    return {h["id"]: h for h in yaml.safe_load(HOOKS.read_text(encoding="utf-8"))}


def test_hooks_manifest_is_what_pre_commit_accepts() -> None:
    from pre_commit.clientlib import load_manifest

    loaded = {h["id"]: h for h in load_manifest(str(HOOKS))}  # raises if invalid
    assert set(loaded) == {"specrunner-validate", "specrunner-lock"}
    assert loaded["specrunner-validate"]["entry"] == "specrunner validate"
    assert loaded["specrunner-lock"]["entry"] == "specrunner lock --check"
    for h in loaded.values():
        assert h["language"] == "python" and h["pass_filenames"] is True


@pytest.mark.parametrize(("path", "validate", "lock"), [
    ("specs/shop.yaml", True, True),
    ("specs/2024/summer.yml", True, True),
    ("campaigns/specs/shop.yaml", True, True),
    ("specs/shop.lock", False, True),
    (".github/workflows/ci.yml", False, False),
    (".pre-commit-config.yaml", False, False),
    ("docker-compose.yaml", False, False),
    ("myspecs/shop.yaml", False, False),
    ("specs/images/bakery.jpg", False, False),
])
def test_hooks_take_spec_files_only(path: str, validate: bool, lock: bool) -> None:
    h = hooks()
    assert bool(re.search(h["specrunner-validate"]["files"], path)) is validate
    assert bool(re.search(h["specrunner-lock"]["files"], path)) is lock


# -- the workflow --------------------------------------------------------------------------------

def workflow() -> dict[Any, Any]:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def steps(job: str) -> list[dict[str, Any]]:
    return workflow()["jobs"][job]["steps"]


def test_workflow_triggers_jobs_and_secret() -> None:
    doc = workflow()
    on = doc.get("on", doc.get(True))  # YAML 1.1 readers (PyYAML) read the key `on` as true
    assert set(on) == {"pull_request", "push"} and on["push"]["branches"] == ["main"]
    check, run = doc["jobs"]["check"], doc["jobs"]["run"]
    assert check["if"] == "github.event_name == 'pull_request'"
    assert check["permissions"]["pull-requests"] == "write"
    assert run["if"] == "github.event_name == 'push'"
    names = [s.get("name") for s in run["steps"]]
    assert names.index("Check the lock files") < names.index("Run")  # nothing stale runs
    (run_step,) = [s for s in run["steps"] if s.get("name") == "Run"]
    assert run_step["env"] == {"RUNWARE_API_KEY": "${{ secrets.RUNWARE_API_KEY }}"}
    uploads = [s for s in run["steps"] if s.get("uses", "").startswith("actions/upload-artifact")]
    assert uploads and uploads[0]["with"]["path"] == "${{ steps.specs.outputs.dirs }}"
    comment = [s for s in check["steps"] if "gh pr comment" in s.get("run", "")]
    assert comment and "--body-file \"$RUNNER_TEMP/plan.md\"" in comment[0]["run"]


def scripts() -> list[tuple[str, str, str]]:
    """(job, step name, bash script) of every `run:` step."""
    return [(job, s.get("name", ""), s["run"]) for job, spec in workflow()["jobs"].items()
            for s in spec["steps"] if "run" in s]


def test_workflow_scripts_are_valid_bash() -> None:
    for job, name, script in scripts():
        # GitHub substitutes ${{ expressions }} before bash reads the script
        text = re.sub(r"\$\{\{.*?\}\}", "X", script)
        done = subprocess.run(["bash", "-n", "-c", text], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, (job, name, done.stderr)


def specrunner_commands(script: str, specs: list[str]) -> list[list[str]]:
    """The argv of every `specrunner ...` command in a script, with the spec variables
    replaced by `specs` (a command on the loop's `$spec` once per spec), cut at the first
    shell operator or redirection."""
    text = script.replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if not line.strip().startswith("specrunner "):  # the workflow starts lines with them
            continue
        argv: list[str] = []
        for token in shlex.split(line, comments=True)[1:]:
            if token in ("||", "|", "&&", ";", ">", ">>") or re.match(r"^\d?>", token):
                break
            argv.extend(specs if token == "${specs[@]}" else [token])
        out.extend([[spec if a == "$spec" else a for a in argv] for spec in specs]
                   if "$spec" in argv else [argv])
    return out


def test_every_specrunner_command_in_the_workflow_parses_with_the_real_cli() -> None:
    parser, _ = cli.build_parser()
    seen = []
    for job, _name, script in scripts():
        for argv in specrunner_commands(script, EXAMPLES):
            args = parser.parse_args(argv)  # cli._ArgError if the CLI refuses it
            seen.append((job, args.command, getattr(args, "format", None),
                         getattr(args, "check", None)))
    assert sorted(set(seen), key=str) == sorted({
        ("check", "validate", "github", None), ("check", "lock", "github", True),
        ("check", "plan", "markdown", None), ("run", "plan", "json", None),
        ("run", "lock", "github", True), ("run", "run", None, None),
        ("run", "report", "markdown", None), ("run", "report", "html", None)}, key=str)


def test_the_pull_request_checks_pass_on_the_example_specs(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The check job's commands, run for real on specs/examples (which carry their locks)."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RUNWARE_API_KEY", raising=False)
    ran = 0
    for job, _name, script in scripts():
        if job != "check":
            continue
        for argv in specrunner_commands(script, EXAMPLES):
            out, err = io.StringIO(), io.StringIO()
            code = cli.run(argv, out, err)
            assert code == 0, (argv, out.getvalue(), err.getvalue())
            if argv[0] != "plan":
                assert "::error" not in out.getvalue()
            ran += 1
    assert ran == 4  # validate, lock --check, and plan of each spec (the loop's $spec)


def test_the_check_job_runs_as_bash_would_run_it(tmp_path: Path) -> None:
    """The check job's steps up to the comment, run by bash in this checkout with GitHub's
    shell options: they find the example specs, pass, and write the comment's body."""
    bindir = Path(sys.executable).parent
    if not (bindir / "specrunner").exists() or not (ROOT / ".git").exists():
        pytest.skip("needs the specrunner console script and a git checkout")
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "SPECS": workflow()["env"]["SPECS"], "RUNNER_TEMP": str(tmp_path),
           "GITHUB_STEP_SUMMARY": str(tmp_path / "summary.md")}
    env.pop("RUNWARE_API_KEY", None)
    for step in steps("check"):
        if "run" not in step or "gh pr comment" in step["run"] or "pip install" in step["run"]:
            continue
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c",
                               step["run"]], cwd=ROOT, env=env, capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, (step["name"], done.stdout, done.stderr)
    assert (tmp_path / "specs.txt").read_text().splitlines() == EXAMPLES
    body = (tmp_path / "plan.md").read_text()
    assert body.startswith("<!-- specrunner plan -->\n## plan storefront-local: 12 tasks")
    assert "\n## plan storefront-signage: 4 tasks" in body and "no plan" not in body
    assert (tmp_path / "summary.md").read_text() == body


# -- the hooks, run by pre-commit itself -------------------------------------------------------

SPEC = """\
version: 1
name: shop
defaults:
  providerSettings:
    ideogram: {magicPrompt: "OFF"}
inputs:
  bakery: {seed: images/bakery.jpg, mask: images/bakery-mask.png}
prompts:
  neon: Neon sign reading "MIRELLE" above the door, warm pink tubes
variants:
  - {id: neon-design, styleType: DESIGN}
budget:
  max_usd: 1
"""


# What `pip install .` of the hooks' repository reads.
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", ".pre-commit-hooks.yaml",
                 "specrunner", "schemas", "specs/examples")


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One PRE_COMMIT_HOME for the module: the hooks' virtualenv is built once."""
    return tmp_path_factory.mktemp("pre-commit-home")


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What pre-commit installs the hooks from: this checkout's package files (tracked, or
    new and not ignored, so work not yet committed is tested too) in one commit of a
    repository of their own, so try-repo sees one stable revision and builds the hooks'
    virtualenv once."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("try-repo needs git and a git checkout of specrunner")
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard", "--",
                             *PACKAGE_FILES], cwd=ROOT, check=True,
                            capture_output=True).stdout.decode().split("\0")
    snap = tmp_path_factory.mktemp("specrunner-snapshot")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, snap / rel)
    git(snap, "init", "-q")
    git(snap, "add", "-A")
    git(snap, "-c", "user.name=test", "-c", "user.email=test@example.com", "-c",
        "commit.gpgsign=false", "commit", "-q", "-m", "snapshot")
    return snap


@pytest.fixture()
def team_repo(tmp_path: Path) -> Path:
    """A team's repository: a spec with its lock and images, and YAML that is no spec."""
    repo = tmp_path / "team"
    (repo / "specs" / "images").mkdir(parents=True)
    for name in ("bakery.jpg", "bakery-mask.png"):
        shutil.copyfile(IMAGES / name, repo / "specs" / "images" / name)
    (repo / "specs" / "shop.yaml").write_text(SPEC, encoding="utf-8")
    (repo / ".github" / "workflows").mkdir(parents=True)
    (repo / ".github" / "workflows" / "ci.yml").write_text("on: push\njobs: {}\n")
    (repo / "compose.yaml").write_text("services: {}\n")
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["lock", str(repo / "specs" / "shop.yaml")], out, err) == 0, out.getvalue()
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    return repo


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def try_repo(hooks_from: Path, repo: Path, home: Path) -> tuple[int, str]:
    """`pre-commit try-repo HOOKS_FROM --all-files --verbose` (every hook) in `repo`."""
    env = {**os.environ, "PRE_COMMIT_HOME": str(home), "PRE_COMMIT_COLOR": "never"}
    env.pop("RUNWARE_API_KEY", None)
    done = subprocess.run([sys.executable, "-m", "pre_commit", "try-repo", str(hooks_from),
                           "--all-files", "--verbose"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    output = done.stdout + done.stderr
    if "An unexpected error has occurred" in output:
        log = home / "pre-commit.log"
        pytest.fail("pre-commit could not build the hooks' virtualenv (pip needs PyPI, or the "
                    "wheels of specrunner's build and runtime dependencies):\n"
                    + (log.read_text()[-3000:] if log.exists() else output))
    return done.returncode, output


def outcome(output: str, hook: str) -> str:
    """"Passed" or "Failed" from pre-commit's line for `hook` (its name, dots, outcome)."""
    match = re.search(rf"^{re.escape(hook)}\.+(Passed|Failed)$", output, re.MULTILINE)
    assert match, output
    return match.group(1)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_pre_commit_hooks_pass_then_catch_problems(hook_repo: Path, team_repo: Path,
                                                   pre_commit_home: Path) -> None:
    code, output = try_repo(hook_repo, team_repo, pre_commit_home)
    assert code == 0, output
    assert (outcome(output, "specrunner validate"), outcome(output, "specrunner lock --check")
            ) == ("Passed", "Passed")
    # only the spec was passed: not the workflow, not the compose file
    assert "specs/shop.yaml: valid (1 tasks)" in output
    assert "1 spec(s) checked: 1 valid, 0 invalid, 0 error(s), 0 warning(s)" in output
    assert "specs/shop.lock: up to date (1 tasks, $0.08)" in output

    # a prompt edit without `specrunner lock`: the lock hook fails, naming the task
    spec = team_repo / "specs" / "shop.yaml"
    spec.write_text(SPEC.replace("warm pink", "cold blue"), encoding="utf-8")
    git(team_repo, "add", "-A")
    code, output = try_repo(hook_repo, team_repo, pre_commit_home)
    assert code == 1, output
    assert (outcome(output, "specrunner validate"), outcome(output, "specrunner lock --check")
            ) == ("Passed", "Failed")
    assert "- exit code: 1" in output
    assert "specs/shop.lock: stale (1 changed); update it with `specrunner lock " \
           "specs/shop.yaml`" in output
    assert "~ neon-design: key, uuid (the request differs)" in output

    # a broken spec: the validate hook fails with the located error (exit 2, pre-commit's 1)
    spec.write_text(SPEC.replace("styleType: DESIGN", "stlyeType: DESIGN"), encoding="utf-8")
    git(team_repo, "add", "-A")
    code, output = try_repo(hook_repo, team_repo, pre_commit_home)
    assert code == 1, output
    assert outcome(output, "specrunner validate") == "Failed" and "- exit code: 2" in output
    assert ("specs/shop.yaml:11:23: error: unknown key `stlyeType`: not a request field, and "
            "no template uses {stlyeType} [$.variants[0].stlyeType] (did you mean "
            "`styleType`?)") in output
