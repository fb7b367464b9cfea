"""Lock files: exact bytes, determinism, `lock --check` on every kind of staleness, the API
`run --locked` uses, and the example specs' locks kept current."""

from __future__ import annotations

import io
import os
import shutil
import tomllib
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from specrunner import __version__, cli
from specrunner.plan import build_plan
from specrunner.plan.lock import (
    Lock,
    LockedTask,
    LockFormatError,
    check_lock,
    lock_of,
    lock_path,
    parse,
    render,
    schema_sha256,
    write_lock,
)
from specrunner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "specs" / "examples" / "images"
EXAMPLES = sorted((ROOT / "specs" / "examples").glob("*.yaml"))

SPEC = """\
version: 1
name: shop
defaults:
  providerSettings:
    ideogram:
      magicPrompt: "OFF"
inputs:
  bakery: {seed: images/bakery.jpg, mask: images/bakery-mask.png, vars: {shop_name: MIRELLE}}
  diner: {seed: images/diner.jpg, mask: images/diner-mask.png, vars: {shop_name: SUNRISE}}
prompts:
  neon: Neon sign reading "{shop_name}" above the door, warm pink tubes
matrix:
  input: [bakery, diner]
  styleType: [DESIGN, ANIME]
budget:
  max_usd: 1
"""

BAKERY = "0561d30f0015f89179222e96c67fd6349ee765eec87a4f8d75b823ff214cde3a"
BAKERY_MASK = "c47e9bd726cacf47c52dffa7047916582c619999aa490b38b138192f1d583d1c"
DINER = "18cc2ea077a0a3a81b3d699ce4c8f9ea5c6ded377a7f3bf189f9598254e21cad"
DINER_MASK = "5ae8333b1d1b37decfd20400e1dd5eb4bdd791f7a5056acb93f3b62770d133c5"


def task_block(variant: str, key: str, uuid: str, seed: str, mask: str, name: str) -> str:
    return f"""
[[task]]
variant = "{variant}"
key = "{key}"
uuid = "{uuid}"
images = 1
cost = "0.08"
inputs.seedImage = "sha256:{seed}"  # images/{name}.jpg
inputs.maskImage = "sha256:{mask}"  # images/{name}-mask.png
"""


# The version and the schema's hash are read, not pinned: they change with specrunner.
LOCK = f"""\
# Lock of shop.yaml: the tasks `specrunner run` will send and what they cost.
# Written by `specrunner lock`; `specrunner lock --check` compares it with the spec.
lock-version = 1
spec = "shop.yaml"
spec-sha256 = "aa074c8e0db19637e3c553a7ba3810828d07dc0e1a2eef33a4c081e7cc0a45a9"
specrunner = "{__version__}"
model = "ideogram:3@3"
model-name = "Ideogram 2.0 Edit"
request-schema = "ideogram-3-3.request.schema.json"
request-schema-sha256 = "{schema_sha256("ideogram:3@3")}"

[prices]  # USD per image
"ideogram:3@3" = "0.08"
""" + "".join([
    task_block("bakery-DESIGN", "bda88e589c01a0e9dcfcdf8e4c74b089e8dd1a61d233d5f90684eef53384a888",
               "53d0d529-5052-4f01-8f3c-0a06d626e11f", BAKERY, BAKERY_MASK, "bakery"),
    task_block("bakery-ANIME", "e8791d5574e99222a7508ccf4d738b4065d2a848c88abdb1bb2cbacc6e11ab96",
               "4485851b-4944-436e-a81c-4bd528fc2549", BAKERY, BAKERY_MASK, "bakery"),
    task_block("diner-DESIGN", "e0c82508a576f88d7e2fadb88d47d66b0a9bd913278ddc0053606e648c98124f",
               "8d801fb7-3790-4125-954f-6ba60b8f6ffc", DINER, DINER_MASK, "diner"),
    task_block("diner-ANIME", "35e0477e48a7ce6d7392806076eaec36ca312cdd3f666677d20ee4f0c15e223a",
               "e44b87df-847d-45fb-903c-93ede51e38c7", DINER, DINER_MASK, "diner"),
]) + """
[totals]
tasks = 4
images = 4
cost = "0.32"
"""

NOTE = ("shop.yaml:1:1: note: ideogram:3@3 takes no seed: every generation is a new image and "
        "none can be regenerated; an identical request is answered from the run record, not "
        "generated again [$.model] (`repeat: N` asks for N different images of each variant)")
SUMMARY = ("1 lock(s) checked: {} up to date, {} stale, {} missing, {} unreadable, "
           "{} spec(s) invalid")


@pytest.fixture()
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """shop.yaml with its images in a temporary folder, which is the working directory (so
    messages name `shop.yaml` as a user in that folder would type it)."""
    (tmp_path / "images").mkdir()
    for name in ("bakery.jpg", "bakery-mask.png", "diner.jpg", "diner-mask.png"):
        shutil.copyfile(IMAGES / name, tmp_path / "images" / name)
    (tmp_path / "shop.yaml").write_text(SPEC, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "shop.yaml"


def lock_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(["lock", *argv], out, err)
    return code, out.getvalue(), err.getvalue()


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_lock_file_bytes_exact(shop: Path) -> None:
    assert lock_cli("shop.yaml") == (
        0, f"{NOTE}\nwrote shop.lock (4 tasks, 4 images, $0.32)\n", "")
    data = (shop.parent / "shop.lock").read_bytes()
    assert data == LOCK.encode("utf-8")
    assert b"\r" not in data
    # what the file says is what the plan says
    plan = build_plan(load_spec(shop))
    doc = tomllib.loads(data.decode())
    assert [(t["variant"], t["key"], t["uuid"]) for t in doc["task"]] == [
        (t.variant_id, t.task_key, t.task_uuid) for t in plan.tasks]
    assert doc["spec-sha256"] == plan.spec.source_sha256


def test_lock_is_deterministic_and_not_rewritten_when_current(shop: Path) -> None:
    lock = shop.parent / "shop.lock"
    assert write_lock(build_plan(load_spec(shop))) is True
    os.utime(lock, (1_000_000, 1_000_000))
    assert lock_cli("shop.yaml") == (
        0, f"{NOTE}\nshop.lock: up to date (4 tasks, 4 images, $0.32)\n", "")
    assert lock.stat().st_mtime == 1_000_000  # untouched: same bytes
    # the same spec in another folder (another absolute path) locks to the same bytes
    other = shop.parent / "copy"
    shutil.copytree(shop.parent / "images", other / "images")
    shutil.copyfile(shop, other / "shop.yaml")
    write_lock(build_plan(load_spec(other / "shop.yaml")))
    assert (other / "shop.lock").read_bytes() == lock.read_bytes()
    assert not list(shop.parent.glob(".*.tmp"))  # no temporary file left behind


def test_round_trip_of_awkward_strings() -> None:
    """The writer escapes what TOML needs; tomllib reads back exactly what was written."""
    odd = 'quote" back\\slash é tab\t nl\n del\x7f bell\x07'
    lock = Lock({"lock-version": 1, "spec": odd, "model": "ideogram:3@3"},
                {"ideogram:3@3": Decimal("0.0125")},
                (LockedTask(odd, "k", "u", 2, Decimal("0.025"),
                            {"seedImage": "sha256:ab", "maskImage": "https://x.test/m.png?a=b"},
                            {"seedImage": "dir/new\nline.png"}),),
                1, 2, Decimal("0.025"))
    data = render(lock)
    assert parse(data) == lock
    assert data.count(b"\n") == len(data.decode().splitlines())  # no line broken by a value
    assert b'inputs.seedImage = "sha256:ab"  # dir/new\\nline.png\n' in data
    assert b'"ideogram:3@3" = "0.0125"' in data  # a price below a cent stays visible


def test_paths_with_spaces_and_the_yml_suffix(tmp_path: Path) -> None:
    (tmp_path / "im g").mkdir()
    for name in ("bakery.jpg", "bakery-mask.png"):
        shutil.copyfile(IMAGES / name, tmp_path / "im g" / name)
    spec = tmp_path / "odd.yml"
    spec.write_text(SPEC.replace("images/bakery", "im g/bakery").replace(
        "  diner: {seed: images/diner.jpg, mask: images/diner-mask.png, vars: {shop_name: "
        "SUNRISE}}\n", "").replace("input: [bakery, diner]", "input: [bakery]"),
        encoding="utf-8")
    plan = build_plan(load_spec(spec))
    data = render(lock_of(plan))
    assert parse(data) == lock_of(plan)  # equal field by field (the path comments aside)
    assert b"  # im g/bakery.jpg\n" in data
    assert lock_path(spec) == tmp_path / "odd.lock"
    write_lock(plan)
    assert check_lock(plan).ok


def test_check_current_and_the_api_run_locked_uses(shop: Path) -> None:
    plan = build_plan(load_spec(shop))
    status = check_lock(plan, "shop.yaml")
    assert (status.state, status.ok, status.missing, status.exit_code) == ("missing", False,
                                                                            True, 2)
    assert status.message() == "shop.lock: missing; create it with `specrunner lock shop.yaml`"
    write_lock(plan)
    status = check_lock(plan, "shop.yaml")
    assert (status.state, status.ok, status.missing, status.stale) == ("current", True, False,
                                                                       False)
    assert lock_cli("--check", "shop.yaml") == (
        0, f"{NOTE}\nshop.lock: up to date (4 tasks, $0.32)\n{SUMMARY.format(1, 0, 0, 0, 0)}\n",
        "")


def stale_check(shop: Path, *details: str) -> None:
    code, out, err = lock_cli("--check", "shop.yaml")
    lines = out.splitlines()
    assert (code, err) == (1, "")
    assert lines[1].startswith("shop.lock: stale (") and lines[1].endswith(
        "); update it with `specrunner lock shop.yaml`"), lines[1]
    assert lines[2:-1] == [f"  {d}" for d in details]
    assert lines[-1] == SUMMARY.format(0, 1, 0, 0, 0)


def test_stale_after_a_prompt_edit(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    edit(shop, "warm pink tubes", "cold blue tubes")
    stale_check(shop, *(f"~ {v}: key, uuid (the request differs)" for v in (
        "bakery-DESIGN", "bakery-ANIME", "diner-DESIGN", "diner-ANIME")))
    assert lock_cli("--check", "shop.yaml")[1].splitlines()[1] == (
        "shop.lock: stale (4 changed); update it with `specrunner lock shop.yaml`")


def test_stale_after_an_input_image_changes(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    image = shop.parent / "images" / "diner.jpg"
    with Image.open(image) as im:
        im.convert("RGB").rotate(180).save(image, quality=90)
    stale_check(shop, "~ diner-DESIGN: inputs.seedImage, key, uuid",
                "~ diner-ANIME: inputs.seedImage, key, uuid")


def test_stale_after_tasks_are_added_and_removed(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    edit(shop, "styleType: [DESIGN, ANIME]", "styleType: [DESIGN, REALISTIC]")
    stale_check(shop, "+ bakery-REALISTIC (new, $0.08)", "+ diner-REALISTIC (new, $0.08)",
                "- bakery-ANIME (no longer planned, $0.08)",
                "- diner-ANIME (no longer planned, $0.08)")
    edit(shop, "styleType: [DESIGN, REALISTIC]", "styleType: [DESIGN, ANIME, REALISTIC]")
    stale_check(shop, "+ bakery-REALISTIC (new, $0.08)", "+ diner-REALISTIC (new, $0.08)",
                "totals: 4 -> 6 tasks, 4 -> 6 images, $0.32 -> $0.48")
    edit(shop, "input: [bakery, diner]", "input: [bakery]")
    edit(shop, "styleType: [DESIGN, ANIME, REALISTIC]", "styleType: [DESIGN, ANIME]")
    stale_check(shop, "- diner-DESIGN (no longer planned, $0.08)",
                "- diner-ANIME (no longer planned, $0.08)",
                "totals: 4 -> 2 tasks, 4 -> 2 images, $0.32 -> $0.16")


def test_stale_after_a_price_change(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    shop.write_text(SPEC + 'prices: {"ideogram:3@3": 0.1}\n', encoding="utf-8")
    stale_check(shop, *(f"~ {v}: cost" for v in ("bakery-DESIGN", "bakery-ANIME",
                                                  "diner-DESIGN", "diner-ANIME")),
                "price of ideogram:3@3: 0.08 -> 0.10 per image",
                "totals: 4 -> 4 tasks, 4 -> 4 images, $0.32 -> $0.40")


def test_a_renamed_variant_is_one_change_not_two(shop: Path) -> None:
    shop.write_text(SPEC.replace(
        "matrix:\n  input: [bakery, diner]\n  styleType: [DESIGN, ANIME]\n",
        "variants:\n  - {id: first, input: bakery}\n  - {id: second, input: diner}\n"),
        encoding="utf-8")
    write_lock(build_plan(load_spec(shop)))
    edit(shop, "id: second", "id: diner-sign")
    stale_check(shop, "~ second -> diner-sign: variant")


def test_a_comment_only_edit_keeps_the_lock_current_with_a_note(shop: Path) -> None:
    """Decision: the lock guards what is sent and paid. A comment or formatting edit changes
    the spec's sha256 and nothing else: --check passes (0), says so, and `lock` refreshes."""
    write_lock(build_plan(load_spec(shop)))
    shop.write_text("# reviewed by the brand team\n" + SPEC.replace("max_usd: 1", "max_usd: 1.0"),
                    encoding="utf-8")
    code, out, _ = lock_cli("--check", "shop.yaml")
    assert code == 0
    assert out.splitlines()[1:] == [
        ("shop.lock: up to date (4 tasks, $0.32); `specrunner lock shop.yaml` refreshes its "
        "header"),
        ("  note: the spec changed since it was locked, its tasks did not (comments, formatting "
        "or settings that change nothing sent)"),
        SUMMARY.format(1, 0, 0, 0, 0)]
    assert check_lock(build_plan(load_spec(shop))).ok  # run --locked accepts it
    assert lock_cli("shop.yaml")[1].splitlines()[-1] == (
        "updated shop.lock: header refreshed, tasks unchanged (4 tasks, 4 images, $0.32)")
    assert lock_cli("--check", "shop.yaml")[1].splitlines()[1] == (
        "shop.lock: up to date (4 tasks, $0.32)")


def test_a_newer_specrunner_is_a_note_too(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    lock = shop.parent / "shop.lock"
    lock.write_text(lock.read_text().replace(f'specrunner = "{__version__}"',
                                             'specrunner = "0.0.1"'))
    status = check_lock(build_plan(load_spec(shop)))
    assert status.ok and status.notes == (
        f"the lock was written by specrunner 0.0.1 (this is {__version__})",)


def test_missing_unreadable_and_invalid_exit_2(shop: Path) -> None:
    code, out, _ = lock_cli("--check", "shop.yaml")
    assert (code, out.splitlines()[1:]) == (2, [
        "shop.lock: missing; create it with `specrunner lock shop.yaml`",
        SUMMARY.format(0, 0, 1, 0, 0)])
    lock = shop.parent / "shop.lock"
    for text, problem in [
        ("not toml at all [", "not a TOML lock file ("),  # then tomllib's own words
        (LOCK.replace("[[task]]", "<<<<<<< HEAD\n[[task]]", 1), ("it holds merge conflict "
                                                                 "markers")),
        (LOCK.replace("lock-version = 1", "lock-version = 9"),
         "lock-version 9 was written by a newer specrunner (this one reads 1)"),
        (LOCK.replace('cost = "0.08"', "cost = 0.08", 1), "task #1: cost is not a string"),
        (LOCK.replace("[totals]", "[sums]"), "no [totals] table"),
    ]:
        lock.write_text(text, encoding="utf-8")
        code, out, _ = lock_cli("--check", "shop.yaml")
        lines = out.splitlines()
        assert (code, lines[2]) == (2, SUMMARY.format(0, 0, 0, 1, 0)), text
        assert lines[1].startswith(f"shop.lock: unreadable: {problem}"), (lines[1], problem)
        assert lines[1].endswith("; regenerate it with `specrunner lock shop.yaml`")
    lock.write_bytes(b"\xff\xfe")
    with pytest.raises(LockFormatError, match="not UTF-8"):
        parse(lock.read_bytes())
    edit(shop, "budget:", "budjet:")
    code, out, _ = lock_cli("--check", "shop.yaml")
    assert (code, out.splitlines()) == (2, [
        "shop.yaml:15:1: error: unknown field `budjet` [$.budjet] (did you mean `budget`?)",
        SUMMARY.format(0, 0, 0, 0, 1)])
    assert lock_cli("shop.yaml")[0] == 2  # nothing written for an invalid spec
    assert lock.read_bytes() == b"\xff\xfe"


def test_worst_exit_code_wins_and_lock_paths_stand_for_their_spec(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    (shop.parent / "other.yaml").write_text(SPEC.replace("name: shop", "name: other"),
                                            encoding="utf-8")
    # both names of one spec check it once; the missing lock of the other makes it 2
    code, out, _ = lock_cli("--check", "shop.lock", "shop.yaml", "other.yaml")
    assert code == 2
    assert "shop.lock: up to date (4 tasks, $0.32)" in out.splitlines()
    assert out.count("shop.lock: up to date") == 1
    assert out.splitlines()[-1] == ("2 lock(s) checked: 1 up to date, 0 stale, 1 missing, "
                                    "0 unreadable, 0 spec(s) invalid")
    assert lock_cli("--check", "gone.lock")[:2] == (
        2, ("error: gone.lock: no spec beside it (gone.yaml)\n"
           "1 lock(s) checked: 0 up to date, 0 stale, 0 missing, 0 unreadable, 1 spec(s) "
           "invalid\n"))


def test_check_github_format_exact(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    edit(shop, "input: [bakery, diner]", "input: [bakery]")
    code, out, _ = lock_cli("--check", "--format", "github", "shop.yaml")
    assert code == 1
    assert out.splitlines() == [
        ("::notice file=shop.yaml,line=1,col=1,title=specrunner no-seed::ideogram:3@3 takes no "
        "seed: every generation is a new image and none can be regenerated; an identical "
        "request is answered from the run record, not generated again [$.model] (`repeat: N` "
        "asks for N different images of each variant)"),
        ("::error file=shop.yaml,line=1,title=specrunner lock::shop.lock: stale (2 removed); "
        "update it with `specrunner lock shop.yaml`%0A  - diner-DESIGN (no longer planned, "
        "$0.08)%0A  - diner-ANIME (no longer planned, $0.08)%0A  totals: 4 -> 2 tasks, 4 -> 2 "
        "images, $0.32 -> $0.16"),
        SUMMARY.format(0, 1, 0, 0, 0)]


def test_long_change_lists_are_cut(shop: Path) -> None:
    seq = ", ".join(str(i) for i in range(30))
    shop.write_text(SPEC.replace("max_usd: 1", "max_usd: 10").replace(
        "styleType: [DESIGN, ANIME]", f"seq: [{seq}]").replace(
        "warm pink tubes", "warm pink tubes {seq}"), encoding="utf-8")
    write_lock(build_plan(load_spec(shop)))
    edit(shop, "warm pink", "cold blue")
    details = check_lock(build_plan(load_spec(shop))).details()
    assert len(details) == 21 and details[-1] == "... and 40 more changed"


def test_decimal_costs_compare_by_value(shop: Path) -> None:
    write_lock(build_plan(load_spec(shop)))
    lock = shop.parent / "shop.lock"
    lock.write_text(lock.read_text().replace('cost = "0.08"', 'cost = "0.080"'))
    assert check_lock(build_plan(load_spec(shop))).ok
    assert parse(lock.read_bytes()).tasks[0].cost == Decimal("0.08")


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_locks_are_current(example: Path) -> None:
    """The example specs carry their locks, as a team's specs would: `specrunner lock
    specs/examples/*.yaml` after changing an example (or the price table) updates them."""
    status = check_lock(build_plan(load_spec(example)))
    assert status.ok, status.message()


def test_the_documented_lock_is_what_lock_writes(tmp_path: Path) -> None:
    """docs/lock-file.md's example, and the task block the README shows, are real output."""
    doc = (ROOT / "docs" / "lock-file.md").read_text(encoding="utf-8")
    spec_text = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    lock_text = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "images").mkdir()
    for name in ("bakery.jpg", "bakery-mask.png"):
        shutil.copyfile(IMAGES / name, tmp_path / "images" / name)
    (tmp_path / "shop.yaml").write_text(spec_text, encoding="utf-8")
    written = render(lock_of(build_plan(load_spec(tmp_path / "shop.yaml")))).decode()
    for line in written.splitlines():  # what changes with specrunner itself
        if line.startswith(("specrunner = ", "request-schema-sha256 = ")):
            written = written.replace(line, "<version line>")
            lock_text = lock_text.replace(next(x for x in lock_text.splitlines()
                                               if x.startswith(line.split(" = ")[0] + " = ")),
                                          "<version line>")
    assert written == lock_text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    assert block in (ROOT / "specs" / "examples" / "storefront-local.lock").read_text()


def test_every_local_file_a_task_sends_is_listed(shop: Path) -> None:
    """A local file outside request.inputs (a style reference image) shows with its hash."""
    import dataclasses

    from specrunner.plan.task import LocalImage

    plan = build_plan(load_spec(shop))
    ref = "providerSettings.ideogram.styleReferenceImages[0]"
    first = dataclasses.replace(plan.tasks[0], local_inputs={
        **plan.tasks[0].local_inputs, ref: LocalImage(shop.parent / "images" / "diner.jpg", DINER)})
    data = render(lock_of(dataclasses.replace(plan, tasks=(first, *plan.tasks[1:]))))
    assert (f'inputs."{ref}" = "sha256:{DINER}"  # images/diner.jpg\n').encode() in data
    assert parse(data).tasks[0].inputs[ref] == f"sha256:{DINER}"
