"""CLI messages a newcomer meets first: one prefix per line, no made-up positions, and the
same hint from every command for the same problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.specfiles import BASE_SPEC, run_cli, write_spec

from specrunner.errors import LIMIT_HINTS

OVER_BUDGET = BASE_SPEC.replace("max_usd: 1", "max_usd: 0.1")


def test_a_missing_spec_annotates_the_file_in_github_format(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["validate", "--format", "github", "nonexist.yaml"])
    assert code == 2
    assert out.splitlines()[0] == ("::error file=nonexist.yaml,title=specrunner file-missing::"
                                   "no such file")


@pytest.mark.parametrize("command", ["validate", "plan", "report"])
def test_a_missing_spec_is_one_clean_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          command: str) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli([command, "nonexist.yaml"])
    assert code == 2
    if command == "validate":
        assert out == ("nonexist.yaml: error: no such file\n"
                       "1 spec(s) checked: 0 valid, 1 invalid, 1 error(s), 0 warning(s)\n")
    elif command == "plan":
        assert (out, err) == ("", "nonexist.yaml: error: no such file\n")
    else:
        assert err == "error: nonexist.yaml is neither a run folder nor a spec file\n"


def test_a_misspelled_spec_name_gets_a_did_you_mean(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    write_spec(tmp_path, name="storefront-local.yaml")
    monkeypatch.chdir(tmp_path)
    assert run_cli(["plan", "storefront.yaml"]) == (
        2, "", "storefront.yaml: error: no such file (did you mean `storefront-local.yaml`?)\n")


def test_plan_prints_each_spec_diagnostic_once_prefixed(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, BASE_SPEC.replace("version: 1\n", ""))
    code, out, err = run_cli(["plan", str(spec)])
    assert (code, out) == (2, "")
    assert err == (f"{spec}:2:1: error: missing required field `version` [$.version] "
                   "(add `version: 1`)\n")


def test_validate_and_plan_give_the_same_budget_hint(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, OVER_BUDGET)
    hint = LIMIT_HINTS["max_usd"]
    code, out, _ = run_cli(["validate", str(spec)])
    assert code == 2
    assert out.splitlines()[0] == (
        f"{spec}:16:19: error: plan needs $0.16 for 2 images; budget max_usd is $0.10 "
        f"[$.budget.max_usd] ({hint})")
    assert run_cli(["plan", str(spec)]) == (
        2, "", f"error: plan needs $0.16 for 2 images; budget max_usd is $0.10 ({hint})\n")


def test_a_bare_report_in_the_spec_folder_names_the_spec_and_its_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_spec(tmp_path, BASE_SPEC.replace("name: demo", "name: demo\noutput: {dir: runs/demo}"),
               name="demo.yaml")
    (tmp_path / "notes.yaml").write_text("just: notes\n")  # not a spec: not suggested
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["report"])
    assert (code, out) == (2, "")
    assert err == ("error: no run record in . (expected .specrunner/run.db) (spec files here: "
                   "demo.yaml (output runs/demo, not run yet); run one first: "
                   "`specrunner run demo.yaml`)\n")
    (tmp_path / "runs" / "demo" / ".specrunner").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / ".specrunner" / "run.db").touch()
    code, _, err = run_cli(["report"])
    assert err == ("error: no run record in . (expected .specrunner/run.db) (spec files here: "
                   "demo.yaml (output runs/demo, has a run record); try "
                   "`specrunner report demo.yaml`)\n")


def test_a_bare_report_above_run_folders_names_them(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("b", "a"):
        (tmp_path / "out" / name / ".specrunner").mkdir(parents=True)
        (tmp_path / "out" / name / ".specrunner" / "run.db").touch()
    monkeypatch.chdir(tmp_path)
    assert run_cli(["report"])[2] == (
        "error: no run record in . (expected .specrunner/run.db) (run folders below: out/a, "
        "out/b; try `specrunner report out/a`)\n")
    assert run_cli(["report", "out"])[2] == (
        "error: no run record in out (expected out/.specrunner/run.db) (run folders below: "
        "out/a, out/b; try `specrunner report out/a`)\n")
