"""The review page in a real headless Chromium: filters, large view, keyboard decisions that
land in the review file, stale decisions, two tabs at once, a run still writing, export.

The server is the real one (`specrunner review`'s Source and ASGI app under uvicorn on
127.0.0.1); the run is the recorded fixture (tests/fixtures/run_fixture): 5 tasks, 3 result
images (bakery-DESIGN-2 #1, diner-DESIGN, remote-DESIGN), one failed, one never sent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from browser.conftest import watch
from specrunner import cli
from specrunner.commands.review import build_source
from specrunner.errors import RecordError
from specrunner.report import review
from specrunner.review import create_app
from specrunner.review.serve import running

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run_fixture"
SHA = {"bakery-DESIGN-2": "8cec3279e3ed3f66754af5081623825394f8541ba8351a7c111585e45077e842",
       "diner-DESIGN": "62e861a97d4df36c38ac5a94de0d066a83788091a1f40f9d551cee43a44e995e",
       "remote-DESIGN": "eadedd947c7a3ab7f3e3af92b1b6e20a4702137a7e4233ee3967b6b462070b70"}


@pytest.fixture()
def fx(tmp_path: Path) -> Path:
    dest = tmp_path / "fx"
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("expected", "__pycache__"))
    return dest


@pytest.fixture()
def server(fx: Path) -> Iterator[str]:
    with running(create_app(build_source(str(fx / "run"), None))) as url:
        yield url


def until(check: Callable[[], Any], timeout: float = 8.0, what: str = "condition") -> Any:
    """Poll `check` (bounded) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def review_file(fx: Path) -> Path:
    return fx / "spec.review.yaml"


def file_text(fx: Path) -> str:
    path = review_file(fx)
    return path.read_text(encoding="utf-8") if path.exists() else ""


def tiles(page: Any) -> list[tuple[str, str]]:
    """(data-key, badge text) of every tile shown, in order."""
    return [tuple(x) for x in page.eval_on_selector_all(
        ".tile", "els => els.map(e => [e.dataset.key, e.querySelector('.badge').textContent])")]


def chip(page: Any, group: str, value: str) -> Any:
    return page.locator(f'.fgroup[data-name="{group}"] .chip[data-val="{value}"]')


def open_page(browser: Any, url: str, errors: list[str], **kw: Any) -> Any:
    page = watch(browser.new_context(viewport={"width": 1280, "height": 900}, **kw).new_page(),
                 errors)
    page.goto(url)
    page.wait_for_selector(".tile")
    return page


def freeze_polling(page: Any) -> None:
    """Stop the page's timers (its 2 s refresh): its view of the file stays as loaded."""
    page.clock.pause_at(time.time() * 1000 + 1000)


def test_filter_open_approve_by_keyboard_reload_and_the_file_has_it(
        browser: Any, server: str, fx: Path, page_errors: list[str]) -> None:
    page = open_page(browser, server, page_errors)
    assert [k for k, _ in tiles(page)] == ["bakery-DESIGN-2:0", "bakery-REALISTIC:",
                                           "diner-DESIGN:0", "diner-REALISTIC:",
                                           "remote-DESIGN:0"]
    chip(page, "input", "diner").click()
    assert tiles(page) == [("diner-DESIGN:0", "not reviewed"), ("diner-REALISTIC:", "no image")]
    chip(page, "status", "done").click()
    assert tiles(page) == [("diner-DESIGN:0", "not reviewed")]
    assert page.inner_text("#showing").startswith("showing 1 of 5")

    page.keyboard.press("Enter")  # the large view of the selected (only) tile
    until(lambda: page.inner_text("#v-prompt") != "", what="task details")
    assert page.inner_text("#v-title") == "diner-DESIGN"
    assert page.inner_text("#v-prompt") == 'Replace the masked sign with a neon sign reading ' \
                                           '"SUNRISE"'
    request = dict(page.eval_on_selector_all("#v-request tr", "rs => rs.map(r => "
                                             "[r.cells[0].textContent, r.cells[1].textContent])"))
    assert request["providerSettings.ideogram.styleType"] == "DESIGN"
    assert request["outputFormat"] == "PNG"
    assert request["inputs.seedImage"].startswith("diner.png (local file, sha256 bc4f820d")
    texts = "e => e.map(x => x.textContent)"
    info = dict(zip(page.eval_on_selector_all("#v-info dt", texts),
                    page.eval_on_selector_all("#v-info dd", texts), strict=True))
    assert info["generation seed"] == "6698897233646220573"
    assert info["sha256"] == SHA["diner-DESIGN"]
    # seed and result side by side, both really decoded; the mask overlay toggles with m
    loaded = "id => { const i = document.getElementById(id); return i.complete && i.naturalWidth }"
    until(lambda: page.evaluate(loaded, "v-seed") and page.evaluate(loaded, "v-result"),
          what="seed and result images")
    shown = "id => getComputedStyle(document.getElementById(id)).display"
    assert page.evaluate(shown, "v-seed-ov") == "none"
    page.keyboard.press("m")
    assert page.evaluate(shown, "v-seed-ov") == "block" == page.evaluate(shown, "v-result-ov")
    until(lambda: page.evaluate(loaded, "v-seed-ov"), what="the overlay image")
    box = "id => { const r = document.getElementById(id).getBoundingClientRect(); " \
          "return [r.x, r.y, r.width, r.height].map(Math.round) }"
    assert page.evaluate(box, "v-seed-ov") == page.evaluate(box, "v-seed")

    page.keyboard.press("a")
    until(lambda: "approved" in file_text(fx), what="the decision in the file")
    assert file_text(fx) == ("version: 1\nimages:\n  diner-DESIGN:\n"
                             f"    - {{index: 0, sha256: {SHA['diner-DESIGN']}, "
                             "verdict: approved}\n")
    page.reload()  # filters and the open image come back from the address
    page.wait_for_selector(".tile")
    assert tiles(page) == [("diner-DESIGN:0", "approved")]
    assert page.is_visible("#viewer") and page.inner_text("#v-badge") == "approved"
    assert "approved 1" in page.inner_text("#counts")

    page.keyboard.press("n")
    page.wait_for_selector("#note-dialog[open]")
    page.keyboard.type("keep: best \"neon\" glow")
    page.keyboard.press("Enter")
    until(lambda: "note:" in file_text(fx), what="the note")
    entry = review.load(review_file(fx))[("diner-DESIGN", 0)]
    assert (entry.verdict, entry.note) == ("approved", 'keep: best "neon" glow')
    page.keyboard.press("r")  # a new verdict keeps the note of the same bytes
    until(lambda: "rejected" in file_text(fx), what="the rejection")
    assert review.load(review_file(fx))[("diner-DESIGN", 0)].note == 'keep: best "neon" glow'
    page.keyboard.press("u")  # undo the rejection, then the note
    until(lambda: "approved" in file_text(fx), what="undo")
    page.keyboard.press("u")
    until(lambda: "note:" not in file_text(fx), what="second undo")
    assert review.load(review_file(fx))[("diner-DESIGN", 0)].verdict == "approved"
    page.keyboard.press("Escape")
    assert not page.is_visible("#viewer")
    assert page_errors == []


def test_arrows_and_auto_advance_review_a_whole_run_from_the_keyboard(
        browser: Any, server: str, fx: Path, page_errors: list[str]) -> None:
    page = open_page(browser, server, page_errors)
    sel = "() => document.querySelector('.tile.sel').dataset.key"
    assert page.evaluate(sel) == "bakery-DESIGN-2:0"
    page.keyboard.press("ArrowRight")
    assert page.evaluate(sel) == "bakery-REALISTIC:"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("a")  # approve, then the next tile that has an image (skips the failed)
    until(lambda: page.evaluate(sel) == "diner-DESIGN:0", what="auto-advance")
    page.keyboard.press("r")
    until(lambda: page.evaluate(sel) == "remote-DESIGN:0", what="auto-advance")
    page.keyboard.press("a")
    until(lambda: file_text(fx).count("verdict") == 3, what="three decisions")
    assert {k: d.verdict for k, d in review.load(review_file(fx)).items()} == {
        ("bakery-DESIGN-2", 0): "approved", ("diner-DESIGN", 0): "rejected",
        ("remote-DESIGN", 0): "approved"}
    # the file is written before the page has the answer: wait for the page to show it
    until(lambda: dict(tiles(page))["remote-DESIGN:0"] == "approved", what="the page's mark")
    chip(page, "verdict", "approved").click()
    assert [k for k, _ in tiles(page)] == ["bakery-DESIGN-2:0", "remote-DESIGN:0"]
    assert page_errors == []


def test_a_changed_image_makes_its_decision_stale_never_applied(
        browser: Any, server: str, fx: Path, page_errors: list[str]) -> None:
    review.save(review_file(fx), [review.Decision("bakery-DESIGN-2", 0,
                                                  SHA["bakery-DESIGN-2"], "approved", "great")])
    page = open_page(browser, server, page_errors)
    assert tiles(page)[0] == ("bakery-DESIGN-2:0", "approved")
    # the image is regenerated (other bytes at the same path): the page sees it on its own
    Image.new("RGB", (192, 128), (10, 200, 30)).save(fx / "run" / "bakery-DESIGN-1.png")
    new_sha = review.file_sha256(fx / "run" / "bakery-DESIGN-1.png")
    until(lambda: tiles(page)[0] == ("bakery-DESIGN-2:0", "stale"), what="the stale mark")
    assert "stale 1" in page.inner_text("#counts") and "approved 0" in page.inner_text("#counts")
    chip(page, "verdict", "stale").click()
    assert [k for k, _ in tiles(page)] == ["bakery-DESIGN-2:0"]
    before = file_text(fx)
    page.keyboard.press("Enter")
    assert "stale: approved was decided on other bytes" in page.inner_text("#v-decision")
    page.keyboard.press("n")  # a note needs a decision on these bytes first
    until(lambda: "approve (a) or reject (r) first" in page.inner_text("#toast"),
          what="the hint")
    assert file_text(fx) == before  # the old entry stays, unapplied, until a new decision
    page.keyboard.press("r")
    until(lambda: new_sha in file_text(fx), what="the new decision")
    entry = review.load(review_file(fx))[("bakery-DESIGN-2", 0)]
    assert (entry.sha256, entry.verdict, entry.note) == (new_sha, "rejected", None)
    assert page_errors == []


def test_a_decision_for_bytes_the_page_did_not_show_is_refused(
        browser: Any, server: str, fx: Path, page_errors: list[str]) -> None:
    page = open_page(browser, server, page_errors)
    freeze_polling(page)  # the page keeps showing the old image
    Image.new("RGB", (192, 128), (200, 10, 30)).save(fx / "run" / "diner-DESIGN.png")
    chip(page, "input", "diner").click()
    chip(page, "status", "done").click()
    page.keyboard.press("a")
    until(lambda: "changed on disk" in page.inner_text("#toast"), what="the refusal")
    assert not review_file(fx).exists()
    assert [e for e in page_errors if "409" not in e] == []


def test_two_tabs_deciding_at_once_both_land_and_never_overwrite_each_other(
        browser: Any, server: str, fx: Path, page_errors: list[str]) -> None:
    a = open_page(browser, server, page_errors)
    b = open_page(browser, server, page_errors)
    for page in (a, b):
        freeze_polling(page)  # neither tab learns of the other's decisions by refreshing
    b.keyboard.press("ArrowRight")
    b.keyboard.press("ArrowRight")  # b on diner-DESIGN, a on bakery-DESIGN-2
    # another reviewer's process writes a third decision straight into the file meanwhile
    review.update(review_file(fx), ("remote-DESIGN", 0),
                  review.Decision("remote-DESIGN", 0, SHA["remote-DESIGN"], "rejected"), None)
    a.keyboard.press("a")
    b.keyboard.press("r")  # both requests in flight together
    until(lambda: file_text(fx).count("verdict") == 3, what="all three decisions")
    assert {k: d.verdict for k, d in review.load(review_file(fx)).items()} == {
        ("bakery-DESIGN-2", 0): "approved", ("diner-DESIGN", 0): "rejected",
        ("remote-DESIGN", 0): "rejected"}
    # b reloads after its own decision: it now shows the other process's rejection
    until(lambda: dict(tiles(b)).get("remote-DESIGN:0") == "rejected", what="b's refresh")
    # a approves remote-DESIGN; b, frozen since, still shows it rejected
    a.click('.tile[data-key="remote-DESIGN:0"] .cap')
    a.keyboard.press("a")
    until(lambda: review.load(review_file(fx))[("remote-DESIGN", 0)].verdict == "approved",
          what="a's approval")
    assert dict(tiles(b))["remote-DESIGN:0"] == "rejected"
    b.click('.tile[data-key="remote-DESIGN:0"] .cap')  # select it (a click on the caption)
    b.keyboard.press("c")  # clear what b believes is a rejection: refused, b catches up
    until(lambda: "changed meanwhile" in b.inner_text("#toast"), what="the conflict")
    until(lambda: dict(tiles(b))["remote-DESIGN:0"] == "approved", what="b catching up")
    assert review.load(review_file(fx))[("remote-DESIGN", 0)].verdict == "approved"
    b.keyboard.press("r")  # now b knows what it overrides: allowed
    until(lambda: review.load(review_file(fx))[("remote-DESIGN", 0)].verdict == "rejected",
          what="the deliberate override")
    assert [e for e in page_errors if "409" not in e] == []


def test_the_page_follows_a_run_that_is_still_writing(
        browser: Any, fx: Path, page_errors: list[str], tmp_path: Path) -> None:
    shutil.rmtree(fx / "run")  # a fresh campaign: 5 tasks, 6 images, 1.5 s per edit
    faults = tmp_path / "slow.json"
    faults.write_text(json.dumps({"processing": 1.5}))
    proc = subprocess.Popen([sys.executable, "-m", "specrunner", "run", str(fx / "spec.yaml"),
                             "--local", "--faults", str(faults), "--progress", "none"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        source = until(lambda: _source_when_recorded(fx), timeout=30, what="the record")
        with running(create_app(source)) as url:
            page = watch(browser.new_context(viewport={"width": 1280, "height": 900})
                         .new_page(), page_errors)
            page.goto(url)
            page.wait_for_selector("#where:not(:empty)")
            seen, counts = set(), []
            deadline = time.monotonic() + 90
            while proc.poll() is None and time.monotonic() < deadline:
                seen.add(page.inner_text("#where").split(")")[0])
                counts.append(sum(1 for k, _ in tiles(page) if not k.endswith(":")))
                time.sleep(0.1)
            _out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            until(lambda: sum(1 for k, _ in tiles(page) if not k.endswith(":")) == 6,
                  what="every image without a reload")
            until(lambda: "(complete" in page.inner_text("#where"), what="the run's end")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any("(running" in s for s in seen), seen  # the page saw the run going
    assert counts == sorted(counts) and any(0 < c < 6 for c in counts), counts  # and grow
    assert page_errors == []


def _source_when_recorded(fx: Path) -> Any:
    """The review source once the run has begun its record (None before)."""
    try:
        source = build_source(str(fx / "spec.yaml"), None)
        source.state()
    except RecordError:  # the record is not there yet
        return None
    return source


def test_export_after_reviewing_in_the_page_copies_exactly_the_approved_set(
        browser: Any, server: str, fx: Path, page_errors: list[str], tmp_path: Path) -> None:
    page = open_page(browser, server, page_errors)
    page.keyboard.press("a")  # bakery-DESIGN-2 #1, then auto-advance to diner-DESIGN
    page.keyboard.press("r")
    page.keyboard.press("a")  # remote-DESIGN
    until(lambda: file_text(fx).count("verdict") == 3, what="three decisions")
    dest = tmp_path / "picked"
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["export", str(fx / "run"), str(dest)], out, err) == 0, err.getvalue()
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["bakery-DESIGN-1.png", "manifest.csv", "remote-DESIGN.png"]
    for name in ("bakery-DESIGN-1.png", "remote-DESIGN.png"):
        assert (dest / name).read_bytes() == (fx / "run" / name).read_bytes()
    rows = list(csv.DictReader((dest / "manifest.csv").open(encoding="utf-8")))
    assert [(r["variant"], r["file"], r["verdict"], r["sha256"]) for r in rows] == [
        ("bakery-DESIGN-2", "bakery-DESIGN-1.png", "approved", SHA["bakery-DESIGN-2"]),
        ("remote-DESIGN", "remote-DESIGN.png", "approved", SHA["remote-DESIGN"])]
    assert hashlib.sha256((dest / "remote-DESIGN.png").read_bytes()).hexdigest() == \
        SHA["remote-DESIGN"]
    assert page_errors == []


def test_the_server_answers_only_loopback_hosts_and_same_origin_json_posts(
        server: str, fx: Path) -> None:
    import httpx

    with httpx.Client(base_url=server) as c:
        for host in ("attacker.example", "127.0.0.1.attacker.example:80", "10.0.0.1"):
            assert c.get("/api/state", headers={"Host": host}).status_code == 403, host
        for host in ("127.0.0.1:8766", "localhost:8766", "[::1]:8766", "localhost"):
            assert c.get("/api/state", headers={"Host": host}).status_code == 200, host
        body = {"variant": "diner-DESIGN", "index": 0, "expect": None,
                "entry": {"sha256": SHA["diner-DESIGN"], "verdict": "approved"}}
        form = c.post("/api/decision", content=json.dumps(body),
                      headers={"Content-Type": "text/plain"})
        assert form.status_code == 415
        cross = c.post("/api/decision", json=body, headers={"Origin": "http://evil.example"})
        assert cross.status_code == 403
        assert not review_file(fx).exists()
        bad = c.post("/api/decision", json={**body, "entry": {"sha256": "x", "verdict": "ok"}})
        assert bad.status_code == 400 and "sha256" in bad.json()["error"]
        ok = c.post("/api/decision", json=body)
        assert ok.status_code == 200 and ok.json() == {
            "before": None, "after": {"sha256": SHA["diner-DESIGN"], "verdict": "approved",
                                      "note": None}}
        again = c.post("/api/decision", json=body)  # expect None, but the entry exists now
        assert again.status_code == 409 and again.json()["current"]["verdict"] == "approved"
        state = c.get("/api/state")
        assert c.get("/api/state", headers={"If-None-Match": state.headers["etag"]}
                     ).status_code == 304
        thumb = c.get("/media/result", params={"v": "diner-DESIGN", "i": 0, "size": "thumb"})
        assert thumb.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(thumb.content)) as im:
            assert im.size == (192, 128)  # never enlarged
        full = c.get("/media/result", params={"v": "diner-DESIGN", "i": 0, "size": "full"})
        assert full.content == (fx / "run" / "diner-DESIGN.png").read_bytes()
        assert c.get("/media/input", params={"v": "remote-DESIGN", "f": "seed"}
                     ).status_code == 404  # a URL input is not served (nor fetched)


def test_the_review_command_serves_until_interrupted(fx: Path) -> None:
    import signal

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "specrunner", "review", str(fx / "spec.yaml"),
                             "--port", "0", "--no-open"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()  # type: ignore[union-attr]
        assert first.startswith(f"review of {fx / 'run'}: http://127.0.0.1:"), first
        url = first.split(": ", 1)[1].strip()
        assert proc.stdout.readline() == (  # type: ignore[union-attr]
            f"3 images (0 approved, 0 rejected, 3 pending, 0 stale); decisions go to "
            f"{fx / 'spec.review.yaml'}\n")
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and '<script src="/static/review.js">' in page.text
        assert "http" not in httpx.get(url + "static/review.js").text.replace(
            "HTTP ", "")  # no CDN, nothing fetched from elsewhere
        proc.send_signal(signal.SIGINT)  # Ctrl-C: uvicorn stops, then exit 130 as documented
        assert proc.wait(timeout=15) == 130
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_page_ships_in_the_wheel_as_package_data() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = config["package-data"]["specrunner.review"]
    static = root / "specrunner" / "review"
    on_disk = {str(p.relative_to(static)) for p in (static / "static").iterdir()}
    listed = {str(p.relative_to(static)) for pat in patterns for p in static.glob(pat)}
    assert on_disk == listed == {"static/index.html", "static/review.css", "static/review.js"}
    assert "specrunner.review" in config["packages"]


def test_a_failed_reread_keeps_the_last_snapshot_and_retries(fx: Path) -> None:
    from specrunner import report
    from specrunner.review import Source

    run = fx / "run"
    data = report.load_run(run)
    calls: list[str] = []

    def load() -> Any:
        calls.append("load")
        if len(calls) == 2:
            raise RecordError("the record is being migrated")
        return data

    source = Source(run, load, fx / "spec.review.yaml", fx / "spec.yaml")
    first = source.state()
    db = run / ".specrunner" / "run.db"
    os.utime(db, ns=(time.time_ns(), time.time_ns() + 10**9))  # the record changed
    assert source.state().body == first.body and calls == ["load", "load"]
    assert source.state().body == first.body and calls == ["load", "load", "load"]
    with pytest.raises(RecordError):  # with no snapshot yet, the failure is the answer
        Source(run, lambda: (_ for _ in ()).throw(RecordError("none")), fx / "x.review.yaml",
               None).state()
