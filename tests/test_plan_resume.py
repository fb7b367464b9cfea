"""`plan` against a run record: why each task would run (issue 4 item 7).

The record is real: the example-like campaign below is run once with `specrunner run --local`
in-process, then each test edits a copy of the spec (or of the record) and asks `plan`.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image
from test_run_support import force_states

from specrunner import cli
from specrunner.plan.status import changed_fields
from specrunner.run import set_testing

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "specs" / "examples" / "images"
NEON = ("Replace only the masked sign with a glowing neon sign reading \"{shop_name}\", "
        "warm pink and teal tubes")

# specs/examples/storefront-local.yaml, with its output folder beside the spec.
SPEC = f"""\
version: 1
name: storefront-local
defaults:
  outputFormat: JPG
  providerSettings:
    ideogram:
      magicPrompt: "ON"
vars:
  city: Lyon
inputs:
  bakery:
    seed: images/bakery.jpg
    mask: images/bakery-mask.png
    vars: {{shop_name: MIRELLE PATISSERIE}}
  diner:
    seed: images/diner.jpg
    mask: images/diner-mask.png
    vars: {{shop_name: SUNRISE DINER}}
prompts:
  artdeco: >-
    Replace the masked storefront sign with refined Art Deco signage reading
    "{{shop_name}}" in elegant gold geometric lettering, {{city}} facade
  neon: '{NEON}'
matrix:
  input: [bakery, diner]
  prompt: [artdeco, neon]
  styleType: [DESIGN, REALISTIC]
output:
  dir: out
  name: "{{input}}/{{prompt}}-{{styleType}}"
budget:
  max_usd: 1.00
execution:
  concurrency: 4
  poll_interval_s: 0.01
  poll_max_interval_s: 0.02
"""
VARIANTS = [f"{i}-{p}-{s}" for i in ("bakery", "diner") for p in ("artdeco", "neon")
            for s in ("DESIGN", "REALISTIC")]


def cli_run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the spec, its images and the record of one complete --local run."""
    folder = tmp_path_factory.mktemp("recorded")
    shutil.copytree(IMAGES, folder / "images")
    (folder / "spec.yaml").write_text(SPEC, encoding="utf-8")
    set_testing(True)
    try:
        code, out, err = cli_run("run", str(folder / "spec.yaml"), "--local",
                                 "--progress", "none")
    finally:
        set_testing(False)
    assert code == 0, out + err
    assert (folder / "out" / ".specrunner" / "run.db").is_file()
    return folder


@pytest.fixture()
def camp(recorded: Path, tmp_path: Path) -> Path:
    """A private copy of the recorded campaign (spec, images, outputs, record)."""
    shutil.copytree(recorded, tmp_path / "camp")
    return tmp_path / "camp" / "spec.yaml"


def plan_json(spec: Path, *extra: str) -> dict:
    code, out, err = cli_run("plan", str(spec), "--format", "json", *extra)
    assert code == 0, err
    return json.loads(out)


def statuses(spec: Path, *extra: str) -> dict[str, str]:
    return {t["variant"]: t["status"] for t in plan_json(spec, *extra)["tasks"]}


def edit(spec: Path, old: str, new: str) -> None:
    text = spec.read_text(encoding="utf-8")
    assert old in text, old
    spec.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_unchanged_spec_is_all_done(camp: Path) -> None:
    assert statuses(camp) == dict.fromkeys(VARIANTS, "done")
    code, out, _ = cli_run("plan", str(camp))
    record = camp.parent / "out" / ".specrunner" / "run.db"
    lines = out.splitlines()
    assert code == 0 and lines[1] == f"8 done, 0 would run (est. $0.00) (record: {record})"
    assert lines[3].split()[-1] == "status"
    assert [line.split()[-1] for line in lines[5:13]] == ["done"] * 8


def test_one_edited_prompt_changes_exactly_its_tasks_and_run_agrees(camp: Path) -> None:
    edit(camp, "warm pink and teal", "cold blue and teal")
    got = statuses(camp)
    assert got == {v: "changed: positivePrompt" if "-neon-" in v else "done" for v in VARIANTS}
    code, out, _ = cli_run("plan", str(camp))
    assert out.splitlines()[1].startswith("4 done, 4 would run (est. $0.32): 4 changed; 4 "
                                          "recorded tasks are not in this plan (record: ")
    # what plan said is what run does: 4 skipped, 4 sent; afterwards everything is done
    set_testing(True)
    code, out, err = cli_run("run", str(camp), "--local", "--progress", "none")
    assert code == 0, out + err
    rows = dict(line.rsplit(None, 1) for line in out.splitlines()[1:6])
    assert (rows["done before this run"].strip(), rows["done in this run"].strip()) == ("4", "4")
    assert statuses(camp) == dict.fromkeys(VARIANTS, "done")
    # a variant recorded under two keys now: the latest one is what a change is measured from
    edit(camp, 'magicPrompt: "ON"', 'magicPrompt: "OFF"')
    assert statuses(camp) == dict.fromkeys(VARIANTS,
                                           "changed: providerSettings.ideogram.magicPrompt")


def test_nested_fields_new_values_and_input_bytes(camp: Path) -> None:
    edit(camp, 'magicPrompt: "ON"', 'magicPrompt: "OFF"')
    edit(camp, "styleType: [DESIGN, REALISTIC]", "styleType: [DESIGN, REALISTIC, ANIME]")
    edit(camp, "max_usd: 1.00", "max_usd: 5.00")
    seed = camp.parent / "images" / "diner.jpg"
    with Image.open(seed) as img:
        img.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(seed, quality=90)
    got = statuses(camp)
    for v in VARIANTS:
        fields = ["providerSettings.ideogram.magicPrompt"]
        if v.startswith("diner"):
            fields.append("inputs.seedImage")
        assert got.pop(v) == "changed: " + ", ".join(fields), v
    assert got == {f"{i}-{p}-ANIME": "new" for i in ("bakery", "diner")
                   for p in ("artdeco", "neon")}


def test_mask_polarity_is_named_though_the_request_is_the_same(camp: Path) -> None:
    edit(camp, "    mask: images/bakery-mask.png\n",
         "    mask: images/bakery-mask.png\n    mask_polarity: black-edits\n")
    got = statuses(camp)
    assert got == {v: "changed: mask_polarity" if v.startswith("bakery") else "done"
                   for v in VARIANTS}


def set_states(spec: Path, **states: tuple[str, str | None]) -> None:
    force_states(spec.parent / "out", {v.replace("_", "-"): st for v, st in states.items()})


def test_recorded_states_become_reasons(camp: Path) -> None:
    set_states(camp, bakery_artdeco_DESIGN=("failed", "contentModeration"),
               bakery_neon_DESIGN=("failed", None), diner_artdeco_DESIGN=("accepted", None),
               diner_neon_DESIGN=("sending", None), diner_neon_REALISTIC=("planned", None))
    doc = plan_json(camp)
    got = {t["variant"]: t["status"] for t in doc["tasks"]}
    assert got == {
        "bakery-artdeco-DESIGN": "retry: contentModeration", "bakery-artdeco-REALISTIC": "done",
        "bakery-neon-DESIGN": "retry: unknown error", "bakery-neon-REALISTIC": "done",
        "diner-artdeco-DESIGN": "in doubt: reconcile first", "diner-artdeco-REALISTIC": "done",
        "diner-neon-DESIGN": "in doubt: reconcile first", "diner-neon-REALISTIC": "pending"}
    record = str(camp.parent / "out" / ".specrunner" / "run.db")
    assert doc["record"] == {"path": record, "done": 3, "retry": 2, "in_doubt": 2, "pending": 1,
                             "would_run": 5, "est_cost_to_run": "0.40", "not_in_plan": 0}


def test_csv_and_markdown_carry_the_status(camp: Path) -> None:
    edit(camp, "warm pink and teal", "warm pink and green")
    code, out, _ = cli_run("plan", str(camp), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [(r["variant"], r["status"]) for r in rows] == [
        (v, "changed: positivePrompt" if "-neon-" in v else "done") for v in VARIANTS]
    code, out, _ = cli_run("plan", str(camp), "--format", "markdown")
    assert code == 0 and "| status" in out and "4 done, 4 would run (est. $0.32)" in out


def test_out_looks_at_another_run_folder(camp: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    shutil.move(camp.parent / "out", other)
    code, out, _ = cli_run("plan", str(camp))
    assert code == 0 and "status" not in out.splitlines()[2]  # no record: no status column
    assert statuses(camp, "--out", str(other)) == dict.fromkeys(VARIANTS, "done")
    code, out, err = cli_run("plan", str(camp), "--out", str(tmp_path / "empty"))
    assert (code, out) == (2, "") and "no run record in" in err


@pytest.mark.parametrize("damage", ["garbage", "no-table", "bad-state", "bad-request"])
def test_damaged_record_is_a_clear_error(camp: Path, damage: str) -> None:
    db = camp.parent / "out" / ".specrunner" / "run.db"
    if damage == "garbage":
        for p in db.parent.glob("run.db*"):
            p.unlink()
        db.write_bytes(b"this is not a database" * 100)
    else:
        conn = sqlite3.connect(db)
        with conn:
            if damage == "no-table":
                conn.execute("ALTER TABLE tasks DROP COLUMN error_code")
            elif damage == "bad-state":
                conn.execute("UPDATE tasks SET state='exploded' WHERE variant_id=?",
                             (VARIANTS[0],))
            else:
                edit(camp, "warm pink", "warm red")
                conn.execute("UPDATE tasks SET request_json='{' WHERE variant_id=?",
                             (VARIANTS[2],))
        conn.close()
    code, out, err = cli_run("plan", str(camp))
    assert (code, out) == (2, "")
    assert err.startswith(f"error: the run record {db} is damaged"), err
    assert err.count("\n") == 1


def test_changed_fields_names_nested_paths_and_ignores_transport() -> None:
    old = {"taskUUID": "a", "deliveryMethod": "async", "includeCost": True,
           "positivePrompt": "x", "numberResults": 1, "ttl": 60,
           "providerSettings": {"ideogram": {"styleType": "DESIGN", "magicPrompt": "ON"}},
           "inputs": {"seedImage": "local:1", "maskImage": "local:2"}}
    new = {"taskUUID": "b", "deliveryMethod": "sync", "includeCost": True,
           "positivePrompt": "x", "numberResults": True, "outputQuality": 90,
           "providerSettings": {"ideogram": {"styleType": "REALISTIC", "magicPrompt": "ON"}},
           "inputs": {"seedImage": "local:3", "maskImage": "local:2"}}
    assert changed_fields(old, new) == ["numberResults", "outputQuality",
                                        "providerSettings.ideogram.styleType",
                                        "inputs.seedImage", "ttl"]
    assert changed_fields(old, old) == []
    assert changed_fields({"providerSettings": {"ideogram": {}}},
                          {"providerSettings": "x"}) == ["providerSettings"]
