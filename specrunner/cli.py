"""Command line: argv -> library calls -> exit code.

Each subcommand lives in `specrunner/commands/<name>.py` and exposes
`configure(parser)` and `execute(args, out, err) -> int`. `run()` never exits the
process, so tests call it with string streams; `main()` does.

Exit codes: 0 ok, 1 some tasks failed, 2 invalid spec or usage, 3 stopped by the
budget, 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TextIO

from specrunner import __version__
from specrunner.errors import EXIT_INTERRUPTED, EXIT_INVALID, SpecrunnerError

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("specrunner.commands.validate", "check specs without sending anything"),
    "plan": ("specrunner.commands.plan", "list the exact requests and their cost"),
    "lock": ("specrunner.commands.lock", "write or check the lock file beside each spec"),
    "run": ("specrunner.commands.run", "run a campaign (Runware or --local)"),
    "report": ("specrunner.commands.report", "summarise a run: tables, JSON, CSV, HTML"),
    "diff": ("specrunner.commands.diff", "compare two runs"),
    "merge": ("specrunner.commands.merge", "join run folders of one campaign (shards) into one"),
    "serve": ("specrunner.commands.serve", "start the local Runware-compatible server"),
}


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so `run()` controls exit codes."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(f"{self.prog}: {message}")


class _ArgError(Exception):
    pass


def _available_commands() -> dict[str, object]:
    modules = {}
    for name, (modname, _help) in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name != modname:
                raise
    return modules


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, object]]:
    parser = _Parser(prog="specrunner", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"specrunner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules = _available_commands()
    for name, module in modules.items():
        help_text = COMMANDS[name][1]
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.configure(p)  # type: ignore[attr-defined]
    return parser, modules


def run(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the CLI with `argv`, writing to `out`/`err`; return the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser, modules = build_parser()
    try:
        args = parser.parse_args(argv)
    except _ArgError as exc:
        print(f"error: {exc}", file=err)
        return EXIT_INVALID
    except SystemExit as exc:  # --help / --version
        return int(exc.code or 0)
    if not args.command:
        parser.print_help(out)
        return EXIT_INVALID
    try:
        return int(modules[args.command].execute(args, out, err))  # type: ignore[attr-defined]
    except SpecrunnerError as exc:
        print(f"error: {exc}", file=err)
        return exc.exit_code


def main() -> int:
    """Console-script entry point: run the CLI on sys.argv and return the exit code."""
    try:
        return run(sys.argv[1:])
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `specrunner plan ... | head`: the reader left; not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
