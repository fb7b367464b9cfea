"""`specrunner run SPEC`: validate, plan, then run the campaign against Runware or --local.

Exit codes: 0 all done, 1 some tasks failed (or the API stopped the run), 2 invalid spec or
usage, 3 stopped by the budget, 130 interrupted. The spec is fully validated and planned
before any network call; the key comes from RUNWARE_API_KEY or --key-file and is only ever
put in the Authorization header.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from specrunner import __version__, runware
from specrunner.errors import (EXIT_BUDGET, EXIT_INTERRUPTED, EXIT_OK, EXIT_TASKS_FAILED,
                               UsageError)

EXIT_FOR = {"complete": EXIT_OK, "failed": EXIT_TASKS_FAILED, "stopped": EXIT_TASKS_FAILED,
            "budget": EXIT_BUDGET, "interrupted": EXIT_INTERRUPTED}


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `run`."""
    parser.add_argument("spec", help="the campaign spec (YAML)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true",
                       help="run against the built-in local server, in-process (no key needed)")
    where.add_argument("--base-url", help="API endpoint (default: $RUNWARE_BASE_URL or Runware's)")
    parser.add_argument("--concurrency", type=int, help="tasks in flight at most")
    parser.add_argument("--max-usd", help="hard budget for this run, overriding the spec's")
    parser.add_argument("--out", help="output folder (default: the spec's output.dir)")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate and plan, show what would run, send nothing")
    parser.add_argument("--key-file", help="read the API key from this file")
    parser.add_argument("--faults", help="fault-injection config for --local (JSON or YAML)")
    parser.add_argument("--progress", choices=["auto", "live", "plain", "none"], default="auto",
                        help="progress display (default: live on a terminal, plain otherwise)")
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                        help="seconds between plain progress lines")
    parser.add_argument("--jitter-seed", type=int, help="seed the backoff jitter (reproducible)")


def _api_key(args: argparse.Namespace) -> str | None:
    if args.key_file:
        try:
            key = Path(args.key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --key-file {args.key_file}: "
                             f"{type(exc).__name__}") from None
        if not key:
            raise UsageError(f"--key-file {args.key_file} is empty")
        return key
    return os.environ.get("RUNWARE_API_KEY") or None


def _git(spec_dir: Path) -> tuple[str | None, int | None]:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=spec_dir, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=spec_dir,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip(), int(bool(dirty.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        return None, None


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from specrunner.plan import build_plan
    from specrunner.spec import load_spec

    spec = load_spec(Path(args.spec))
    if args.concurrency is not None:
        if not 1 <= args.concurrency <= 1024:
            raise UsageError("--concurrency must be between 1 and 1024")
        spec = dataclasses.replace(spec, execution=dataclasses.replace(
            spec.execution, concurrency=args.concurrency))
    if args.max_usd is not None:
        try:
            cap = Decimal(args.max_usd)
        except InvalidOperation:
            raise UsageError(f"--max-usd must be a number, not {args.max_usd!r}") from None
        if not cap.is_finite() or cap <= 0:
            raise UsageError("--max-usd must be a positive number")
        spec = dataclasses.replace(spec, budget=dataclasses.replace(spec.budget, max_usd=cap))
    return spec, build_plan(spec)


def _local_app(faults: Any) -> Any:
    from specrunner import local

    return local.create_app(local.LocalConfig(faults=faults or local.FaultConfig()))


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the campaign; return the exit code."""
    if args.faults and not args.local:
        raise UsageError("--faults only applies to --local")
    key = _api_key(args)
    if not key and not args.local and not args.dry_run:
        raise UsageError("no API key: set RUNWARE_API_KEY or pass --key-file (or use --local)")
    base_url = args.base_url or os.environ.get("RUNWARE_BASE_URL") or runware.API_URL
    if not base_url.startswith(("https://", "http://")):
        raise UsageError(f"--base-url must be an http(s) URL, not {base_url!r}")
    if args.local and not key:
        key = "local"  # the local server wants some key; any will do
    faults = None
    if args.faults:
        from specrunner.local import FaultConfig

        faults = FaultConfig.load(args.faults)  # a bad fault file is a usage error, up front
    spec, plan = _load(args)  # full validation before any network call
    out_dir = Path(args.out).resolve() if args.out else spec.output.dir
    tasks = list(plan.tasks)
    if args.dry_run:
        from specrunner.plan import status as plan_status
        from specrunner.money import money
        from specrunner.report import record_path

        if record_path(out_dir).exists():  # why each task would run: the one definition
            what = plan_status.compare(plan, out_dir).summary()
        else:
            what = f"{len(tasks):,} would run (est. {money(plan.total_cost)})"
        print(f"dry run: {len(tasks):,} tasks planned; {what}; budget "
              f"{money(spec.budget.max_usd)}; nothing sent", file=out)
        return EXIT_OK
    from specrunner.store import open_store

    store = open_store(out_dir)
    try:
        commit, dirty = _git(spec.path.parent)
        run_id = store.begin_run({
            "spec_path": str(spec.path), "spec_text": spec.path.read_text(encoding="utf-8"),
            "spec_sha256": spec.source_sha256, "git_commit": commit, "git_dirty": dirty,
            "plan_json": json.dumps([{"task_key": t.task_key, "variant_id": t.variant_id,
                                      "task_uuid": t.task_uuid, "est_cost": str(t.est_cost)}
                                     for t in tasks]),
            "versions_json": json.dumps({"specrunner": __version__,
                                         "python": platform.python_version(),
                                         "sqlite": sqlite3.sqlite_version}),
            "max_usd": str(spec.budget.max_usd), "status": "running"})
        store.plan_tasks(run_id, tasks)
        outcome = _run(args, spec, tasks, store, run_id, key, base_url, faults, out_dir, err)
        code = EXIT_FOR[outcome.status]
        store.end_run(run_id, outcome.status, code, outcome.counters.spent)
    finally:
        store.close()
    from specrunner.progress import summary_table

    print(summary_table(outcome.counters, spec.budget.max_usd, outcome.status), file=out)
    if outcome.message:
        print(outcome.message, file=err)
    print(f"record: {store.path}", file=out)
    print(f"report: specrunner report {shlex.quote(str(out_dir))}", file=out)
    return code


def _run(args: argparse.Namespace, spec: Any, tasks: list, store: Any, run_id: int,
         key: str | None, base_url: str, faults: Any, out_dir: Path, err: TextIO) -> Any:
    import anyio
    import httpx

    from specrunner.client import RunwareClient
    from specrunner.executor import Executor
    from specrunner.progress import Progress

    mode = args.progress
    tty = mode == "live" or (mode == "auto" and err.isatty())
    progress = Progress(err, spec.budget.max_usd, time.monotonic, tty=tty,
                        every_s=args.progress_every)

    async def main() -> Any:
        if args.local:
            transport: httpx.AsyncBaseTransport = httpx.ASGITransport(app=_local_app(faults))
            url = "http://local.specrunner/v1"
        else:
            transport = httpx.AsyncHTTPTransport(retries=0)
            url = base_url
        conc = spec.execution.concurrency
        limits = httpx.Limits(max_connections=conc + 8, max_keepalive_connections=conc + 8)
        async with httpx.AsyncClient(transport=transport, limits=limits) as http:
            client = RunwareClient(http, url, key)
            rng = random.Random(args.jitter_seed) if args.jitter_seed is not None else None
            ex = Executor(tasks, store, client, spec.execution, spec.budget.max_usd, out_dir,
                          run_id, rng=rng)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_signals, ex, progress)
                if mode != "none":
                    tg.start_soon(_ticker, ex, progress)
                outcome = await ex.run()
                tg.cancel_scope.cancel()
            if mode != "none":
                progress.tick(ex.c, force=True)
            progress.close()
            return outcome

    return anyio.run(main)


async def _ticker(ex: Any, progress: Any) -> None:
    import anyio

    while True:
        progress.tick(ex.c)
        await anyio.sleep(0.5 if progress.tty else 1.0)


async def _signals(ex: Any, progress: Any) -> None:
    import anyio

    if sys.platform == "win32":
        return
    with anyio.open_signal_receiver(signal.SIGINT) as received:
        count = 0
        async for _sig in received:
            count += 1
            if count == 1:
                ex.drain()
                progress.message(f"interrupted: no new tasks; waiting for {ex.c.in_flight} in "
                                 "flight (Ctrl-C again to cancel them)")
            else:
                progress.message(f"cancelling {ex.c.in_flight} tasks in flight; they stay in "
                                 "doubt and the next run reconciles them")
                ex.cancel()
