"""The HTML contact sheet, opened in a real headless Chromium (Debian's `chromium`, driven by
Playwright: tests/browser/conftest.py): a folder that stands alone, a layout that wraps to
the window, seed and mask once per input, prompts shown, every axis labelled, verdicts.
"""

from __future__ import annotations

import html.parser
import io
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from browser.conftest import watch
from specrunner import cli, report
from specrunner.commands.report import locate
from specrunner.report import html as contact_sheet
from specrunner.report import review

FIXTURE = Path(__file__).parents[1] / "fixtures" / "run_fixture"
PROMPT = 'Replace the masked sign with a neon sign reading "{}"'
SHA = {"bakery-DESIGN-2": "8cec3279e3ed3f66754af5081623825394f8541ba8351a7c111585e45077e842",
       "diner-DESIGN": "62e861a97d4df36c38ac5a94de0d066a83788091a1f40f9d551cee43a44e995e"}


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    dest = tmp_path / "fx"
    shutil.copytree(FIXTURE, dest, ignore=shutil.ignore_patterns("expected", "__pycache__"))
    return dest / "run"


def make_sheet(run_dir: Path, *argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["report", str(run_dir), "--format", "html", *argv], out, err) == 0, \
        err.getvalue()
    return out.getvalue()


def line(index: Path, made: int, reused: int, copied: int, kept: int) -> str:
    return (f"contact sheet: {index} (5 tasks, 3 result images; {made} thumbnails made, "
            f"{reused} reused from an earlier report; {copied} files copied in, {kept} "
            "already there)\n")


def load(browser: Any, url: str, errors: list[str], width: int = 1400) -> Any:
    """Open the sheet, scroll through it (thumbnails load lazily), return its self-check."""
    page = watch(browser.new_page(viewport={"width": width, "height": 900}), errors)
    page.goto(url)
    page.wait_for_load_state("load")
    height = page.evaluate("document.documentElement.scrollHeight")
    for y in range(0, height + 900, 600):
        page.evaluate(f"window.scrollTo(0, {y})")
        page.wait_for_timeout(30)
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    page.evaluate("window.scrollTo(0, 0)")
    return page


def selfcheck(page: Any) -> dict[str, str]:
    return page.eval_on_selector("#selfcheck", "e => Object.assign({}, e.dataset)")


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href")]


def test_the_folder_stands_alone_moved_away_from_the_run_every_image_loads(
        browser: Any, run_dir: Path, tmp_path: Path, page_errors: list[str]) -> None:
    index = run_dir / "report" / "index.html"
    assert make_sheet(run_dir) == line(index, 7, 0, 7, 0)
    page_text = index.read_text(encoding="utf-8")
    links = _Links()
    links.feed(page_text)
    assert "link" not in links.tags and page_text.count("<script>") == 1  # inline CSS, script
    assert not re.search(r"(https?:)?//|@import|url\(", page_text.replace(
        "https://example.com/remote/", ""))  # only the remote inputs, shown as text
    assert links.refs and all(not r.startswith(("/", "http", "file:", "..")) for r in links.refs)
    # the folder alone, mailed or unzipped elsewhere: the run, spec and inputs are gone
    moved = tmp_path / "mailed" / "report"
    shutil.move(str(run_dir / "report"), moved)
    shutil.rmtree(run_dir.parent)
    for ref in links.refs:
        assert (moved / html.unescape(ref)).resolve().is_file(), ref
        assert (moved / html.unescape(ref)).resolve().is_relative_to(moved.resolve()), ref
    full = sorted(html.unescape(r) for r in links.refs if r.startswith("images/"))
    assert full == ["images/bakery-DESIGN-1.png", "images/diner-DESIGN.png",
                    "images/remote-DESIGN.png"]
    page = load(browser, (moved / "index.html").as_uri(), page_errors)
    check = selfcheck(page)
    # 5 task cards; seed + mask overlay once for each of the 2 local inputs, 3 results
    assert (check["cards"], check["images"], check["loaded"], check["broken"]) == \
        ("5", "7", "7", "0")
    shot = tmp_path / "sheet.png"
    page.screenshot(path=str(shot), full_page=True)
    with Image.open(shot) as im:
        picture = im.convert("RGB")
    for x, y, w, h in page.evaluate("JSON.parse(document.getElementById('selfcheck')"
                                    ".dataset.rects)"):
        assert w > 40 and h > 40
        crop = picture.crop((x + 4, y + 4, x + w - 4, y + h - 4))
        colours = crop.getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) >= 4, (x, y, w, h)  # a picture, not a blank
    assert page_errors == []


@pytest.mark.parametrize("width", [1400, 700])
def test_three_columns_wrap_to_the_window_and_never_overflow_it(
        browser: Any, run_dir: Path, tmp_path: Path, page_errors: list[str],
        width: int) -> None:
    make_sheet(run_dir, "--rows", "styleType", "--cols", "input", "--out", str(tmp_path / "s"))
    page = load(browser, (tmp_path / "s" / "index.html").as_uri(), page_errors, width)
    assert selfcheck(page)["overflow"] == "0"
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    tops = page.eval_on_selector_all(
        'section.row[data-row="DESIGN"] .cell', "cs => cs.map(c => c.getBoundingClientRect().top)")
    assert len(tops) == 3  # bakery, diner, remote
    if width == 1400:
        assert len(set(tops)) == 1  # side by side
    else:
        assert len(set(tops)) >= 2  # wrapped onto more lines
    rights = page.eval_on_selector_all(".card, figure", "es => es.map(e => "
                                       "e.getBoundingClientRect().right)")
    assert max(rights) <= width
    assert page_errors == []


def test_seed_and_mask_once_per_input_prompts_shown_every_axis_labelled(run_dir: Path) -> None:
    make_sheet(run_dir)
    page = (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    captions = re.findall(r"<figcaption>([^<]*)", page)
    assert captions.count("seed") == 3 and captions.count("mask (tinted: repainted area)") == 2
    assert captions.count("mask") == 1  # the remote input's mask URL, as text
    rows = re.findall(r'<h2><span class="axis">([^<]*)</span> <span class="value">([^<]*)', page)
    assert rows == [("input", "bakery"), ("input", "diner"), ("input", "remote")]
    cells = re.findall(r'<h3><span class="axis">([^<]*)</span> <span class="value">([^<]*)', page)
    assert cells == [("styleType", "DESIGN"), ("styleType", "REALISTIC")] * 3
    # the axis stacked inside a cell is labelled on each card
    stacked = re.findall(r'<ul class="axes"><li><span class="axis">([^<]*)</span> '
                         r'<span class="value">([^<]*)', page)
    assert stacked == [("numberResults", "2"), ("numberResults", "-"), ("numberResults", "-"),
                       ("numberResults", "-"), ("numberResults", "-")]
    prompts = re.findall(r"<dt>([^<]*)</dt><dd>([^<]*)</dd>", page)
    assert prompts == [("neon", html_escape(PROMPT.format(name)))
                       for name in ("MIRELLE", "SUNRISE", "FAR AWAY")]
    assert page.count("legend>rows: input, columns: styleType, in each card: numberResults<") == 1


def html_escape(text: str) -> str:
    import html as h

    return h.escape(text, quote=True)


def test_with_other_rows_inputs_are_listed_once_and_prompts_name_their_input(
        run_dir: Path, tmp_path: Path) -> None:
    make_sheet(run_dir, "--rows", "styleType", "--cols", "input", "--out", str(tmp_path / "s"))
    page = (tmp_path / "s" / "index.html").read_text(encoding="utf-8")
    assert re.findall(r"<figcaption>seed", page) == ["<figcaption>seed"] * 3
    assert "<h2>inputs</h2>" in page
    prompts = re.findall(r"<dt>([^<]*)</dt>", page)
    assert prompts == ["neon (bakery)", "neon (diner)", "neon (remote)",
                       "neon (bakery)", "neon (diner)"]  # DESIGN row, then REALISTIC
    s = report.summarize(report.load_run(*locate(str(run_dir))))
    assert contact_sheet.grid_axes(s, None, None) == ("input", "styleType")
    assert contact_sheet.grid_axes(s, None, "input") == ("styleType", "input")
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["report", str(run_dir), "--format", "html", "--rows", "colour"],
                   out, err) == 2
    assert err.getvalue().startswith("error: unknown axis 'colour'")


def test_a_rebuild_reuses_what_is_there_redraws_what_changed_and_prunes_only_its_own(
        run_dir: Path) -> None:
    make_sheet(run_dir)
    folder = run_dir / "report"
    thumbs = {p.name: p.stat().st_mtime_ns for p in (folder / "thumbs").iterdir()}
    assert len(thumbs) == 7
    index = folder / "index.html"
    assert make_sheet(run_dir) == line(index, 0, 7, 0, 7)
    assert {p.name: p.stat().st_mtime_ns for p in (folder / "thumbs").iterdir()} == thumbs
    # a regenerated result: its copy and thumbnail are redone, nothing else
    Image.new("RGB", (192, 128), (0, 90, 200)).save(run_dir / "diner-DESIGN.png")
    assert make_sheet(run_dir) == line(index, 1, 6, 1, 6)
    assert (folder / "images" / "diner-DESIGN.png").read_bytes() == \
        (run_dir / "diner-DESIGN.png").read_bytes()
    assert len(list((folder / "thumbs").iterdir())) == 7  # the old thumbnail was removed
    # a result gone from the run: its copy goes too; files the report did not write stay
    (folder / "notes.txt").write_text("mine")
    (folder / "images" / "mine.png").write_bytes(b"x")
    (run_dir / "remote-DESIGN.png").unlink()
    make_sheet(run_dir)
    assert not (folder / "images" / "remote-DESIGN.png").exists()
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "images" / "mine.png").exists()
    assert "not available" in index.read_text(encoding="utf-8")
    # a different size is a different thumbnail
    assert "7 thumbnails made" not in make_sheet(run_dir, "--thumb", "64")


def test_a_missing_thumbnail_shows_up_as_broken(
        browser: Any, run_dir: Path, page_errors: list[str]) -> None:
    make_sheet(run_dir)
    min((run_dir / "report" / "thumbs").iterdir()).unlink()
    check = selfcheck(load(browser, (run_dir / "report" / "index.html").as_uri(), []))
    assert check["images"] == "7" and check["broken"] == "1" and check["loaded"] == "6"


def test_verdicts_are_marked_from_the_review_file(
        browser: Any, run_dir: Path, page_errors: list[str]) -> None:
    review.save(run_dir.parent / "spec.review.yaml", [
        review.Decision("bakery-DESIGN-2", 0, SHA["bakery-DESIGN-2"], "approved", "the one"),
        review.Decision("diner-DESIGN", 0, SHA["diner-DESIGN"], "rejected", "<b>too dark</b>"),
        review.Decision("remote-DESIGN", 0, "0" * 64, "approved")])  # for other bytes: stale
    make_sheet(run_dir)
    page_text = (run_dir / "report" / "index.html").read_text(encoding="utf-8")
    assert ('<p class="review">review (spec.review.yaml): 1 approved, 1 rejected, '
            "0 not reviewed, 1 stale; approval rate 50%</p>") in page_text
    assert "&lt;b&gt;too dark&lt;/b&gt;" in page_text and "<b>too dark" not in page_text
    page = load(browser, (run_dir / "report" / "index.html").as_uri(), page_errors)
    marks = page.eval_on_selector_all(
        "figure.result", "fs => fs.map(f => [f.closest('.card').dataset.variant, f.className, "
        "f.querySelector('.verdict').textContent])")
    assert marks == [["bakery-DESIGN-2", "result verdict-approved", "approved \u2713"],
                     ["diner-DESIGN", "result verdict-rejected", "rejected \u2717"],
                     ["remote-DESIGN", "result verdict-stale", "stale: decided on other bytes"]]
    colour = "f => getComputedStyle(f.querySelector('img')).borderTopColor"
    assert page.eval_on_selector('.card[data-variant="bakery-DESIGN-2"] figure.result',
                                 colour) == "rgb(26, 143, 58)"
    assert page_errors == []
