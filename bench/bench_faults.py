"""10,000 tasks at ~20% injected faults of every kind the local server has, resumed until
complete (bounded), judged by the server's ledger; then a sweep for the API key.

    python bench/bench_faults.py [--tasks 10000] [--concurrency 32] [--images 1]
                                 [--max-runs 8] [--seed 1] [--no-waits]

The campaign is a spec (one local seed/mask pair, uploaded, `repeat: N`) run through the
public `Runner` against the local server in-process, whose ledger outlives the runs:

- faults: every fault the server has (`local.ALL_FAULTS`: request faults before and after
  billing, task faults including billed_then_error, download faults) at the rates below,
  and echo_key (every error message quotes the request's Authorization header);
- the budget is exactly the campaign's cost at the table price: no room to pay twice;
- runs again while it is not complete, at most --max-runs times;
- judged by the ledger (tests/test_run_support.audit): every charged UUID is a task of the
  record, done, under that UUID, with every billed image on disk and its sha256 recorded;
  no task charged under two UUIDs; billed <= budget. The runner's counters are only shown.
- canary sweep: the key (and its first 16 characters, a clipped quote) in every byte under
  the output folder and in every report format, with RUNWARE_API_KEY set and unset.

Backoff and polling waits are real (as on the CLI) unless --no-waits (earlier figures).
Exit 1, keeping the folder, if anything is lost, paid twice, unknown, over budget, leaked
or incomplete.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_run_local import EVERY_FAULT
from test_run_support import audit

from specrunner import cli
from specrunner.commands.report import FORMATS as REPORT_FORMATS
from specrunner.local import ALL_FAULTS, FaultConfig, LocalConfig, create_app
from specrunner.local.faults import DOWNLOAD_FAULTS, REQUEST_FAULTS, TASK_FAULTS
from specrunner.plan import build_plan
from specrunner.record import read_uuids
from specrunner.run import Runner, RunResult, set_testing
from specrunner.spec import load_spec

KEY = "rw-bench-faults-canary-3d9a61f0c4b2e8d7a5f1"
PRICE = Decimal("0.08")  # the table price of ideogram:3@3 per image
# 20% of requests (as the tests), 5% of tasks billed then answered with an error, and the
# task and download faults of the tests.
RATES = {**EVERY_FAULT, "billed_then_error": 0.05}

SPEC = """\
version: 1
name: bench-faults
defaults:
  outputFormat: PNG
  numberResults: {images}
inputs:
  shop:
    seed: seed.png
    mask: mask.png
prompts:
  sign: "A shop sign reading FAULTS {{batch}}"
matrix:
  batch: {batches}
repeat: {repeat}
output:
  dir: out
budget: {{max_usd: {max_usd}, max_tasks: {tasks}}}
execution:
  concurrency: {concurrency}
  max_attempts: 3
  request_timeout_s: 0.5
  max_download_bytes: 200000
  poll_interval_s: 0.05
  poll_max_interval_s: 0.2
"""


def write_campaign(folder: Path, tasks: int, images: int, concurrency: int) -> Path:
    """The spec and its two input images in `folder`; budget exactly the campaign."""
    Image.new("RGB", (32, 24), (200, 120, 40)).save(folder / "seed.png")
    mask = Image.new("L", (32, 24), 0)
    mask.paste(255, (8, 6, 24, 18))
    mask.save(folder / "mask.png")
    # `repeat` is at most 1,000: tasks = batches (a matrix axis) x repeat
    batches = next(b for b in range(1, tasks + 1) if tasks % b == 0 and tasks // b <= 1000)
    spec = folder / "spec.yaml"
    spec.write_text(SPEC.format(tasks=tasks, images=images, concurrency=concurrency,
                                batches=list(range(batches)), repeat=tasks // batches,
                                max_usd=PRICE * images * tasks), encoding="utf-8")
    return spec


@contextlib.contextmanager
def env_key(value: str | None) -> Iterator[None]:
    saved = os.environ.get("RUNWARE_API_KEY")
    if value is None:
        os.environ.pop("RUNWARE_API_KEY", None)
    else:
        os.environ["RUNWARE_API_KEY"] = value
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("RUNWARE_API_KEY", None)
        else:
            os.environ["RUNWARE_API_KEY"] = saved


@dataclass(frozen=True)
class Sweep:
    """Where the key was found (0 everywhere is the target) and how big the haystack was."""

    in_files: int  # the whole key, in any byte of any file under the output folder
    clipped_in_files: int  # its first 16 characters (a quote cut short) in those bytes
    in_reports: int  # the whole key or its first 16 characters in a report's output
    files: int
    bytes: int
    redacted_quotes: int  # "Bearer [redacted]" in the files: the echoes were there, masked


def sweep(out: Path) -> Sweep:
    """Render every report format (key in the environment and not), then search every byte
    under `out` (the html report's folder included) and every report's output."""
    needles = (KEY, KEY[:16])
    in_reports = 0
    for env in (KEY, None):
        with env_key(env):
            for fmt in REPORT_FORMATS:
                text, err = io.StringIO(), io.StringIO()
                code = cli.run(["report", str(out), "--format", fmt], text, err)
                if code != 0:
                    raise SystemExit(f"report --format {fmt} failed (exit {code}): "
                                     f"{err.getvalue()}")
                in_reports += sum(text.getvalue().count(n) + err.getvalue().count(n)
                                  for n in needles)
    files = [p for p in out.rglob("*") if p.is_file()]
    blobs = [p.read_bytes() for p in files]
    return Sweep(sum(b.count(KEY.encode()) for b in blobs),
                 sum(b.count(KEY[:16].encode()) for b in blobs), in_reports, len(files),
                 sum(len(b) for b in blobs),
                 sum(b.count(b"Bearer [redacted]") for b in blobs))


def share(injected: Mapping[str, int], kinds: tuple[str, ...], of: int) -> str:
    """The injections of `kinds` as a percentage of `of`."""
    return f"{sum(injected.get(k, 0) for k in kinds) / max(of, 1):.1%}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--images", type=int, default=1, help="numberResults of every task")
    ap.add_argument("--max-runs", type=int, default=8, help="resume at most this many runs")
    ap.add_argument("--seed", type=int, default=1, help="the fault injector's seed")
    ap.add_argument("--no-waits", action="store_true",
                    help="switch backoff and polling waits off (set_testing)")
    args = ap.parse_args()
    missing = set(ALL_FAULTS) - set(RATES)
    if missing:
        raise SystemExit(f"the bench does not inject {sorted(missing)}: add them to RATES")
    set_testing(args.no_waits)
    app = create_app(LocalConfig(render=False, faults=FaultConfig(
        seed=args.seed, rates=RATES, hang_s=2.0, oversize_bytes=300_000, echo_key=True)))
    root = Path(tempfile.mkdtemp(prefix="bench-faults-"))
    spec = write_campaign(root, args.tasks, args.images, args.concurrency)
    out = root / "out"
    plan = build_plan(load_spec(spec))
    budget = PRICE * args.images * args.tasks
    runs: list[tuple[RunResult, float]] = []
    t0 = time.perf_counter()
    while len(runs) < args.max_runs:
        t1 = time.perf_counter()
        result = Runner(plan, out_dir=out, local=app, api_key=KEY).run_sync()
        runs.append((result, time.perf_counter() - t1))
        if result.status == "complete":
            break
    dt = time.perf_counter() - t0
    stats = app.stats()
    a = audit(dict(app.ledger.images), out)
    s = sweep(out)
    leaked_in_messages = sum(r.message.count(KEY) for r, _ in runs)
    sends = stats.requests_by_type.get("imageInference", 0)
    uuids = len(read_uuids(out))
    complete = runs[-1][0].status == "complete"
    over_budget = stats.total_billed_usd > budget

    print(f"{args.tasks} tasks x {args.images} image(s), concurrency {args.concurrency}, "
          f"seed {args.seed}, waits {'off' if args.no_waits else 'on'}: {dt:.1f} s, "
          f"{len(runs)} run(s) until {runs[-1][0].status}")
    print("runs: " + "; ".join(f"{r.status} {t:.1f} s (done {r.counters.done}, failed "
                               f"{r.counters.failed}, in doubt {r.counters.in_doubt}, retries "
                               f"{r.counters.retries})" for r, t in runs))
    print(f"faults injected: {dict(sorted(stats.faults_injected.items()))}")
    f, by = stats.faults_injected, stats.requests_by_type
    downloads = by.get("imageDownload", 0)
    posts = stats.http_requests - downloads
    accepted = len(stats.charges | stats.tasks_failed)
    print(f"fault shares: {share(f, REQUEST_FAULTS, posts)} of {posts} POST /v1, "
          f"{share(f, DOWNLOAD_FAULTS, downloads)} of {downloads} image downloads, "
          f"{share(f, TASK_FAULTS, accepted)} of {accepted} tasks accepted")
    print(f"tasks received by type: {dict(sorted(by.items()))}")
    print(f"ledger: lost={a.lost} billed_twice={a.billed_twice} "
          f"unknown_charges={a.unknown_charges} done={a.done}/{args.tasks} "
          f"charged_tasks={a.charged_tasks} images_billed={stats.images_billed} "
          f"billed=${stats.total_billed_usd} of the ${budget} budget")
    print(f"imageInference sends={sends} ({sends / args.tasks:.3f} per task; bound 3 x "
          f"{uuids} UUIDs x {len(runs)} runs = {3 * uuids * len(runs)}), re-sends of an "
          f"accepted UUID refused by the server={stats.duplicate_attempts_total}, "
          f"HTTP requests={stats.http_requests}")
    print(f"canary key: {s.in_files} in {s.files} files ({s.bytes:,} bytes), {s.clipped_in_files}"
          f" of its first 16 characters, {s.in_reports} in {len(REPORT_FORMATS)} report "
          f"formats x 2 environments, {leaked_in_messages} in run messages; "
          f"'Bearer [redacted]' in the files: {s.redacted_quotes}")
    bad = (not a.clean or not complete or a.done != args.tasks or over_budget
           or s.in_files or s.clipped_in_files or s.in_reports or leaked_in_messages)
    if bad:
        print(f"FAILED: run record, outputs and spec kept for inspection in {root}")
        raise SystemExit(1)
    shutil.rmtree(root)


if __name__ == "__main__":
    main()
