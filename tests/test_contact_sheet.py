"""The HTML contact sheet, opened in a real headless Chromium (Debian's `chromium`).

Skipped when no Chromium is installed, except under CI (env CI set), where that fails.
"""

from __future__ import annotations

import html.parser
import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from specrunner import cli, report

from specrunner.report import html as contact_sheet
from specrunner.commands.report import locate

FIXTURE = Path(__file__).parent / "fixtures" / "run_fixture"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1400, 2000)


def chromium(tmp_path: Path, url: str, *extra: str) -> str:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed but CI is set: the browser test must run")
        pytest.skip("chromium not installed (apt-get install chromium)")
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=5000", *extra, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def selfcheck(dom: str) -> dict[str, str]:
    m = re.search(r'<div id="selfcheck"([^>]*)>', dom)
    assert m, "the page's self-check did not run"
    return {k: html.unescape(v) for k, v in re.findall(r'data-(\w+)="([^"]*)"', m.group(1))}


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


def test_contact_sheet_loads_every_image_in_chromium(run_dir: Path, tmp_path: Path) -> None:
    text = make_sheet(run_dir)
    index = run_dir / "report" / "index.html"
    assert text == f"contact sheet: {index} (5 cells, 7 thumbnails made, 4 cached)\n"
    check = selfcheck(chromium(tmp_path, index.as_uri(), "--dump-dom"))
    # 5 tasks; seed + mask overlay for the 4 local-input tasks, 3 results (1 of 2 refused)
    assert (check["cells"], check["images"], check["loaded"], check["broken"]) == \
        ("5", "11", "11", "0")
    rects = json.loads(check["rects"])
    shot = tmp_path / "sheet.png"
    chromium(tmp_path, index.as_uri(), f"--screenshot={shot}")
    with Image.open(shot) as im:
        assert im.size == WINDOW
        page = im.convert("RGB")
    assert len(rects) == 11
    for x, y, w, h in rects:
        assert w > 40 and h > 40 and y + h <= WINDOW[1]
        crop = page.crop((x + 2, y + 2, x + w - 2, y + h - 2))
        colours = crop.getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) >= 4, (x, y, w, h)  # a picture, not a blank
    # the page background itself is plain: the thumbnails are what carries colour
    assert len(page.crop((1300, 1900, 1400, 2000)).getcolors() or []) == 1


def test_a_missing_thumbnail_shows_up_as_broken(run_dir: Path, tmp_path: Path) -> None:
    make_sheet(run_dir)
    thumbs = sorted((run_dir / "report" / "thumbs").iterdir())
    thumbs[0].unlink()
    check = selfcheck(chromium(tmp_path, (run_dir / "report" / "index.html").as_uri(),
                               "--dump-dom"))
    assert (check["images"], check["broken"]) != ("11", "0")
    assert int(check["broken"]) >= 1 and int(check["loaded"]) + int(check["broken"]) == 11


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href")]


def test_self_contained_relative_links_that_resolve(run_dir: Path) -> None:
    make_sheet(run_dir)
    index = run_dir / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    links = _Links()
    links.feed(page)
    assert "link" not in links.tags and page.count("<script>") == 1  # inline CSS and script
    assert not re.search(r"(https?:)?//|@import|url\(", page.replace(
        "https://example.com/remote/", ""))  # only the remote inputs, shown as text
    assert links.refs and all(not r.startswith(("/", "http", "file:")) for r in links.refs)
    for ref in links.refs:
        assert (index.parent / html.unescape(ref)).resolve().is_file(), ref
    full = [r for r in links.refs if r.endswith(".png") and not r.startswith("thumbs/")]
    assert "../bakery-DESIGN-1.png" in full and "../remote-DESIGN.png" in full
    assert "https://example.com/remote/seed.jpg" in page
    assert "contentPolicyViolation</b> result blocked by the content policy" in page


def test_thumbnails_are_made_once_and_reused(run_dir: Path) -> None:
    make_sheet(run_dir)
    folder = run_dir / "report" / "thumbs"
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert len(before) == 7
    index = run_dir / "report" / "index.html"
    assert make_sheet(run_dir) == f"contact sheet: {index} (5 cells, 0 thumbnails made, " \
                                  "11 cached)\n"
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    assert after == before
    # a different size is a different thumbnail
    assert "7 thumbnails made" in make_sheet(run_dir, "--thumb", "64")


def test_rows_and_columns_follow_the_chosen_axes(run_dir: Path, tmp_path: Path) -> None:
    make_sheet(run_dir, "--rows", "styleType", "--cols", "input", "--out", str(tmp_path / "s"))
    page = (tmp_path / "s" / "index.html").read_text(encoding="utf-8")
    heads = re.findall(r"<th>([^<]*)</th>", page)
    assert heads == ["styleType \\ input", "bakery", "diner", "remote", "DESIGN", "REALISTIC"]
    s = report.summarize(report.load_run(*locate(str(run_dir))))
    assert contact_sheet.grid_axes(s, None, None) == ("input", "styleType")
    assert contact_sheet.grid_axes(s, None, "input") == ("styleType", "input")
    out, err = io.StringIO(), io.StringIO()
    assert cli.run(["report", str(run_dir), "--format", "html", "--rows", "colour"],
                   out, err) == 2
    assert err.getvalue().startswith("error: unknown axis 'colour'")
