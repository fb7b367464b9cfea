"""`specrunner run SPEC`: validate, plan, then run the campaign against Runware or --local.

Exit codes: 0 all done, 1 some tasks failed (or the API stopped the run), 2 invalid spec or
usage, 3 stopped by the budget, 130 interrupted. The spec is fully validated and planned
before any network call; the key comes from RUNWARE_API_KEY or --key-file and is only ever
put in the Authorization header.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO

from specrunner.bulk import paused_gc
from specrunner.errors import EXIT_OK, UsageError


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
    parser.add_argument("--locked", action="store_true",
                        help="refuse a missing or stale lock file (exit 2) before any request")
    parser.add_argument("--faults", help="fault-injection config for --local (JSON or YAML)")
    parser.add_argument("--progress", choices=["auto", "live", "plain", "none"], default="auto",
                        help="progress display (default: live on a terminal, plain otherwise)")
    parser.add_argument("--progress-every", type=float, default=10.0, metavar="S",
                        help="seconds between plain progress lines")
    parser.add_argument("--jitter-seed", type=int, help="seed the backoff jitter (reproducible)")
    parser.add_argument("--shard", metavar="K/N",
                        help="run only shard K of N (1-based; each task's shard follows from "
                             "its task key), under its share of the budget unless --max-usd; "
                             "give each shard its own --out and join them with `merge`")


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


def _max_usd(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        cap = Decimal(text)
    except InvalidOperation:
        raise UsageError(f"--max-usd must be a number, not {text!r}") from None
    if not cap.is_finite() or cap <= 0:
        raise UsageError("--max-usd must be a positive number")
    return cap


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run the campaign; return the exit code."""
    from specrunner.plan import build_plan
    from specrunner.plan.shard import Shard, describe, shard_plan
    from specrunner.run import Runner
    from specrunner.spec import load_spec

    shard = None if args.shard is None else Shard.parse(args.shard)
    if args.faults and not args.local:
        raise UsageError("--faults only applies to --local")
    key = _api_key(args)
    if not key and not args.local and not args.dry_run:
        raise UsageError("no API key: set RUNWARE_API_KEY or pass --key-file (or use --local)")
    base_url = args.base_url or os.environ.get("RUNWARE_BASE_URL") or None
    if base_url is not None and not args.local:
        from specrunner.run import check_base_url

        check_base_url(base_url)  # https, or http to this machine; no credentials in it
    faults = None
    if args.faults:
        from specrunner.local import FaultConfig

        faults = FaultConfig.load(args.faults)  # a bad fault file is a usage error, up front
    cap = _max_usd(args.max_usd)
    if args.concurrency is not None and not 1 <= args.concurrency <= 1024:
        raise UsageError("--concurrency must be between 1 and 1024")
    # The same secret scan as validate and plan: a key written in the spec is refused.
    with paused_gc():  # (see cli.SHORT: planning makes objects by the hundred thousand)
        spec = load_spec(Path(args.spec), secrets=[key or ""]).with_limits(
            max_usd=cap, concurrency=args.concurrency)
        if shard is not None and cap is not None:
            # --max-usd is this shard's budget (shard_plan checks it), not the whole campaign's
            spec = spec.with_limits(max_usd=Decimal("Infinity"))
        plan = build_plan(spec)  # full validation before any network call
    if args.locked:
        from specrunner.plan.lock import check_lock

        status = check_lock(plan, args.spec)
        if not status.ok:  # missing, unreadable or stale: the lines `lock --check` prints
            raise UsageError(status.message())
    part = plan if shard is None else shard_plan(plan, shard, cap)
    if shard is not None:
        print(describe(plan, part, shard, cap is not None), file=err)
    if args.dry_run:
        return _dry_run(part, args, out)
    runner = Runner(plan, out_dir=args.out, api_key=key, base_url=base_url, local=args.local,
                    faults=faults, jitter_seed=args.jitter_seed,
                    shard=None if shard is None else str(shard),
                    max_usd=cap if shard is not None else None)
    result = _run(runner, args, err)
    from specrunner.run.progress import summary_table

    print(summary_table(result.counters, result.max_usd, result.status), file=out)
    if result.message:
        print(result.message, file=err)
    if result.provenance is not None:
        where = result.provenance
        print(f"provenance: {where.short()}", file=out)
        if where.dirty:
            print("note: this run was made from a dirty tree: the commit alone does not "
                  "reproduce it", file=err)
    print(f"record: {_shown(result.record)}", file=out)
    print(f"report: specrunner report {shlex.quote(_shown(result.out_dir))}", file=out)
    return result.exit_code


def _shown(path: Path) -> str:
    """A path as the user would type it from here: relative below the current folder."""
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)
    return str(path) if rel.startswith("..") else rel


def _dry_run(plan: Any, args: argparse.Namespace, out: TextIO) -> int:
    from specrunner.money import money
    from specrunner.plan import status as plan_status
    from specrunner.record import record_path

    out_dir = Path(args.out).resolve() if args.out else plan.spec.output.dir
    if record_path(out_dir).exists():  # why each task would run: the one definition
        what = plan_status.compare(plan, out_dir).summary()
    else:
        what = f"{len(plan.tasks):,} would run (est. {money(plan.total_cost)})"
    print(f"dry run: {len(plan.tasks):,} tasks planned; {what}; budget "
          f"{money(plan.spec.budget.max_usd)}; nothing sent", file=out)
    return EXIT_OK


def _run(runner: Any, args: argparse.Namespace, err: TextIO) -> Any:
    import anyio

    from specrunner.run.progress import Progress

    mode = args.progress
    tty = mode == "live" or (mode == "auto" and err.isatty())
    progress = Progress(err, runner.spec.budget.max_usd, time.monotonic, tty=tty,
                        every_s=args.progress_every)

    async def main() -> Any:
        failed: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_signals, runner, progress)
            if mode != "none":
                tg.start_soon(_ticker, runner, progress)
            try:
                result = await runner.run()
            except Exception as exc:  # raised here, outside the group: one clean error
                failed = exc
            tg.cancel_scope.cancel()
        if failed is not None:
            progress.close()
            raise failed
        if mode != "none":
            progress.tick(runner.counters, force=True)
        progress.close()
        return result

    return anyio.run(main)


async def _ticker(runner: Any, progress: Any) -> None:
    import anyio

    while True:
        progress.tick(runner.counters)
        await anyio.sleep(0.5 if progress.tty else 1.0)


async def _signals(runner: Any, progress: Any) -> None:
    import anyio

    if sys.platform == "win32":
        return
    with anyio.open_signal_receiver(signal.SIGINT) as received:
        count = 0
        async for _sig in received:
            count += 1
            if count == 1:
                runner.drain()
                progress.message(f"interrupted: no new tasks; waiting for "
                                 f"{runner.counters.in_flight} in flight (Ctrl-C again to "
                                 "cancel them)")
            else:
                progress.message(f"cancelling {runner.counters.in_flight} tasks in flight; they "
                                 "stay in doubt and the next run reconciles them")
                runner.cancel()
