"""The HTML contact sheet of a run: one folder that stands alone (zip it, mail it, upload it).

`build(summary, run_dir, dest)` writes `dest/index.html` (inline CSS, one small inline script,
relative links only) and copies everything the page shows into `dest`: `thumbs/` (drawn with
Pillow), `images/` (the result files, by their path in the run folder) and `inputs/` (local
seed and mask files, by content). Nothing links outside `dest`.

Layout: one section per value of the row axis (default `input`); its header names the axis
and value, shows the seed and mask overlay once when rows are inputs (else an "inputs"
section lists each input once), and the prompt texts of the row. The section's cells, one per
value of the column axis and labelled with it, wrap to the window's width. Inside a cell, one
card per task: variant id, status, cost, every other varying axis (labelled), the result
thumbnails (each a link to the full image, marked with its review verdict when the spec has a
review file), and failures in place.

Thumbnails (JPEG) are cached by sha256 of the source(s) and the size; `.report-files.json` lists
the files a build copied or drew, so a rebuild copies only what changed and removes only
files it wrote itself that the page no longer shows. The inline script keeps what the
browser loaded in `#selfcheck` (`data-cards`, `data-images`, `data-loaded`, `data-broken`,
`data-overflow`: page width beyond the window, `data-rects` of loaded images). Thumbnails
load lazily, so the counts grow as the page scrolls; they serve people and the tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from PIL import Image, ImageOps

from specrunner.money import usd
from specrunner.report.review import atomic_write, shown
from specrunner.report.summary import Image as Result
from specrunner.report.summary import InputRef, Summary, TaskInfo, check_axes, varying_axes

THUMB_DIR = "thumbs"
IMAGE_DIR = "images"
INPUT_DIR = "inputs"
OWNED = ".report-files.json"
OVERLAY_RGB = (255, 40, 90)
OVERLAY_ALPHA = 0.55
VERDICT_MARK = {"approved": "approved \u2713", "rejected": "rejected \u2717",
                "stale": "stale: decided on other bytes", "pending": "not reviewed",
                "missing": "file missing"}


@dataclass(frozen=True)
class Sheet:
    """What `build` wrote: the page; tasks and result images shown; thumbnails and files."""

    index: Path
    tasks: int
    images: int
    thumbs_made: int
    thumbs_reused: int
    files_copied: int
    files_unchanged: int

    def describe(self) -> str:
        """One line for the terminal: where the page is and what this build did."""
        return (f"{shown(self.index)} ({self.tasks} tasks, {self.images} result images; "
                f"{self.thumbs_made} thumbnails made, {self.thumbs_reused} reused from an "
                f"earlier report; {self.files_copied} files copied in, "
                f"{self.files_unchanged} already there)")


def grid_axes(summary: Summary, rows: str | None, cols: str | None
              ) -> tuple[str | None, str | None]:
    """The axes of rows and columns: as asked, else `input` and the next axis with 2+ values.

    Raises UsageError for an axis the run does not have.
    """
    data = summary.data
    check_axes((rows, cols), data.axes)
    varying = varying_axes(data.axes, data.tasks)
    if rows is None:
        rest = [a for a in varying if a != cols]
        rows = "input" if "input" in rest else (rest[0] if rest else None)
    if cols is None:
        rest = [a for a in varying if a != rows]
        cols = rest[0] if rest else None
    return rows, cols


class Assets:
    """The files of a report folder: thumbnails drawn once per (content key, size), copies of
    result and input files, and the list of what this build owns (`OWNED`)."""

    def __init__(self, dest: Path, size: int) -> None:
        self.dest, self.size = dest, size
        self.made = self.reused = self.copied = self.unchanged = 0
        try:
            old = json.loads((dest / OWNED).read_text(encoding="utf-8"))
            self.old: dict[str, list[int]] = old if isinstance(old, dict) else {}
        except (OSError, ValueError):
            self.old = {}
        self.now: dict[str, list[int]] = {}
        (dest / THUMB_DIR).mkdir(parents=True, exist_ok=True)
        # One listing instead of a stat per thumbnail (10,000 of them on a large run).
        self.thumbs_there = set(os.listdir(dest / THUMB_DIR))

    def thumb(self, key: str, draw: Callable[[], Image.Image]) -> str | None:
        """The relative path of the thumbnail for `key` (drawn by `draw` unless it exists)."""
        name = hashlib.sha256(f"{key}\0{self.size}".encode()).hexdigest()[:32] + ".jpg"
        rel = f"{THUMB_DIR}/{name}"
        if rel in self.now:
            return rel
        target = self.dest / rel
        if name in self.thumbs_there:
            self.reused += 1
        else:
            try:
                im = draw()
            except (OSError, ValueError, Image.DecompressionBombError):
                return None
            im.thumbnail((self.size, self.size))
            tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
            # JPEG: a tenth of PNG's encode time and size for photographic thumbnails
            # (measured: 24 ms vs 2 ms per 256 px thumbnail of a 1024 px output).
            im.save(tmp, "JPEG", quality=85)
            os.replace(tmp, target)
            self.made += 1
        self.now[rel] = []
        return rel

    def copy(self, source: Path, rel: str, st: os.stat_result | None = None) -> str | None:
        """Copy `source` (whose stat `st` the caller may have) to `dest/rel` unless the copy
        is already there; the relative path, or None when the source cannot be read."""
        if rel in self.now:
            return rel
        if st is None:
            st = _stat(source)
            if st is None:
                return None
        sig = [st.st_size, st.st_mtime_ns]
        target = self.dest / rel
        if self.old.get(rel) == sig and _size(target) == st.st_size:
            self.unchanged += 1
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            try:
                shutil.copyfile(source, tmp)
                os.replace(tmp, target)
            except OSError:
                with contextlib.suppress(OSError):
                    tmp.unlink()
                return None
            self.copied += 1
        self.now[rel] = sig
        return rel

    def finish(self) -> None:
        """Remove files an earlier build wrote that this page no longer shows; save the list."""
        for rel in set(self.old) - set(self.now):
            if _inside(self.dest, rel):
                with contextlib.suppress(OSError):
                    (self.dest / rel).unlink()
        atomic_write(self.dest / OWNED, json.dumps(self.now, sort_keys=True, indent=1).encode())


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _size(path: Path) -> int | None:
    st = _stat(path)
    return None if st is None else st.st_size


def _inside(folder: Path, rel: str) -> bool:
    parts = Path(rel).parts
    return bool(parts) and parts[0] in (THUMB_DIR, IMAGE_DIR, INPUT_DIR) and ".." not in parts


def _open_rgb(path: Path, size: int = 1024) -> Image.Image:
    with Image.open(path) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, enough for `size`
        return im.convert("RGB")


def overlay(seed: Path, mask: Path, polarity: str) -> Image.Image:
    """The seed with the repainted area (white of the mask, after polarity) tinted."""
    base = _open_rgb(seed)
    with Image.open(mask) as m:
        alpha = m.convert("L").resize(base.size)
    if polarity == "black-edits":
        alpha = ImageOps.invert(alpha)
    alpha = alpha.point(lambda v: int(v * OVERLAY_ALPHA))
    tint = Image.new("RGB", base.size, OVERLAY_RGB)
    return Image.composite(tint, base, alpha)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(rel: str) -> str:
    return "/".join(_e(p) for p in rel.split("/"))


def _figure(label: str, thumb: str | None, href: str | None, text: str | None = None,
            kind: str = "input", extra: str = "", title: str = "") -> str:
    if thumb is None:
        body = f'<div class="ref">{_e(text or "not available")}</div>'
    else:
        body = f'<img src="{_href(thumb)}" alt="{_e(label)}" loading="lazy">'
    if href is not None:
        tip = f' title="{_e(title)}"' if title else ""
        body = f'<a href="{_href(href)}"{tip}>{body}</a>'
    return f'<figure class="{kind}">{body}<figcaption>{_e(label)}{extra}</figcaption></figure>'


def _axis_label(axis: str, value: str) -> str:
    return f'<span class="axis">{_e(axis)}</span> <span class="value">{_e(value)}</span>'


class _Page:
    """Builds the HTML pieces of one contact sheet."""

    def __init__(self, summary: Summary, run_dir: Path, assets: Assets,
                 stacked: Sequence[str]) -> None:
        self.summary, self.run_dir, self.assets, self.stacked = summary, run_dir, assets, stacked
        review = summary.review
        self.marks = review is not None and review.exists

    def inputs(self, t: TaskInfo) -> str:
        """Seed and mask overlay figures of a task's input (URL/UUID inputs as text)."""
        seed = next((i for i in t.inputs if i.field == "seedImage"), None)
        mask = next((i for i in t.inputs if i.field == "maskImage"), None)
        figs = []
        if seed is not None:
            if seed.kind == "file":
                figs.append(_figure("seed", self.assets.thumb(
                    f"seed:{seed.sha256 or seed.value}",
                    partial(_open_rgb, Path(seed.value), 2 * self.assets.size)),
                    self._input_file(seed)))
            else:
                figs.append(_figure("seed", None, None, seed.value))
        if seed is not None and mask is not None:
            if seed.kind == "file" and mask.kind == "file":
                key = f"overlay:{seed.sha256}:{mask.sha256}:{mask.polarity}"
                figs.append(_figure("mask (tinted: repainted area)", self.assets.thumb(
                    key, lambda: overlay(Path(seed.value), Path(mask.value), mask.polarity)),
                    self._input_file(mask)))
            else:
                figs.append(_figure("mask", None, None, mask.value))
        return f'<div class="inputs">{"".join(figs)}</div>' if figs else ""

    def _input_file(self, ref: InputRef) -> str | None:
        name = Path(ref.value).name
        return self.assets.copy(Path(ref.value), f"{INPUT_DIR}/{(ref.sha256 or '')[:12]}-{name}")

    def card(self, t: TaskInfo) -> str:
        """One task: head, its other axes, result thumbnails with verdicts, error."""
        figs = []
        for img in t.images:
            label = f"result {img.index + 1}" if t.number_results > 1 else "result"
            if img.path is None:
                figs.append(_figure(label, None, None, "not downloaded yet", kind="result"))
                continue
            full = self.run_dir / img.path
            st = _stat(full)
            href = self.assets.copy(full, f"{IMAGE_DIR}/{img.path}", st) if st else None
            # size and mtime in the key: a replaced file gets a new thumbnail
            stamp = f"{st.st_size}:{st.st_mtime_ns}" if st else "missing"
            thumb = self.assets.thumb(f"result:{img.sha256 or full}:{stamp}",
                                      partial(_open_rgb, full, 2 * self.assets.size))
            title = f"seed {img.seed}" if img.seed else ""
            figs.append(_figure(label, thumb, href, kind=f"result {self._verdict_class(t, img)}",
                                extra=self._verdict(t, img), title=title))
        cost = usd(t.cost) if t.cost is not None else None
        price = f"${cost}" if cost else f"est. ${usd(t.est_cost)}"
        error = ""
        if t.error_code:
            error = (f'<div class="error"><b>{_e(t.error_code)}</b> '
                     f'{_e(t.error_message or "")}</div>')
        axes = "".join(f"<li>{_axis_label(a, t.axis(a))}</li>" for a in self.stacked)
        return (f'<div class="card {_e(t.status)}" data-variant="{_e(t.variant_id)}">'
                f'<div class="head"><span class="id">{_e(t.variant_id)}</span>'
                f'<span class="status">{_e(t.status.replace("_", " "))}</span>'
                f'<span class="cost">{_e(price)}</span></div>'
                + (f'<ul class="axes">{axes}</ul>' if axes else "")
                + (f'<div class="strip">{"".join(figs)}</div>' if figs else "")
                + f"{error}</div>")

    def _verdict_class(self, t: TaskInfo, img: Result) -> str:
        state = self._state(t, img)
        return f"verdict-{state[0]}" if state else ""

    def _state(self, t: TaskInfo, img: Result) -> tuple[str, str | None] | None:
        if not self.marks or self.summary.review is None:
            return None
        item = self.summary.review.of(t.variant_id, img.index)
        if item is None or item.task is not t:
            return None
        return item.state, item.decision.note if item.decision is not None else None

    def _verdict(self, t: TaskInfo, img: Result) -> str:
        state = self._state(t, img)
        if state is None:
            return ""
        verdict, note = state
        text = f'<span class="verdict">{_e(VERDICT_MARK.get(verdict, verdict))}</span>'
        if note and verdict in ("approved", "rejected"):
            text += f'<span class="note">{_e(note)}</span>'
        return text

    def prompts(self, tasks: Iterable[TaskInfo], has_prompt_axis: bool) -> str:
        """The distinct prompt texts of `tasks`, each once, named by prompt (and input when
        one name stands for several texts)."""
        texts: dict[str, dict[str, list[TaskInfo]]] = {}
        for t in tasks:
            if t.prompt is None:
                continue
            name = (t.prompt_name or (t.axis("prompt") if has_prompt_axis else "") or "prompt")
            texts.setdefault(name, {}).setdefault(t.prompt, []).append(t)
        items = []
        for name, by_text in texts.items():
            for text, ts in by_text.items():
                label = name
                if len(by_text) > 1:
                    who = sorted({t.input_name or t.variant_id for t in ts})
                    label = f"{name} ({', '.join(who[:3])}{', ...' if len(who) > 3 else ''})"
                items.append(f"<dt>{_e(label)}</dt><dd>{_e(text)}</dd>")
        return f'<dl class="prompts">{"".join(items)}</dl>' if items else ""


CSS = """
*{box-sizing:border-box}
body{font:13px/1.35 system-ui,sans-serif;margin:16px;background:#f4f4f2;color:#222}
h1{font-size:18px;margin:0 0 4px}p{margin:0 0 6px;color:#444}
.axis{color:#666;font-weight:400}.axis:after{content:":"}
section.row{background:#fff;border:1px solid #ccc;border-radius:6px;padding:10px;margin:12px 0}
section.row>header{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;
margin-bottom:8px}
h2{font-size:16px;margin:0;min-width:140px}h3{font-size:13px;margin:0 0 6px}
.inputs{display:flex;gap:6px;flex-wrap:wrap}
dl.prompts{margin:0;flex:1 1 320px;min-width:0}
dl.prompts dt{font-weight:600}dl.prompts dd{margin:0 0 4px;white-space:pre-wrap;
overflow-wrap:anywhere;color:#333}
.cells{display:grid;gap:8px;grid-template-columns:repeat(auto-fill,minmax(min(100%,CELLpx),1fr))}
.cell{border:1px solid #ddd;border-radius:4px;padding:6px;background:#fafafa;min-width:0}
.card{border:1px solid #e4e4e4;border-radius:4px;padding:6px;margin:0 0 6px;background:#fff}
.card.failed{background:#fde8e8;border-color:#e08080}
.card.pending,.card.in_doubt{background:#fff6dc;border-color:#e0c060}
.head{display:flex;flex-wrap:wrap;gap:8px;font-size:12px;margin-bottom:4px}
.id{font-weight:600;overflow-wrap:anywhere}.status{color:#666}
.cost{margin-left:auto;font-variant-numeric:tabular-nums}
ul.axes{list-style:none;margin:0 0 4px;padding:0;display:flex;flex-wrap:wrap;gap:2px 10px;
font-size:12px}
.strip{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start}
figure{margin:0;text-align:center;max-width:100%}
figcaption{font-size:11px;color:#666;display:flex;flex-direction:column}
figure img{display:block;max-width:min(100%,HALFpx);max-height:HALFpx;border:1px solid #bbb;
margin:auto}
figure.result img{max-width:min(100%,THUMBpx);max-height:THUMBpx;border-width:3px;
border-color:#bbb}
figure.verdict-approved img{border-color:#1a8f3a}figure.verdict-rejected img{border-color:#c0392b}
figure.verdict-stale img{border-color:#e0a000;border-style:dashed}
.verdict{font-weight:600}.verdict-approved .verdict{color:#1a8f3a}
.verdict-rejected .verdict{color:#c0392b}.verdict-stale .verdict{color:#a07000}
.note{font-style:italic;overflow-wrap:anywhere}
.ref{width:120px;font-size:11px;word-break:break-all;color:#555;border:1px dashed #bbb;
padding:4px}
.error{color:#a00;font-size:12px;margin-top:4px;overflow-wrap:anywhere}.empty{color:#aaa}
#selfcheck{margin-top:12px;color:#777;font-size:11px}
"""

# Thumbnails load lazily, so the counts are rewritten as each one loads or fails. (No
# comments inside: the page is checked for "//", the mark of a link to elsewhere.)
SCRIPT = """
(function () {
  var out = document.getElementById('selfcheck');
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
    var broken = imgs.filter(function (i) { return i.complete && i.naturalWidth === 0; });
    out.dataset.cards = document.querySelectorAll('.card').length;
    out.dataset.images = imgs.length;
    out.dataset.loaded = loaded.length;
    out.dataset.broken = broken.length;
    out.dataset.overflow = document.documentElement.scrollWidth - window.innerWidth;
    out.dataset.rects = JSON.stringify(loaded.map(function (i) {
      var r = i.getBoundingClientRect();
      return [Math.round(r.left + window.scrollX), Math.round(r.top + window.scrollY),
              Math.round(r.width), Math.round(r.height)];
    }));
    out.textContent = out.dataset.cards + ' tasks, ' + loaded.length + ' of ' + imgs.length +
      ' images loaded, ' + broken.length + ' broken';
  }
  Array.prototype.forEach.call(document.images, function (i) {
    i.addEventListener('load', check);
    i.addEventListener('error', check);
  });
  window.addEventListener('load', check);
  window.addEventListener('resize', check);
  check();
})();
"""


def _review_line(summary: Summary) -> str:
    r = summary.review
    if r is None or not r.exists:
        return ""
    c = r.totals
    from specrunner.report.summary import rate_text

    return (f'<p class="review">review ({_e(r.file.name)}): {c.approved} approved, '
            f"{c.rejected} rejected, {c.pending} not reviewed, {c.stale} stale; approval rate "
            f"{rate_text(c.rate)}</p>")


def build(summary: Summary, run_dir: Path, dest: Path, *, rows: str | None = None,
          cols: str | None = None, size: int = 256) -> Sheet:
    """Write the contact sheet folder `dest` for `summary`; return what was written."""
    run_dir, dest = Path(run_dir).resolve(), Path(dest).resolve()
    rows, cols = grid_axes(summary, rows, cols)
    data = summary.data
    tasks = data.tasks
    stacked = [a for a in varying_axes(data.axes, tasks) if a not in (rows, cols)]
    assets = Assets(dest, size)
    page = _Page(summary, run_dir, assets, stacked)
    row_of = {id(t): t.axis(rows) if rows else "" for t in tasks}
    col_of = {id(t): t.axis(cols) if cols else "" for t in tasks}
    row_vals = list(dict.fromkeys(row_of[id(t)] for t in tasks))
    col_vals = list(dict.fromkeys(col_of[id(t)] for t in tasks))
    by_row: dict[str, list[TaskInfo]] = {}
    for t in tasks:
        by_row.setdefault(row_of[id(t)], []).append(t)
    has_prompt_axis = "prompt" in data.axes
    parts = []
    if rows != "input":
        seen: dict[str, str] = {}
        for t in tasks:
            name = t.input_name or "-"
            if name not in seen and t.inputs:
                seen[name] = (f'<div class="cell"><h3>{_axis_label("input", name)}</h3>'
                              f"{page.inputs(t)}</div>")
        if seen:
            parts.append('<section class="row inputs-list"><header><h2>inputs</h2></header>'
                         f'<div class="cells">{"".join(seen.values())}</div></section>')
    for r in row_vals:
        members = by_row[r]
        head = _axis_label(rows, r) if rows else "all tasks"
        inputs = page.inputs(members[0]) if rows == "input" else ""
        cells = []
        for c in col_vals:
            cards = [page.card(t) for t in members if col_of[id(t)] == c]
            label = f"<h3>{_axis_label(cols, c)}</h3>" if cols else ""
            cells.append(f'<div class="cell" data-col="{_e(c)}">{label}'
                         f'{"".join(cards) or "<span class=empty>no task</span>"}</div>')
        parts.append(f'<section class="row" data-row="{_e(r)}"><header><h2>{head}</h2>'
                     f"{inputs}{page.prompts(members, has_prompt_axis)}</header>"
                     f'<div class="cells">{"".join(cells)}</div></section>')
    totals = dict(summary.totals)
    title = f"{data.name or run_dir.name}: contact sheet"
    legend = ", ".join(x for x in (
        f"rows: {rows}" if rows else "", f"columns: {cols}" if cols else "",
        f"in each card: {', '.join(stacked)}" if stacked else "") if x)
    cell_px = size + 40
    css = (CSS.replace("CELL", str(cell_px)).replace("THUMB", str(size))
           .replace("HALF", str(size // 2)))
    html_text = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{_e(title)}</title><style>{css}</style></head>"
        f"<body><h1>{_e(title)}</h1><p class=totals>{_e(data.status or 'no run')}: "
        f"{totals['succeeded']} done, {totals['failed']} failed, {totals['pending']} pending, "
        f"{totals['in_doubt']} in doubt of {totals['tasks']} tasks; "
        f"${usd(totals['actual_usd'])} spent of ${usd(totals['estimated_usd'])} "
        f"estimated</p>{_review_line(summary)}"
        + (f"<p class=legend>{_e(legend)}</p>" if legend else "")
        + "".join(parts)
        + f"<div id=selfcheck></div><script>{SCRIPT}</script></body></html>\n")
    atomic_write(dest / "index.html", html_text.encode("utf-8"))
    assets.finish()
    images = sum(len(t.images) for t in tasks)
    return Sheet(dest / "index.html", len(tasks), images, assets.made, assets.reused,
                 assets.copied, assets.unchanged)
