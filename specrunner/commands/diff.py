"""`specrunner diff RUN_A RUN_B`: what changed between two runs (each a run folder or a spec).

Variants added, removed and changed (request, output image hashes, status), and cost and
failure deltas per matrix axis; as a table, Markdown or JSON (shape in specrunner/rundiff.py).
Exit codes: 0 ok, 2 no or damaged record, bad arguments.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from specrunner.errors import EXIT_OK


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the options of `diff`."""
    parser.add_argument("run_a", metavar="RUN_A", help="the earlier run (folder or spec)")
    parser.add_argument("run_b", metavar="RUN_B", help="the later run (folder or spec)")
    parser.add_argument("--format", choices=("table", "markdown", "json"), default="table",
                        help="output format (default: table)")
    parser.add_argument("--by", metavar="AXIS,...",
                        help="axes of the per-axis deltas (default: the axes both runs share)")


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Print the comparison; return the exit code."""
    from specrunner import report
    from specrunner.commands.report import locate, parse_by
    from specrunner.report import diff as rundiff

    by = parse_by(args.by)
    sides = []
    for target in (args.run_a, args.run_b):
        run_dir, plan, warnings = locate(target)
        sides.append(report.summarize(report.load_run(run_dir, plan, warnings), []))
    out.write(rundiff.render(rundiff.compare(sides[0], sides[1], by), args.format))
    return EXIT_OK
