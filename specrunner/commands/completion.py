"""`specrunner completion {bash,zsh,fish}`: print a shell completion script.

Generated from the same argparse parser the CLI uses (shtab), so commands, options, choices
and file/folder arguments complete exactly as they parse. Install it where the shell looks
(the examples of `specrunner completion --help`).
"""

from __future__ import annotations

import argparse
from typing import TextIO

from specrunner.errors import EXIT_OK

SHELLS = ("bash", "zsh", "fish")
# Metavars naming a file or a folder to complete: everything else completes options only.
FILE_METAVARS = frozenset({"SPEC", "FILE", "RUN_DIR|SPEC", "RUN_A", "RUN_B", "PATH"})
DIR_METAVARS = frozenset({"DIR"})


def configure(parser: argparse.ArgumentParser) -> None:
    """Declare the arguments of `completion`."""
    parser.add_argument("shell", choices=SHELLS, help="the shell to complete for")


# cli.py hands this command the root parser (as args.root_parser), so the script describes
# exactly the CLI that parses, and no command imports the CLI.
WANTS_ROOT_PARSER = True


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser` (specrunner's root parser) for `shell`."""
    import shtab

    for action in _actions(parser):
        if action.metavar in FILE_METAVARS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.metavar in DIR_METAVARS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    return str(shtab.complete(parser, shell=shell))


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        out.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _actions(sub)
    return out


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Print the script for the chosen shell."""
    out.write(script(args.root_parser, args.shell))
    return EXIT_OK
