"""`specrunner init DIR`: a ready example campaign, from the installed package's files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fixtures.specfiles import run_cli

from specrunner import starter
from specrunner.plan import build_plan
from specrunner.spec import SCHEMA_FILE, load_spec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "specs" / "examples"
FILES = ["storefront-local.yaml", "spec.schema.json", "images/bakery-mask.png",
         "images/bakery.jpg", "images/diner-mask.png", "images/diner.jpg",
         "images/records-mask.png", "images/records.jpg", "README.md"]
NEXT = ("next:\n  specrunner validate {spec}\n  specrunner run {spec} --local\n"
        "  specrunner report {spec} --format html\n")


def test_init_writes_a_campaign_that_validates_and_plans(tmp_path: Path) -> None:
    dest = tmp_path / "demo"
    code, out, err = run_cli(["init", str(dest)])
    assert (code, err) == (0, "")
    assert out == (f"wrote 9 file(s) in {dest}/: {', '.join(FILES)}\n"
                   + NEXT.format(spec=f"{dest}/storefront-local.yaml"))
    assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()) == \
        sorted(FILES)
    for name in FILES:
        if name.startswith("images/"):
            assert (dest / name).read_bytes() == (EXAMPLES / name).read_bytes()
    spec = load_spec(dest / "storefront-local.yaml")
    assert spec.output.dir == dest / "out" / "storefront-local"
    plan = build_plan(spec)
    assert (len(plan.tasks), str(plan.total_cost)) == (12, "0.96")
    # the same campaign as the repository's example: same requests, same task keys
    assert [t.task_key for t in plan.tasks] == \
        [t.task_key for t in build_plan(load_spec(EXAMPLES / "storefront-local.yaml")).tasks]


def test_the_schema_line_resolves_from_the_folder(tmp_path: Path) -> None:
    run_cli(["init", str(tmp_path)])
    first = (tmp_path / "storefront-local.yaml").read_text().splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    target = tmp_path / first[len(prefix):]
    assert json.loads(target.read_text()) == json.loads(SCHEMA_FILE.read_text())


def test_init_in_the_current_folder_and_again(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli(["init"])[1].endswith(NEXT.format(spec="storefront-local.yaml"))
    # again: nothing to write, nothing lost
    assert run_cli(["init", "."]) == (
        0, "9 file(s) already there, unchanged\n" + NEXT.format(spec="storefront-local.yaml"),
        "")


def test_init_never_replaces_a_different_file(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("my notes\n")
    code, out, err = run_cli(["init", str(tmp_path)])
    assert (code, out) == (2, "")
    assert err == (f"error: {tmp_path} already has different README.md; nothing was written "
                   "(choose another folder, or move those files away)\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]
    assert (tmp_path / "README.md").read_text() == "my notes\n"


@pytest.mark.parametrize("block, named", [("images", "images"),
                                          ("storefront-local.yaml/", "storefront-local.yaml")])
def test_a_file_or_folder_in_the_way_is_named(tmp_path: Path, block: str, named: str) -> None:
    if block.endswith("/"):
        (tmp_path / block).mkdir()
    else:
        (tmp_path / block).write_text("in the way\n")
    code, _, err = run_cli(["init", str(tmp_path)])
    assert code == 2 and f"already has different {named};" in err


def test_init_into_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    assert run_cli(["init", str(tmp_path / "f")]) == (
        2, "", f"error: {tmp_path / 'f'} exists and is not a folder\n")


def test_every_edit_of_the_example_applies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    # An example edited so that an edit no longer applies fails loudly, never silently.
    edited = tmp_path / "examples"
    (edited / "images").mkdir(parents=True)
    text = (EXAMPLES / "storefront-local.yaml").read_text()
    (edited / "storefront-local.yaml").write_text(text.replace("../../out/", "../out/"))
    monkeypatch.setattr(starter, "EXAMPLES_DIR", edited)
    expected = re.escape("expected '  dir: ../../out/storefront-local' 1")
    with pytest.raises(RuntimeError, match=expected):
        starter.files()


def test_the_example_runs_locally(tmp_path: Path) -> None:
    run_cli(["init", str(tmp_path)])
    code, out, err = run_cli(["run", str(tmp_path / "storefront-local.yaml"), "--local",
                              "--progress", "none"])
    assert code == 0, out + err
    made = sorted(p.relative_to(tmp_path / "out" / "storefront-local").as_posix()
                  for p in (tmp_path / "out" / "storefront-local").rglob("*.jpg"))
    assert made == sorted(f"{i}/{p}-{s}.jpg" for i in ("bakery", "diner", "records")
                          for p in ("artdeco", "neon") for s in ("DESIGN", "REALISTIC"))
