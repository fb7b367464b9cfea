"""Benchmark: the review page, the HTML report and export on a 1,000-task run (issue 18).

    python bench/bench_review.py [--tasks 1000] [--px 1024] [--keep DIR]

Runs a campaign of N tasks (2 URL inputs x 5 styleTypes x N/10 shop names, PNG outputs) with
`specrunner run --local` (the real run stage and record, the built-in server), then replaces
every result file with a PX x PX PNG of noise and colour (1.7 MB each at 1024: heavier than a
real output), so hashing, thumbnails and copies pay realistic I/O. Measures, in-process:

- review server: the first /api/state (load_run + hashing every image), a warm one (nothing
  changed: stats only), one after a new decision; body size;
- the page in headless Chromium (if playwright and /usr/bin/chromium are there): from
  navigation to every tile in the DOM, and to the thumbnails on the first screen loaded;
- 200 decisions POSTed one after another (latency p50/p95 and file size after);
- `report --format html` cold (thumbnails made, files copied) and warm;
- `export --approved` of the approved half, and again (all already there).
"""

from __future__ import annotations

import argparse
import io
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from specrunner import cli  # noqa: E402

STYLES = ["GENERAL", "REALISTIC", "DESIGN", "RENDER_3D", "ANIME"]


def write_spec(folder: Path, tasks: int) -> Path:
    """A campaign of `tasks` tasks (rounded to tens) with URL inputs and PNG outputs."""
    names = max(tasks // (2 * len(STYLES)), 1)
    spec = folder / "bench.yaml"
    spec.write_text(f"""version: 1
name: review-bench
model: ideogram:3@3
defaults: {{outputFormat: PNG}}
inputs:
  a: {{seed: "https://example.com/a.jpg", mask: "https://example.com/a.png"}}
  b: {{seed: "https://example.com/b.jpg", mask: "https://example.com/b.png"}}
prompts:
  sign: 'A sign reading "{{shop}}"'
matrix:
  input: [a, b]
  styleType: [{", ".join(STYLES)}]
  shop: [{", ".join(f"SHOP {i}" for i in range(names))}]
output: {{dir: run, name: "{{input}}/{{styleType}}/{{shop}}"}}
budget: {{max_usd: 100000, max_tasks: {max(tasks, 10)}}}
execution: {{concurrency: 64}}
""", encoding="utf-8")
    return spec


def heavy_images(run: Path, px: int) -> int:
    """Overwrite every result PNG with a PX x PX picture that compresses like a photo."""
    rng = random.Random(7)
    noise = Image.effect_noise((px, px), 60).convert("RGB")
    total = 0
    for n, path in enumerate(sorted(run.rglob("*.png"))):
        if ".specrunner" in path.parts or "report" in path.parts:
            continue
        tint = Image.new("RGB", (px, px), (rng.randrange(256), rng.randrange(256), n % 256))
        Image.blend(noise, tint, 0.5).save(path, "PNG", compress_level=1)
        total += path.stat().st_size
    return total


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - t0)
    return best, value


def cli_run(*argv: str) -> str:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(list(argv), out, err)
    assert code == 0, err.getvalue()
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--px", type=int, default=1024)
    ap.add_argument("--keep", help="build the run in DIR and keep it")
    args = ap.parse_args()
    import httpx

    from specrunner.commands.review import build_source
    from specrunner.review import create_app
    from specrunner.review.serve import running

    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        spec = write_spec(folder, args.tasks)
        t0 = time.perf_counter()
        cli_run("run", str(spec), "--local", "--progress", "none")
        build_s = time.perf_counter() - t0
        run = folder / "run"
        t0 = time.perf_counter()
        size = heavy_images(run, args.px)
        print(f"run: {args.tasks:,} tasks in {build_s:.1f} s; images rewritten at {args.px} px "
              f"({size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.1f} s ({run})")

        source = build_source(str(spec), None)
        cold, state = timed(source.state)
        images = len(state.images)  # type: ignore[attr-defined]
        rows.append(("/api/state, first (load_run + hash every image)",
                     f"{cold:.3f} s, {images:,} images, {len(state.body) / 1e3:,.0f} kB"))  # type: ignore[attr-defined]
        warm, _ = timed(source.state, 5)
        rows.append(("/api/state, nothing changed (best of 5)", f"{warm:.3f} s"))

        with running(create_app(source)) as url, httpx.Client(base_url=url, timeout=60) as c:
            lat = []
            tiles = [r for r in state.images][:200]  # type: ignore[attr-defined]
            for i, r in enumerate(tiles):
                body = {"variant": r.task.variant_id, "index": r.image.index, "expect": None,
                        "entry": {"sha256": r.sha256,
                                  "verdict": "approved" if i % 2 == 0 else "rejected"}}
                t0 = time.perf_counter()
                resp = c.post("/api/decision", json=body)
                lat.append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
            lat.sort()
            p50, p95 = lat[len(lat) // 2] * 1e3, lat[int(len(lat) * .95)] * 1e3
            rows.append((f"{len(lat)} decisions, one POST each (p50 / p95)",
                         f"{p50:.1f} / {p95:.1f} ms; "
                         f"file {source.review_file.stat().st_size / 1e3:.0f} kB"))
            after, _ = timed(source.state)
            rows.append(("/api/state after decisions (review file re-read)", f"{after:.3f} s"))
            page = browser_figures(url, images)
            if page:
                rows += page

        t, text = timed(lambda: cli_run("report", str(spec), "--format", "html"))
        rows.append(("report --format html, cold", f"{t:.2f} s: {str(text).strip()}"))
        t, text = timed(lambda: cli_run("report", str(spec), "--format", "html"))
        rows.append(("report --format html, warm", f"{t:.2f} s"))
        dest = folder / "exported"
        t, text = timed(lambda: cli_run("export", str(spec), str(dest)))
        rows.append(("export --approved", f"{t:.2f} s: {str(text).split(';')[0]}"))
        t, text = timed(lambda: cli_run("export", str(spec), str(dest)))
        rows.append(("export again (all already there)", f"{t:.2f} s"))
    print("\n| measurement | result |\n| --- | --- |")
    for k, v in rows:
        print(f"| {k} | {v} |")
    return 0


def browser_figures(url: str, images: int) -> list[tuple[str, str]]:
    """Navigation to every tile in the DOM, and to the first screen's thumbnails loaded."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return [("page in Chromium", "skipped: playwright not installed")]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            out = []
            for label in ("first", "second"):
                page = b.new_page(viewport={"width": 1400, "height": 900})
                t0 = time.perf_counter()
                page.goto(url)
                page.wait_for_function(f"document.querySelectorAll('.tile').length >= {images}",
                                       timeout=120_000)
                grid = time.perf_counter() - t0
                page.wait_for_function(
                    "Array.from(document.querySelectorAll('.tile img')).filter(i => "
                    "i.getBoundingClientRect().top < innerHeight).every(i => i.complete)",
                    timeout=120_000)
                shown = time.perf_counter() - t0
                out.append((f"page load in Chromium ({label} visit)",
                            f"{grid:.2f} s to {images:,} tiles, {shown:.2f} s to the first "
                            "screen's thumbnails"))
                page.close()
            return out
        finally:
            b.close()


if __name__ == "__main__":
    raise SystemExit(main())
