"""`specrunner init [DIR]`: write a ready example campaign into DIR (default: here).

The spec (with a working `$schema` line), its images, the spec JSON Schema and a short
README, taken from the installed package (specrunner/starter.py). Files that already exist
with the same bytes are left alone; a file that differs is never replaced: nothing is
written and the exit code is 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from specrunner.errors import EXIT_OK


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `init`."""
    parser.add_argument("dest", metavar="DIR", nargs="?", default=".",
                        help="folder to write the example into (created if needed; "
                             "default: the current folder)")


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Write the example; list what was written and what to run next."""
    from specrunner import starter

    dest = Path(args.dest)
    written, same = starter.write(dest, args.dest)
    where = "." if args.dest in (".", "./") else args.dest.rstrip("/")
    spec = starter.SPEC if where == "." else f"{where}/{starter.SPEC}"
    if written:
        print(f"wrote {len(written)} file(s) in {where}/: {', '.join(written)}", file=out)
    if same:
        print(f"{len(same)} file(s) already there, unchanged", file=out)
    print("next:", file=out)
    for line in (f"specrunner validate {spec}", f"specrunner run {spec} --local",
                 f"specrunner report {spec} --format html"):
        print(f"  {line}", file=out)
    return EXIT_OK
