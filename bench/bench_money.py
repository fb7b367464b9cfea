"""Money when the provider departs from the plan: what the local server BILLED, per scenario.

    python bench/bench_money.py

One row per scenario (12 tasks of one image each at table price $0.08, concurrency 4, the
local server in-process with 50 ms of processing so tasks overlap): billed against the
budget, tasks billed against tasks planned (and UUIDs billed: > tasks would be paying
twice), images billed against images kept on disk and in the record, and how many times the
API key appears in any file of the output folder or in the report in every format.
Targets (issue 12): billed <= budget, no task paid twice, no billed image lost, no key.
"""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

from tabulate import tabulate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_run_cli import write_spec

from specrunner import cli
from specrunner.local import FaultConfig, Latency, LocalConfig, create_app
from specrunner.money import usd
from specrunner.plan import build_plan
from specrunner.record import read_snapshot, read_uuids
from specrunner.run import Runner, set_testing
from specrunner.spec import load_spec

KEY = "rw-bench-money-key-5f1e2d3c4b5a69788796a5b4"


def spec_file(folder: Path, max_usd: str, extra: str = "") -> Path:
    spec = write_spec(folder, repeat=6)
    text = spec.read_text().replace("budget: {max_usd: 5}", f"budget: {{max_usd: {max_usd}}}")
    spec.write_text(text.replace("execution: {", "execution: {concurrency: 4, ") + extra)
    return spec


def key_count(out: Path) -> int:
    n = sum(p.read_bytes().count(KEY.encode()) for p in out.rglob("*") if p.is_file())
    for fmt in ("table", "markdown", "json", "csv"):
        buf = io.StringIO()
        cli.run(["report", str(out), "--format", fmt], buf, io.StringIO())
        n += buf.getvalue().count(KEY)
    return n


def scenario(name: str, folder: Path, max_usd: str, *, extra: str = "", runs: int = 1,
             edit: bool = False, **faults) -> list[object]:
    app = create_app(LocalConfig(render=False, faults=FaultConfig(
        processing=Latency("fixed", 0.05), **faults)))
    spec = spec_file(folder, max_usd, extra)
    out = folder / "out"
    statuses = []
    for i in range(runs):
        if edit and i == 1:
            spec.write_text(spec.read_text().replace("A sign reading", "A new sign reading"))
        plan = build_plan(load_spec(spec))
        result = Runner(plan, out_dir=out, local=app, api_key=KEY).run_sync()
        statuses.append(result.status)
    stats = app.stats()
    snap = read_snapshot(out)
    kept = sum(1 for rs in snap.results.values() for r in rs
               if r.output_path and (out / r.output_path).is_file())
    uuids = read_uuids(out)
    tasks_billed = len({uuids.get(u, u) for u in stats.charges})
    return [name, f"${usd(stats.total_billed_usd)} / ${max_usd}", f"{tasks_billed} / "
            f"{len(plan.tasks) * (2 if edit else 1)}", len(stats.charges),
            f"{stats.images_billed} / {kept}", key_count(out), " -> ".join(statuses),
            "ok" if stats.total_billed_usd <= Decimal(max_usd) and kept >= stats.images_billed
            and len(stats.charges) == tasks_billed else "FAILED"]


def key_in_spec(folder: Path) -> list[object]:
    """The key written into the spec: refused before any request (exit 2), nothing kept."""
    import os

    import specrunner.run

    app = create_app(LocalConfig(render=False))
    spec = spec_file(folder, "1.00")
    spec.write_text(spec.read_text().replace("vars: {word: HELLO}", f"vars: {{word: {KEY}}}"))
    saved, os.environ["RUNWARE_API_KEY"] = os.environ.get("RUNWARE_API_KEY"), KEY
    real = specrunner.run.local_server
    specrunner.run.local_server = lambda faults=None, state_dir=None: app  # type: ignore
    err = io.StringIO()
    try:
        code = cli.run(["run", str(spec), "--local", "--out", str(folder / "out"),
                        "--progress", "none"], io.StringIO(), err)
    finally:
        specrunner.run.local_server = real  # type: ignore
        if saved is None:
            os.environ.pop("RUNWARE_API_KEY")
        else:
            os.environ["RUNWARE_API_KEY"] = saved
    stats = app.stats()
    leaked = err.getvalue().count(KEY) + (key_count(folder / "out")
                                          if (folder / "out").exists() else 0)
    return ["the key written in the spec", f"${usd(stats.total_billed_usd)} / $1.00",
            f"0 / 12 (exit {code})", len(stats.charges), "0 / 0", leaked, "refused",
            "ok" if code == 2 and not stats.http_requests and not leaked else "FAILED"]


def main() -> None:
    set_testing(True)
    root = Path(tempfile.mkdtemp(prefix="bench-money-"))
    rows = []
    try:
        cases = [
            ("price $0.50 above the $0.08 table", "1.00", {"price_usd": Decimal("0.50")}),
            ("prices: override $0.01, real $0.08", "0.50",
             {"extra": 'prices: {"ideogram:3@3": 0.01}\n'}),
            ("3 images billed for numberResults 1", "1.00", {"extra_images": 2}),
            ("billed, then internalError (1 in 3)", "1.00",
             {"rates": {"billed_then_error": 0.33}, "runs": 3, "seed": 4}),
            ("errors quote the Authorization header", "1.00",
             {"rates": {"billed_then_error": 0.5, "http_500": 0.2}, "echo_key": True,
              "runs": 3}),
            ("no cost reported", "1.00", {"report_cost": False}),
            ("budget per campaign: edit, run again", "1.00", {"runs": 2, "edit": True}),
        ]
        for i, (name, cap, kw) in enumerate(cases):
            folder = root / str(i)
            folder.mkdir()
            rows.append(scenario(name, folder, cap, **kw))
        folder = root / "key"
        folder.mkdir()
        rows.append(key_in_spec(folder))
    finally:
        shutil.rmtree(root)
    print(tabulate(rows, headers=["scenario", "billed / budget", "tasks billed / planned",
                                  "UUIDs billed", "images billed / kept", "key in files",
                                  "run statuses", "verdict"], disable_numparse=True))


if __name__ == "__main__":
    main()
