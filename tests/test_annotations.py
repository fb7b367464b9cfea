"""`--format github`: GitHub workflow commands from validate, plan and lock --check, exactly."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest

from specrunner import cli
from specrunner.annotations import escape_data, escape_property, workflow_command

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "specs" / "examples" / "images"

SPEC = """\
version: 1
name: shop
inputs:
  bakery: {seed: images/bakery.jpg, mask: images/bakery-mask.png, vars: {shop_name: MIRELLE}}
prompts:
  neon: Neon sign reading "{shop_name}" above the door, warm pink tubes
matrix:
  magicPrompt: ["ON", "OFF"]
budget:
  max_usd: 1
"""
NO_SEED = ("::notice file={f},line=1,col=1,title=specrunner no-seed::ideogram:3@3 takes no seed: "
           "every generation is a new image and none can be regenerated; an identical request "
           "is answered from the run record, not generated again [$.model] (`repeat: N` asks "
           "for N different images of each variant)")
MAGIC_ON = ('::warning file={f},line=8,col=17,title=specrunner magic-prompt::magicPrompt is "ON" '
            "for 1 of 2 tasks: the provider rewrites each prompt before generating, so the image "
            "follows a prompt the plan does not show [$.matrix.magicPrompt[0]] (set it to "
            '"OFF" to send prompts as written)')


@pytest.fixture()
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "images").mkdir()
    for name in ("bakery.jpg", "bakery-mask.png"):
        shutil.copyfile(IMAGES / name, tmp_path / "images" / name)
    (tmp_path / "shop.yaml").write_text(SPEC, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_escaping_follows_githubs_rules() -> None:
    assert escape_data("100% done\r\nnext: a, b") == "100%25 done%0D%0Anext: a, b"
    assert escape_property("a:b,c%\n\r") == "a%3Ab%2Cc%25%0A%0D"
    assert escape_data("%0A") == "%250A"  # a literal %0A survives as text
    assert workflow_command("warning", "plain") == "::warning::plain"
    assert workflow_command("error", "m", file="x.yaml", line=None, col=3, title="t: 1,2") == (
        "::error file=x.yaml,col=3,title=t%3A 1%2C2::m")


def test_validate_github_exact(folder: Path) -> None:
    bad = folder / "a,b:c.yaml"
    bad.write_text(SPEC.replace("budget:", "budjet:").replace(
        '  magicPrompt: ["ON", "OFF"]', '  magicPrompt: ["ON", "OFF"]\n  "50%\\r\\nx": [1]'),
        encoding="utf-8")
    code, out, err = run("validate", "--format", "github", "shop.yaml", "a,b:c.yaml")
    assert (code, err) == (2, "")
    key = "50%25%0D%0Ax"  # the key holds "%", "\r" and "\n"
    assert out.splitlines() == [
        MAGIC_ON.format(f="shop.yaml"),
        NO_SEED.format(f="shop.yaml"),
        "shop.yaml: valid (2 tasks)",
        ("::error file=a%2Cb%3Ac.yaml,line=10,col=1,title=specrunner unknown-field::unknown "
        "field `budjet` [$.budjet] (did you mean `budget`?)"),
        (f"::error file=a%2Cb%3Ac.yaml,line=9,col=3,title=specrunner invalid-name::`{key}`: keys "
        "must be `input`, `prompt`, a request field (styleType or a dotted path) or a "
        f"variable name [$.matrix.{key}]"),
        (f"::error file=a%2Cb%3Ac.yaml,line=9,col=3,title=specrunner unknown-key::unknown key "
        f"`{key}`: not a request field, and no template uses {{{key}}} [$.matrix.{key}]"),
        "2 spec(s) checked: 1 valid, 1 invalid, 3 error(s), 1 warning(s)"]


def test_plan_github_exact(folder: Path) -> None:
    code, out, err = run("plan", "--format", "github", "shop.yaml")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        MAGIC_ON.format(f="shop.yaml"), NO_SEED.format(f="shop.yaml"),
        ("::notice file=shop.yaml,title=specrunner plan::plan shop: 2 tasks, 2 images, "
        "estimated $0.16 (budget $1.00, max 10,000 tasks)")]
    code, out, err = run("plan", "--format", "github", "shop.yaml", "--max-usd", "0.1")
    assert (code, err) == (2, "")
    assert out == ("::error file=shop.yaml,line=10,col=12,title=specrunner plan-limit::plan "
                   "needs $0.16 for 2 images; budget max_usd is $0.10 [$.budget.max_usd] (raise "
                   "budget.max_usd, or override it with --max-usd USD (plan, run))\n")
    (folder / "shop.yaml").write_text(SPEC.replace("{shop_name}", "{shop}"), encoding="utf-8")
    code, out, err = run("plan", "--format", "github", "shop.yaml")
    assert (code, err) == (2, "")
    assert out == ("::error file=shop.yaml,line=6,col=9,title=specrunner undefined-variable::"
                   "prompt `neon` uses {shop}, which is not defined for input `bakery` "
                   "[$.prompts.neon] (did you mean `shop_name`?)\n")


def test_plan_text_keeps_stdout_for_the_plan(folder: Path) -> None:
    code, out, err = run("plan", "shop.yaml", "--format", "json")
    assert code == 0
    import json

    doc = json.loads(out)  # stdout is the JSON document alone
    assert [(d["severity"], d["code"]) for d in doc["diagnostics"]] == [
        ("warning", "magic-prompt"), ("note", "no-seed")]
    assert err.splitlines()[0] == ("shop.yaml:8:17: warning: magicPrompt is \"ON\" for 1 of 2 "
                                   "tasks: the provider rewrites each prompt before generating, "
                                   "so the image follows a prompt the plan does not show "
                                   "[$.matrix.magicPrompt[0]] (set it to \"OFF\" to send "
                                   "prompts as written)")


def test_the_no_seed_note_is_stated_once(folder: Path) -> None:
    shutil.copyfile(folder / "shop.yaml", folder / "two.yaml")
    code, out, _ = run("validate", "shop.yaml", "two.yaml")
    assert code == 0
    assert [line.split(": ")[1] for line in out.splitlines()[:-1]] == [
        "warning", "note", "valid (2 tasks)", "warning", "valid (2 tasks)"]
    code, out, _ = run("validate", "--format", "json", "shop.yaml", "two.yaml")
    import json

    # JSON is per spec, complete: each spec carries its own note
    assert [[d["code"] for d in s["diagnostics"]] for s in json.loads(out)["specs"]] == [
        ["magic-prompt", "no-seed"], ["magic-prompt", "no-seed"]]


def test_secrets_never_reach_annotations(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNWARE_API_KEY", "sk-test-0123456789")
    (folder / "shop.yaml").write_text(SPEC.replace("warm pink tubes", "sk-test-0123456789"),
                                      encoding="utf-8")
    for argv in (["validate"], ["plan"], ["lock", "--check"]):
        code, out, err = run(*argv, "--format", "github", "shop.yaml")
        assert code == 2 and "sk-test-0123456789" not in out + err, argv
        assert "::error file=shop.yaml" in out
