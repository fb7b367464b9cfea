"""`specrunner review [RUN_DIR | SPEC] [--spec SPEC] [--port P] [--no-open]`: review in a browser.

Serves the review page of a run folder on 127.0.0.1 (uvicorn, as `serve`), also while the
run is going: the page re-reads the run every 2 s. Decisions are written to the spec's
`<stem>.review.yaml`, beside the spec: the SPEC given, else `--spec`, else the spec the run
record names (its last run's spec path, relative paths from the run folder). Exit codes:
130 stopped with Ctrl-C, 2 no run record, no spec known, unreadable review file, port taken.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from specrunner.errors import EXIT_OK, UsageError

DEFAULT_PORT = 8766


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `review`."""
    parser.add_argument("target", metavar="RUN_DIR|SPEC", nargs="?", default=".",
                        help="a run folder, or the spec whose output.dir holds the run "
                             "(default: the current folder)")
    add_spec_option(parser)
    parser.add_argument("--port", type=int, metavar="P",
                        help=f"port on 127.0.0.1 (default {DEFAULT_PORT}, or any free port "
                             "when that one is taken; 0: any free port)")
    parser.add_argument("--no-open", action="store_true",
                        help="do not open a browser; only print the address")


def add_spec_option(parser: argparse.ArgumentParser) -> None:
    """--spec, shared with `export`."""
    parser.add_argument("--spec", metavar="SPEC",
                        help="the spec whose <stem>.review.yaml holds the decisions "
                             "(default: the spec the run record names)")


def open_review(target: str, spec_option: str | None) -> tuple[Path, Any, list[str], Path]:
    """(run folder, Plan or None, warnings, spec path) for the review file of a run.

    The spec is `--spec`, else as `review.find_spec` says. UsageError when none is known, or when
    the spec's folder (where the review file lives) is gone.
    """
    from specrunner import report
    from specrunner.commands.report import locate
    from specrunner.report.review import find_spec, review_path

    run_dir, plan, warnings = locate(target)
    if spec_option is not None:
        spec = Path(spec_option)
        if not spec.is_file():
            raise UsageError(f"--spec {spec_option}: no such file")
        _, plan, warnings = locate(spec_option)
    else:
        recorded = None
        if plan is None and not Path(target).is_file():
            recorded = report.load_run(run_dir, None).spec_path
        found = find_spec(target, run_dir, plan, recorded)
        if found is None:
            raise UsageError(f"the run record in {run_dir} names no spec; pass --spec SPEC "
                             "(decisions live in <stem>.review.yaml beside it)")
        spec = found
    if not review_path(spec).parent.is_dir():
        raise UsageError(f"the spec's folder {spec.parent} is gone, so its review file cannot "
                         "be written; pass --spec SPEC")
    return run_dir, plan, warnings, spec


def _has_gui() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    # Without a display, webbrowser would start a text browser in this terminal.
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def build_source(target: str, spec_option: str | None) -> Any:
    """The review.Source of a RUN_DIR or SPEC (what the page reads and writes)."""
    from specrunner import report
    from specrunner.report.review import review_path
    from specrunner.review import Source

    run_dir, plan, warnings, spec = open_review(target, spec_option)
    return Source(run_dir, lambda: report.load_run(run_dir, plan, warnings),
                  review_path(spec), spec)


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Serve the review page until Ctrl-C; return the exit code."""
    from specrunner.local.server import bind
    from specrunner.report.review import count, shown
    from specrunner.review import create_app
    from specrunner.review.serve import uvicorn_server

    source = build_source(args.target, args.spec)
    state = source.state()  # a damaged review file or record fails here, before serving
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    try:
        sock = bind("127.0.0.1", DEFAULT_PORT if args.port is None else args.port)
    except UsageError:
        if args.port is not None:
            raise
        sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    c = count(state.images)
    counts = f"{c.approved} approved, {c.rejected} rejected, {c.pending} pending, {c.stale} stale"
    print(f"review of {shown(source.run_dir)}: {url}\n{len(state.images)} images ({counts}); "
          f"decisions go to {shown(source.review_file)}\nCtrl-C stops it.", file=out, flush=True)
    if not args.no_open and _has_gui():
        import webbrowser

        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server = uvicorn_server(create_app(source))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return EXIT_OK

