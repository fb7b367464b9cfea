"""Provenance in every run and report (issue 14): the commit, a dirty tree and what differs,
recorded by `run` and shown by `report` (every format) and `diff`; tasks whose prompt the
provider may rewrite are marked."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import pytest
from test_run_cli import write_spec

from specrunner import cli
from specrunner.run import set_testing


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q")
    git(tmp_path, "config", "user.email", "t@example.com")
    git(tmp_path, "config", "user.name", "t")
    spec = write_spec(tmp_path, repeat=1)
    spec.write_text(spec.read_text().replace(
        "defaults:\n  outputFormat: PNG\n",
        "defaults:\n  outputFormat: PNG\n  providerSettings:\n    ideogram:\n"
        "      magicPrompt: \"ON\"\n"))
    (tmp_path / ".gitignore").write_text("out*/\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-q", "-m", "campaign")
    return tmp_path


def cli_run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    set_testing(True)
    try:
        code = cli.run(list(argv), out, err)
    finally:
        set_testing(False)
    return code, out.getvalue(), err.getvalue()


def test_a_run_from_a_clean_tree_names_its_commit_everywhere(repo: Path) -> None:
    head = git(repo, "rev-parse", "HEAD")
    code, out, err = cli_run("run", str(repo / "spec.yaml"), "--local", "--out",
                             str(repo / "out"), "--progress", "none")
    assert code == 0 and f"provenance: commit {head[:12]} (clean)" in out
    assert "dirty tree" not in err
    for fmt in ("table", "markdown"):
        text = cli_run("report", str(repo / "out"), "--format", fmt)[1]
        assert f"commit {head[:12]} (clean)" in text
    doc = json.loads(cli_run("report", str(repo / "out"), "--format", "json")[1])
    assert doc["run"]["provenance"]["commit"] == head
    assert doc["run"]["provenance"]["dirty"] is False and doc["runs"][0]["git_commit"] == head


def test_a_run_from_a_dirty_tree_says_so_and_names_what_differs(repo: Path) -> None:
    spec = repo / "spec.yaml"
    spec.write_text(spec.read_text() + "# an uncommitted comment\n")
    code, _out, err = cli_run("run", str(spec), "--local", "--out", str(repo / "out"),
                              "--progress", "none")
    assert code == 0 and "made from a dirty tree" in err
    doc = json.loads(cli_run("report", str(repo / "out"), "--format", "json")[1])
    assert doc["run"]["provenance"]["dirty"] is True
    assert doc["run"]["provenance"]["changed"] == ["spec.yaml"]
    assert any("dirty tree" in n for n in doc["run"]["notes"])
    table = cli_run("report", str(repo / "out"))[1]
    assert "dirty (1 changed)" in table and "note: the last run was made from a dirty tree" in table


def test_diff_shows_both_sides_and_says_when_they_differ(repo: Path) -> None:
    assert cli_run("run", str(repo / "spec.yaml"), "--local", "--out", str(repo / "outA"),
                   "--progress", "none")[0] == 0
    first = git(repo, "rev-parse", "HEAD")[:12]
    (repo / "notes.txt").write_text("x")
    git(repo, "add", "notes.txt")
    git(repo, "commit", "-q", "-m", "another commit")
    second = git(repo, "rev-parse", "HEAD")[:12]
    assert cli_run("run", str(repo / "spec.yaml"), "--local", "--out", str(repo / "outB"),
                   "--progress", "none")[0] == 0
    text = cli_run("diff", str(repo / "outA"), str(repo / "outB"))[1]
    assert f"A: commit {first} (clean)" in text
    assert f"B: commit {second} (clean)" in text and "(differs from A)" in text
    doc = json.loads(cli_run("diff", str(repo / "outA"), str(repo / "outB"), "--format",
                             "json")[1])
    assert doc["a"]["provenance"]["commit"].startswith(first)


def test_tasks_whose_prompt_the_provider_may_rewrite_are_marked(repo: Path) -> None:
    assert cli_run("run", str(repo / "spec.yaml"), "--local", "--out", str(repo / "out"),
                   "--progress", "none")[0] == 0
    doc = json.loads(cli_run("report", str(repo / "out"), "--format", "json")[1])
    task = doc["tasks"][0]
    assert task["magic_prompt"] == "ON"
    assert task["images"][0]["provider_prompt"].endswith("(rewritten by magicPrompt)")
    assert task["images"][0]["seed"]  # the returned seed is kept, exact
    text = cli_run("report", str(repo / "out"))[1]
    assert ("2 task(s) ran with magicPrompt ON or AUTO" in text
            and "reported a rewritten prompt for 2" in text)
