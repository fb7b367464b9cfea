"""The HTML contact sheet of a run: one self-contained folder (no network, no server).

`build(summary, run_dir, dest)` writes `dest/index.html` (inline CSS, one small inline script,
relative links only) and `dest/thumbs/`. The grid's rows and columns are matrix axes; each
cell lists the tasks of that (row, column) as cards: result thumbnails linking to the full
images (relative paths into the run folder), variant id, status and cost, a seed | mask
overlay | result strip for inpainting (local inputs drawn with Pillow, URL/UUID inputs shown
as text), and failures in place with their error code and message.

Thumbnails are cached by sha256 of the source(s) and the size (`thumbs/<key>.png`): a second
report reuses them. The inline script writes what the browser loaded into `#selfcheck`
(`data-cells`, `data-images`, `data-loaded`, `data-broken`, `data-rects`: each image's box
in page pixels), for people and for the tests.
"""

from __future__ import annotations

import hashlib
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageOps

from specrunner.money import usd
from specrunner.report.summary import InputRef, Summary, TaskInfo, check_axes, varying_axes

THUMB_DIR = "thumbs"
OVERLAY_RGB = (255, 40, 90)
OVERLAY_ALPHA = 0.55


@dataclass(frozen=True)
class Sheet:
    """What `build` wrote: the page, its number of cards, thumbnails made and reused."""

    index: Path
    cells: int
    thumbs_made: int
    thumbs_cached: int


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


class Thumbs:
    """Makes thumbnails under `folder`, once per (content key, size)."""

    def __init__(self, folder: Path, size: int) -> None:
        self.folder, self.size = folder, size
        self.made = self.cached = 0
        folder.mkdir(parents=True, exist_ok=True)

    def get(self, key: str, draw: Callable[[], Image.Image]) -> str | None:
        """The file name of the thumbnail for `key` (drawn by `draw` if not cached)."""
        name = hashlib.sha256(f"{key}\0{self.size}".encode()).hexdigest()[:32] + ".png"
        target = self.folder / name
        if target.exists():
            self.cached += 1
            return name
        try:
            im = draw()
        except (OSError, ValueError, Image.DecompressionBombError):
            return None
        im.thumbnail((self.size, self.size))
        tmp = target.with_name(f".{name}.{os.getpid()}.tmp")
        im.save(tmp, "PNG")
        os.replace(tmp, target)
        self.made += 1
        return name


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.draft("RGB", (1024, 1024))  # JPEG: decode at reduced scale, enough for a thumbnail
        return im.convert("RGB")


def _overlay(seed: InputRef, mask: InputRef) -> Image.Image:
    base = _open_rgb(Path(seed.value))
    with Image.open(mask.value) as m:
        alpha = m.convert("L").resize(base.size)
    if mask.polarity == "black-edits":
        alpha = ImageOps.invert(alpha)
    alpha = alpha.point(lambda v: int(v * OVERLAY_ALPHA))
    tint = Image.new("RGB", base.size, OVERLAY_RGB)
    return Image.composite(tint, base, alpha)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(target: Path, dest: Path) -> str:
    rel = os.path.relpath(target, dest)
    return "/".join(_e(p) for p in Path(rel).parts)


def _figure(label: str, thumb: str | None, href: str | None, text: str | None = None,
            kind: str = "input") -> str:
    if thumb is None:
        body = f'<div class="ref">{_e(text or "not available")}</div>'
    else:
        body = f'<img src="{THUMB_DIR}/{thumb}" alt="{_e(label)}">'
    if href is not None:
        body = f'<a href="{href}">{body}</a>'
    return f'<figure class="{kind}">{body}<figcaption>{_e(label)}</figcaption></figure>'


def _card(t: TaskInfo, run_dir: Path, dest: Path, thumbs: Thumbs) -> str:
    seed = next((i for i in t.inputs if i.field == "seedImage"), None)
    mask = next((i for i in t.inputs if i.field == "maskImage"), None)
    figs = []
    if seed is not None:
        if seed.kind == "file":
            figs.append(_figure("seed", thumbs.get(f"seed:{seed.sha256 or seed.value}",
                                                   lambda: _open_rgb(Path(seed.value))),
                                _href(Path(seed.value), dest)))
        else:
            figs.append(_figure("seed", None, None, seed.value))
    if seed is not None and mask is not None:
        if seed.kind == "file" and mask.kind == "file":
            key = f"overlay:{seed.sha256}:{mask.sha256}:{mask.polarity}"
            figs.append(_figure("mask", thumbs.get(key, lambda: _overlay(seed, mask)),
                                _href(Path(mask.value), dest)))
        else:
            figs.append(_figure("mask", None, None, mask.value))
    for img in t.images:
        if img.path is None:
            figs.append(_figure(f"result {img.index + 1}", None, None, "not downloaded yet"))
            continue
        full = run_dir / img.path
        key = f"result:{img.sha256 or full}"
        figs.append(_figure(f"result {img.index + 1}" if t.number_results > 1 else "result",
                            thumbs.get(key, lambda full=full: _open_rgb(full)),
                            _href(full, dest), kind="result"))
    cost = usd(t.cost) if t.cost is not None else None
    price = f"${cost}" if cost else f"est. ${usd(t.est_cost)}"
    error = ""
    if t.error_code:
        error = (f'<div class="error"><b>{_e(t.error_code)}</b> {_e(t.error_message or "")}'
                 "</div>")
    return (f'<div class="cell {_e(t.status)}" data-variant="{_e(t.variant_id)}">'
            f'<div class="head"><span class="id">{_e(t.variant_id)}</span>'
            f'<span class="status">{_e(t.status.replace("_", " "))}</span>'
            f'<span class="cost">{_e(price)}</span></div>'
            f'<div class="strip">{"".join(figs)}</div>{error}</div>')


CSS = """
body{font:13px/1.35 system-ui,sans-serif;margin:16px;background:#f4f4f2;color:#222}
h1{font-size:18px;margin:0 0 4px}p.totals{margin:0 0 12px;color:#444}
table.grid{border-collapse:collapse}
th{background:#333;color:#fff;padding:6px 8px;font-weight:600;text-align:left}
td{vertical-align:top;border:1px solid #ccc;padding:6px;background:#fff}
.cell{border:1px solid #ddd;border-radius:4px;padding:6px;margin:0 0 6px;background:#fafafa}
.cell.failed{background:#fde8e8;border-color:#e08080}
.cell.pending,.cell.in_doubt{background:#fff6dc;border-color:#e0c060}
.head{display:flex;gap:8px;font-size:12px;margin-bottom:4px}
.id{font-weight:600}.status{color:#666}.cost{margin-left:auto;font-variant-numeric:tabular-nums}
.strip{display:flex;gap:4px;align-items:flex-start}
figure{margin:0;text-align:center}figcaption{font-size:11px;color:#666}
figure img{display:block;max-width:HALFpx;max-height:HALFpx;border:1px solid #bbb}
figure.result img{max-width:THUMBpx;max-height:THUMBpx}
.ref{width:120px;font-size:11px;word-break:break-all;color:#555;border:1px dashed #bbb;
padding:4px}
.error{color:#a00;font-size:12px;margin-top:4px}.empty{color:#aaa}
#selfcheck{margin-top:12px;color:#777;font-size:11px}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var loaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var out = document.getElementById('selfcheck');
  out.dataset.cells = document.querySelectorAll('.cell').length;
  out.dataset.images = imgs.length;
  out.dataset.loaded = loaded;
  out.dataset.broken = imgs.length - loaded;
  out.dataset.rects = JSON.stringify(imgs.map(function (i) {
    var r = i.getBoundingClientRect();
    return [Math.round(r.left + window.scrollX), Math.round(r.top + window.scrollY),
            Math.round(r.width), Math.round(r.height)];
  }));
  out.textContent = out.dataset.cells + ' cells, ' + loaded + ' of ' + imgs.length +
    ' images loaded, ' + out.dataset.broken + ' broken';
});
"""


def build(summary: Summary, run_dir: Path, dest: Path, *, rows: str | None = None,
          cols: str | None = None, size: int = 256) -> Sheet:
    """Write the contact sheet folder `dest` for `summary`; return what was written."""
    run_dir, dest = Path(run_dir).resolve(), Path(dest).resolve()
    rows, cols = grid_axes(summary, rows, cols)
    thumbs = Thumbs(dest / THUMB_DIR, size)
    tasks = summary.data.tasks
    keys = [(t.axis(rows) if rows else "", t.axis(cols) if cols else "") for t in tasks]
    row_vals = list(dict.fromkeys(r for r, _ in keys))
    col_vals = list(dict.fromkeys(c for _, c in keys))
    slots: dict[tuple[str, str], list[str]] = {}
    for t, key in zip(tasks, keys):
        slots.setdefault(key, []).append(_card(t, run_dir, dest, thumbs))
    corner = f"{rows or ''} \\ {cols or ''}" if rows or cols else ""
    head = "".join(f"<th>{_e(c)}</th>" for c in col_vals) if cols else "<th>tasks</th>"
    body = []
    for r in row_vals:
        tds = "".join(f'<td>{"".join(slots.get((r, c), [])) or "<span class=empty>-</span>"}'
                      "</td>" for c in col_vals)
        body.append(f"<tr><th>{_e(r)}</th>{tds}</tr>")
    d, totals = summary.data, dict(summary.totals)
    title = f"{d.name or run_dir.name}: contact sheet"
    css = CSS.replace("THUMB", str(size)).replace("HALF", str(size // 2))
    page = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{_e(title)}</title><style>{css}</style></head>"
        f"<body><h1>{_e(title)}</h1><p class=totals>{_e(d.status or 'no run')}: "
        f"{totals['succeeded']} done, {totals['failed']} failed, {totals['pending']} pending, "
        f"{totals['in_doubt']} in doubt of {totals['tasks']} tasks; "
        f"${usd(totals['actual_usd'])} spent of ${usd(totals['estimated_usd'])} "
        "estimated</p>"
        f'<table class=grid><tr><th>{_e(corner)}</th>{head}</tr>{"".join(body)}</table>'
        f'<div id=selfcheck></div><script>{SCRIPT}</script></body></html>\n')
    index = dest / "index.html"
    tmp = dest / f".index.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, index)
    return Sheet(index, len(tasks), thumbs.made, thumbs.cached)
