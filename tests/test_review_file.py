"""The review file (`<stem>.review.yaml`): exact text, strict reading, safe concurrent writes,
and what decisions mean for a run's images (approved, rejected, pending, stale)."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specrunner import cli, report
from specrunner.commands.report import locate
from specrunner.report import review
from specrunner.report.review import Decision

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"
SHA = {"bakery-DESIGN-2": "8cec3279e3ed3f66754af5081623825394f8541ba8351a7c111585e45077e842",
       "diner-DESIGN": "62e861a97d4df36c38ac5a94de0d066a83788091a1f40f9d551cee43a44e995e",
       "remote-DESIGN": "eadedd947c7a3ab7f3e3af92b1b6e20a4702137a7e4233ee3967b6b462070b70"}
A, B = "a" * 64, "b" * 64


@pytest.fixture()
def fx(tmp_path: Path) -> Path:
    dest = tmp_path / "fx"
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("expected", "__pycache__"))
    return dest


def test_the_file_is_sorted_by_variant_then_index_whatever_the_order_given() -> None:
    entries = [Decision("diner-DESIGN", 1, B, "rejected"),
               Decision("bakery-DESIGN", 0, A, "approved", "keep"),
               Decision("diner-DESIGN", 0, A, "approved", 'say "yes"\n2nd line'),
               Decision("on", 0, "1" * 60 + "e123", "approved")]  # words YAML would mis-read
    text = review.dumps(entries)
    assert text == review.dumps(reversed(entries))
    assert text == (
        "version: 1\n"
        "images:\n"
        "  bakery-DESIGN:\n"
        f"    - {{index: 0, sha256: {A}, verdict: approved, note: \"keep\"}}\n"
        "  diner-DESIGN:\n"
        f"    - {{index: 0, sha256: {A}, verdict: approved, "
        "note: \"say \\\"yes\\\"\\n2nd line\"}\n"
        f"    - {{index: 1, sha256: {B}, verdict: rejected}}\n"
        "  \"on\":\n"
        f"    - {{index: 0, sha256: \"{'1' * 60}e123\", verdict: approved}}\n")
    assert review.dumps([]) == "version: 1\nimages: {}\n"


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.integers(0, 3),
                          st.sampled_from(["approved", "rejected"]),
                          st.none() | st.text(max_size=60)), max_size=8))
def test_any_decisions_read_back_exactly(tmp_path_factory: pytest.TempPathFactory,
                                         rows: list) -> None:
    def clean(text: str) -> str:  # unpaired surrogates are refused before they are written
        return "".join(c for c in text if not 0xD800 <= ord(c) <= 0xDFFF) or "x"

    decisions = {}
    for variant, index, verdict, note in rows:
        d = Decision(clean(variant), index, A, verdict, None if note is None else clean(note))
        decisions[d.key] = d
    path = tmp_path_factory.mktemp("rt") / "s.review.yaml"
    review.save(path, decisions.values())
    assert review.load(path) == decisions


@pytest.mark.parametrize("body, message", [
    ("images: {}\n", "`version` must be 1 [$.version]"),
    ("version: 2\nimages: {}\n", "`version` must be 1 [$.version]"),
    ("version: 1\nimages:\n  v:\n    - {index: 0, sha256: abc, verdict: approved}\n",
     "4:26: sha256 must be 64 lowercase hex digits [$.images.v[0].sha256]"),
    (f"version: 1\nimages:\n  v:\n    - {{index: 0, sha256: {A}, verdict: maybe}}\n",
     "verdict must be one of approved, rejected [$.images.v[0].verdict]"),
    (f"version: 1\nimages:\n  v:\n    - {{index: 0, sha256: {A}, verdict: yes}}\n",
     '`yes` is the boolean true to YAML 1.1 readers but text in YAML 1.2; quote it: "yes"'),
    (f"version: 1\nimages:\n  v:\n    - {{index: -1, sha256: {A}, verdict: approved}}\n",
     "index must be an integer >= 0 [$.images.v[0].index]"),
    (f"version: 1\nimages:\n  v:\n    - {{index: 0, sha256: {A}, verdict: approved}}\n"
     f"    - {{index: 0, sha256: {B}, verdict: rejected}}\n",
     "5:7: a second entry for image 0 of `v` [$.images.v[1]]"),
    (f"version: 1\nimages:\n  v:\n    - {{index: 0, sha: {A}, verdict: approved}}\n",
     "unknown key `sha`"),
    ("version: 1\nimages:\n<<<<<<< HEAD\n", "YAML syntax error"),
])
def test_a_bad_file_is_refused_with_its_position(tmp_path: Path, body: str,
                                                  message: str) -> None:
    path = tmp_path / "s.review.yaml"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(review.ReviewFileError) as info:
        review.load(path)
    assert str(info.value).startswith(str(path)) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_file_makes_report_exit_2_with_one_line(fx: Path) -> None:
    (fx / "spec.review.yaml").write_text("version: 1\nimages: [1]\n")
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["report", str(fx / "run")], out, err) == 2
    assert err.getvalue() == (f"error: {fx / 'spec.review.yaml'}:2:9: `images` maps variant "
                              "ids to lists of entries [$.images]\n")


def test_update_keeps_other_entries_and_refuses_a_stale_expectation(tmp_path: Path) -> None:
    path = tmp_path / "s.review.yaml"
    one = Decision("v", 0, A, "approved")
    assert review.update(path, one.key, one, None) == (None, one)
    other = Decision("w", 0, B, "rejected", "dull")
    review.update(path, other.key, other, None)
    with pytest.raises(review.Conflict) as info:  # this writer has not seen `one`
        review.update(path, one.key, Decision("v", 0, A, "rejected"), None)
    assert info.value.current == one
    assert review.load(path) == {one.key: one, other.key: other}
    assert review.update(path, one.key, None, one) == (one, None)  # clear
    assert review.load(path) == {other.key: other}
    with pytest.raises(review.Conflict):  # the image check runs under the lock, first
        def changed() -> None:
            raise review.Conflict("the image changed", None)
        review.update(path, one.key, one, None, check=changed)
    assert review.load(path) == {other.key: other}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.review.yaml"]  # no temp files


def test_threads_writing_at_once_lose_nothing_and_readers_never_see_a_torn_file(
        tmp_path: Path) -> None:
    path = tmp_path / "s.review.yaml"
    torn: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                review.load(path)
            except review.ReviewFileError as exc:
                torn.append(str(exc))

    def writer(n: int) -> None:
        for i in range(10):
            d = Decision(f"v{n}", i, A, "approved" if i % 2 else "rejected")
            review.update(path, d.key, d, None)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    writers = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in writers:
        t.start()
    for t in writers:
        t.join(timeout=60)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert torn == []
    assert len(review.load(path)) == 80


WRITER = """
import sys
from specrunner.report import review
path, tag = sys.argv[1], sys.argv[2]
for i in range(25):
    d = review.Decision(tag, i, "a" * 64, "approved")
    review.update(path, d.key, d, None)
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.review.yaml"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), tag])
             for tag in ("first", "second", "third")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    assert len(review.load(path)) == 75


def test_states_approved_rejected_pending_stale_missing(fx: Path) -> None:
    data = report.load_run(*locate(str(fx / "run")))
    decisions = {d.key: d for d in [
        Decision("bakery-DESIGN-2", 0, SHA["bakery-DESIGN-2"], "approved"),
        Decision("diner-DESIGN", 0, "0" * 64, "rejected"),  # for other bytes
        Decision("gone-variant", 0, A, "approved")]}
    hashed: list[str] = []

    def sha_of(path: Path) -> str | None:
        hashed.append(path.name)
        return review.ShaCache()(path)

    items = review.review_images(data.tasks, fx / "run", decisions, sha_of)
    assert [(r.key, r.state) for r in items] == [(("bakery-DESIGN-2", 0), "approved"),
                                                  (("diner-DESIGN", 0), "stale"),
                                                  (("remote-DESIGN", 0), "pending")]
    assert hashed == ["bakery-DESIGN-1.png", "diner-DESIGN.png"]  # undecided: not read
    (fx / "run" / "bakery-DESIGN-1.png").unlink()
    items = review.review_images(data.tasks, fx / "run", decisions, review.ShaCache(),
                                 hash_all=True)
    assert [r.state for r in items] == ["missing", "stale", "pending"]
    s = review.summarize_review(fx / "x.review.yaml", decisions, items, ["input"])
    assert (s.totals, s.missing, s.orphans) == (review.Counts(0, 0, 1, 1), 1, 1)


def test_the_sha_cache_rehashes_only_changed_files(tmp_path: Path) -> None:
    f = tmp_path / "img.png"
    f.write_bytes(b"one")
    cache = review.ShaCache()
    first = cache(f)
    assert first == review.file_sha256(f)
    f.write_bytes(b"two!")  # another size: recomputed
    assert cache(f) == review.file_sha256(f) != first
    f.unlink()
    assert cache(f) is None


REVIEW_TABLE = """
review ({file})

{counts}

review by input

input      approved    rejected    pending    stale    approval rate
-------  ----------  ----------  ---------  -------  ---------------
bakery            1           0          0        0             100%
diner             0           0          0        1                -
remote            1           0          0        0             100%

review by styleType

styleType      approved    rejected    pending    stale    approval rate
-----------  ----------  ----------  ---------  -------  ---------------
DESIGN                2           0          0        1             100%

review by numberResults

numberResults      approved    rejected    pending    stale    approval rate
---------------  ----------  ----------  ---------  -------  ---------------
2                         1           0          0        0             100%
-                         1           0          0        1             100%
"""


def decide_some(fx: Path) -> Path:
    path = fx / "spec.review.yaml"
    review.save(path, [
        Decision("bakery-DESIGN-2", 0, SHA["bakery-DESIGN-2"], "approved", "gold, | pipes"),
        Decision("diner-DESIGN", 0, "0" * 64, "rejected"),
        Decision("remote-DESIGN", 0, SHA["remote-DESIGN"], "approved"),
        Decision("old-variant", 0, A, "rejected")])
    return path


def run_report(fx: Path, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["report", str(fx / "run"), *argv], out, err) == 0, err.getvalue()
    return out.getvalue()


def test_every_report_format_shows_the_review_state(fx: Path) -> None:
    path = decide_some(fx)
    table = run_report(fx)
    counts = ("2 approved, 0 rejected, 0 pending, 1 stale; approval rate 100% (approved of "
              "decided); 1 decision(s) for images this run does not have")
    assert table.endswith(REVIEW_TABLE.format(file=path, counts=counts))
    md = run_report(fx, "--format", "markdown")
    assert f"### review ({path})\n\n2 approved, 0 rejected, 0 pending, 1 stale;" in md
    assert ("| styleType   |   approved |   rejected |   pending |   stale |   approval rate |\n"
            "|-------------|------------|------------|-----------|---------|-----------------|\n"
            "| DESIGN      |          2 |          0 |         0 |       1 |            100% |"
            in md)
    doc = json.loads(run_report(fx, "--format", "json", "--by", "input"))
    assert doc["review"] == {
        "file": str(path), "exists": True, "approved": 2, "rejected": 0, "pending": 0,
        "stale": 1, "approval_rate": 1.0, "missing": 0, "orphans": 1,
        "by": {"input": [
            {"value": "bakery", "approved": 1, "rejected": 0, "pending": 0, "stale": 0,
             "approval_rate": 1.0},
            {"value": "diner", "approved": 0, "rejected": 0, "pending": 0, "stale": 1,
             "approval_rate": None},
            {"value": "remote", "approved": 1, "rejected": 0, "pending": 0, "stale": 0,
             "approval_rate": 1.0}]}}
    images = {t["variant"]: t["images"] for t in doc["tasks"]}
    assert [(i["verdict"], i["note"]) for i in images["bakery-DESIGN-2"]] == [
        ("approved", "gold, | pipes")]
    assert [(i["verdict"], i["note"]) for i in images["diner-DESIGN"]] == [("stale", None)]
    rows = run_report(fx, "--format", "csv").splitlines()
    assert rows[0].endswith(",task_key,verdict,note")
    assert rows[1].endswith(',approved,"gold, | pipes"') and rows[2].endswith(",stale,")


def test_a_spec_target_and_a_moved_spec_find_the_same_file(fx: Path, tmp_path: Path) -> None:
    decide_some(fx)
    assert "review (" in run_report(fx)
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["report", str(fx / "spec.yaml")], out, err) == 0
    assert out.getvalue() == run_report(fx)
    # the recorded spec is gone (not planned any more): the file beside where it was is used
    os.rename(fx / "spec.yaml", fx / "spec.yaml.bak")
    text = run_report(fx, "--format", "json")
    assert json.loads(text)["review"]["approved"] == 2
