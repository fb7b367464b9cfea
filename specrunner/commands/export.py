"""`specrunner export [RUN_DIR | SPEC] DEST [--approved] [--rejected] [--pending] [--stale]`.

Copies the run's result images in the chosen review states (default: approved) to DEST,
keeping their paths in the run folder, with DEST/manifest.csv (report/export.py). The review
file is found as `review` finds it (`--spec` overrides). Refuses to overwrite a different
file (exit 2, nothing written); files already there with the same bytes are kept, so running
it again is harmless. Exit codes: 0 exported, 2 conflict, no record, no spec, bad file.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from specrunner.commands.review import add_spec_option, open_review
from specrunner.errors import EXIT_OK

STATES = ("approved", "rejected", "pending", "stale")


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `export`."""
    parser.add_argument("target", metavar="RUN_DIR|SPEC",
                        help="a run folder, or the spec whose output.dir holds the run")
    parser.add_argument("dest", metavar="DIR", help="the folder to copy the images into")
    for state in STATES:
        parser.add_argument(f"--{state}", action="store_true",
                            help=f"export the {state} images"
                                 + (" (the default when no state is chosen)"
                                    if state == "approved" else "")
                                 + (": decided on other bytes, undecided now"
                                    if state == "stale" else ""))
    add_spec_option(parser)


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Export the chosen images; return the exit code."""
    from specrunner import report
    from specrunner.report.export import export
    from specrunner.report.review import load, review_path, shown

    states = [s for s in STATES if getattr(args, s)] or ["approved"]
    run_dir, plan, warnings, spec = open_review(args.target, args.spec)
    data = report.load_run(run_dir, plan, warnings)
    file = review_path(spec)
    done = export(data, run_dir, load(file), Path(args.dest), states)
    print(f"exported {done.selected} {'/'.join(states)} image(s) to {args.dest} "
          f"({done.copied} copied, {done.unchanged} already there); manifest: {done.manifest}; "
          f"decisions: {shown(file)}", file=out)
    return EXIT_OK
