"""specrunner's command line: parse argv, call the library, return an exit code.

Each command lives in `specrunner/commands/<name>.py` and exposes `configure(parser)` and
`execute(args, out, err) -> int`; COMMANDS below registers it with what `--help` says about
it (summary, examples, exit codes, environment). `run()` never exits the process, so tests
call it with string streams; `main()` does.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import textwrap
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TextIO

from specrunner import __version__
from specrunner.bulk import paused_gc
from specrunner.errors import EXIT_INTERRUPTED, EXIT_INVALID, SpecError, SpecrunnerError

DESCRIPTION = (
    "Run Runware image-editing campaigns (ideogram:3@3 inpainting) declared as YAML files: "
    "validate a spec, plan the exact requests and their cost, run them under a hard budget "
    "without ever paying twice (against Runware, or the built-in local server with --local), "
    "and report on the results.")
KEY_IN_SPEC = ("RUNWARE_API_KEY", "a spec that contains this key is refused")


@dataclass(frozen=True)
class Command:
    """A CLI command: its module and what its `--help` says."""

    module: str
    summary: str  # one line, also shown in `specrunner --help`
    examples: tuple[tuple[str, str], ...]  # (command line, what it does)
    exit_codes: tuple[tuple[int, str], ...]
    environment: tuple[tuple[str, str], ...] = ()  # (variable, what it is used for)


# Order is the order shown in --help.
COMMANDS: dict[str, Command] = {
    "init": Command(
        "specrunner.commands.init", "write a ready example campaign into a folder",
        (("specrunner init demo", "write the example campaign into demo/"),
         ("specrunner run demo/storefront-local.yaml --local", "then run it, no key needed")),
        ((0, "written (or already there, unchanged)"),
         (2, "DIR holds different files of the same names: nothing written"))),
    "validate": Command(
        "specrunner.commands.validate", "check specs without sending anything",
        (("specrunner validate spec.yaml", "check one spec: schema, files, templates, plan"),
         ("specrunner validate specs/*.yaml --format json", "check several, as JSON")),
        ((0, "every spec is valid"), (2, "some spec is invalid, or bad usage")),
        (KEY_IN_SPEC,)),
    "plan": Command(
        "specrunner.commands.plan", "list the exact requests and their cost",
        (("specrunner plan spec.yaml", "tasks, cost, per-axis breakdown, what is already done"),
         ("specrunner plan spec.yaml --format csv > plan.csv", "every task as CSV"),
         ("specrunner plan spec.yaml --explain bakery-neon-DESIGN",
          "which axis values and include/exclude entries made a variant"),
         ("specrunner plan spec.yaml --max-usd 20", "the plan under another budget")),
        ((0, "plan printed"),
         (2, "invalid spec, over the budget or task cap, unknown variant, damaged record")),
        (KEY_IN_SPEC,)),
    "lock": Command(
        "specrunner.commands.lock", "write or check the lock file beside each spec",
        (("specrunner lock spec.yaml", "write spec.lock: every task, reviewable in a diff"),
         ("specrunner lock --check specs/*.yaml", "in CI: fail when a lock is stale"),
         ("specrunner lock --check --format github spec.yaml",
          "the same, as GitHub workflow annotations")),
        ((0, "every lock written or current"), (1, "a lock is stale (--check)"),
         (2, "invalid spec, or a lock missing, unreadable or not writable")),
        (KEY_IN_SPEC,)),
    "run": Command(
        "specrunner.commands.run", "run a campaign (Runware or --local)",
        (("specrunner run spec.yaml --local", "run on the built-in local server (no key)"),
         ("specrunner run spec.yaml", "run against Runware (RUNWARE_API_KEY set)"),
         ("specrunner run spec.yaml --dry-run", "validate and plan, send nothing")),
        ((0, "every task done"), (1, "some tasks failed, or the API stopped the run"),
         (2, "invalid spec or usage, no key, stale lock (--locked), locked or damaged record"),
         (3, "stopped at the budget (or the tasks to run do not fit it: nothing sent)"),
         (4, "incomplete: tasks in doubt, none failed; run again to finish"),
         (130, "interrupted (Ctrl-C)")),
        (("RUNWARE_API_KEY", "the API key (or --key-file); not needed with --local"),
         ("RUNWARE_BASE_URL", "the API endpoint (or --base-url; default Runware's)"))),
    "report": Command(
        "specrunner.commands.report", "summarise a run: tables, JSON, CSV, HTML",
        (("specrunner report spec.yaml", "the run in the spec's output folder"),
         ("specrunner report out/storefront-local --format markdown --by styleType",
          "a pull-request comment, broken down by one axis"),
         ("specrunner report spec.yaml --format html", "a contact sheet of the results")),
        ((0, "report written"), (2, "no run record, a damaged one, or bad usage")),
        (KEY_IN_SPEC,)),
    "diff": Command(
        "specrunner.commands.diff", "compare two runs",
        (("specrunner diff before/out after/out", "variants added, removed and changed"),
         ("specrunner diff a.yaml b.yaml --format markdown", "the same for two specs' runs")),
        ((0, "comparison printed"), (2, "no run record, a damaged one, or bad usage")),
        (KEY_IN_SPEC,)),
    "merge": Command(
        "specrunner.commands.merge", "join run folders of one campaign (shards) into one",
        (("specrunner merge out/shard-1 out/shard-2 out/shard-3 --out out/merged",
          "one folder, one record, every image: report, diff and run work on it"),
         ("specrunner merge out/shard-* --out out/merged", "again later: adds only what is new")),
        ((0, "merged, or nothing new to merge"),
         (2, "folders of different campaigns, a missing, damaged or busy record, bad usage"))),
    "review": Command(
        "specrunner.commands.review", "approve and reject a run's images in the browser",
        (("specrunner review out/storefront-local", "open the review page for a run folder"),
         ("specrunner review spec.yaml --no-open --port 8800",
          "serve it without opening a browser")),
        ((0, "stopped"), (2, "no run record, an unreadable review file, or bad usage")),
        (KEY_IN_SPEC,)),
    "export": Command(
        "specrunner.commands.export", "copy the approved (or other) images, with a manifest",
        (("specrunner export out/storefront-local picked/", "the approved images and a manifest"),
         ("specrunner export spec.yaml rejects/ --rejected", "the rejected ones instead")),
        ((0, "exported (files already there and identical are left alone)"),
         (2, "a different file is in the way (nothing written), no run record, bad usage")),
        (KEY_IN_SPEC,)),
    "serve": Command(
        "specrunner.commands.serve", "start the local Runware-compatible server",
        (("specrunner serve --port 8765", "serve on 127.0.0.1:8765 (any non-empty key)"),
         ("specrunner serve --fault http_503=0.05 --latency uniform:0.05,0.3",
          "with injected faults and latency")),
        ((0, "stopped"), (2, "bad usage")),
        (("RUNWARE_API_KEY", "the only key the server accepts (or --api-key)"),)),
    "completion": Command(
        "specrunner.commands.completion", "print a shell completion script (bash, zsh, fish)",
        (("specrunner completion bash > ~/.local/share/bash-completion/completions/specrunner",
          "bash (needs the bash-completion package)"),
         ("specrunner completion zsh > ~/.zfunc/_specrunner",
          "zsh (with fpath+=~/.zfunc before compinit in ~/.zshrc)"),
         ("specrunner completion fish > ~/.config/fish/completions/specrunner.fish", "fish")),
        ((0, "script printed"), (2, "unknown shell"))),
}
# Metavars by destination, for the options a command did not name itself, so every
# command says SPEC, DIR, USD, N, FILE, URL the same way.
METAVARS = {"spec": "SPEC", "specs": "SPEC", "out": "DIR", "max_usd": "USD", "max_tasks": "N",
            "concurrency": "N", "limit": "N", "key_file": "FILE", "faults": "FILE",
            "base_url": "URL", "jitter_seed": "N", "seed": "N", "port": "PORT",
            "host": "HOST", "api_key": "KEY", "capacity": "N", "hang_s": "S", "ttl": "S",
            "latency": "DIST", "processing": "DIST", "log_level": "LEVEL"}
# Commands that make their objects by the hundred thousand (a plan, a record's snapshot, a
# report) and exit soon after: they run with the cyclic GC paused (bulk.paused_gc), which
# would otherwise walk those live objects again and again to free nothing (a third of a
# plan's time). The library never touches the GC: this is the program's choice. `run` pauses
# it only while it plans; `serve` and `review` are long-lived.
SHORT = frozenset({"validate", "plan", "lock", "report", "diff", "merge", "export"})

EXIT_CODES = ((0, "success"), (1, "some tasks failed (run)"),
              (2, "invalid spec or usage, over the budget at plan time, no or damaged record"),
              (3, "the run stopped at the budget"), (130, "interrupted"))


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises instead of exiting, so `run()` controls exit codes, and
    prints --help and --version to the stream `run()` was given (`out`)."""

    out: TextIO | None = None

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgError(f"{self.prog}: {message}")

    def _print_message(self, message: str, file: Any = None) -> None:
        if message:
            (self.out or file or sys.stdout).write(message)


class _ArgError(Exception):
    pass


def _available_commands() -> dict[str, ModuleType]:
    modules = {}
    for name, command in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(command.module)
        except ModuleNotFoundError as exc:
            if exc.name != command.module:
                raise
    return modules


def _section(title: str, rows: tuple[tuple[object, str], ...]) -> str:
    width = max(len(str(a)) for a, _ in rows)
    return f"{title}:\n" + "\n".join(f"  {a!s:{width}}  {b}" for a, b in rows)


def _examples(title: str, rows: tuple[tuple[str, str], ...]) -> str:
    # What it does as a comment above the command, so each line can be copied as it is.
    return f"{title}:\n" + "\n\n".join(f"  # {what}\n  {line}" for line, what in rows)


def epilog(command: Command) -> str:
    """The examples, exit codes and environment variables `--help` shows for a command."""
    return "\n\n".join([
        _examples("examples", command.examples), _section("exit codes", command.exit_codes),
        _section("environment", command.environment) if command.environment
        else "environment:\n  none"])


def _top_epilog() -> str:
    start = (("specrunner init demo", "write an example campaign into demo/"),
             ("specrunner run demo/storefront-local.yaml --local",
              "run it on the built-in local server (no key)"),
             ("specrunner report demo/storefront-local.yaml", "see what it did"))
    env = (("RUNWARE_API_KEY", "the API key (run); never allowed inside a spec"),
           ("RUNWARE_BASE_URL", "the API endpoint (run)"))
    return "\n\n".join([_examples("get started", start), _section("exit codes", EXIT_CODES),
                        _section("environment", env),
                        "`specrunner COMMAND --help` shows a command's options, examples, exit "
                        "codes\nand environment."])


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    """The root parser with every available command, and the command modules by name."""
    modules = _available_commands()
    parser = _Parser(prog="specrunner", description=textwrap.fill(DESCRIPTION, 79),
                     epilog=_top_epilog(),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"specrunner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module in modules.items():
        command = COMMANDS[name]
        p = sub.add_parser(name, help=command.summary, description=command.summary,
                           epilog=epilog(command),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(p)
        for action in p._actions:
            if action.metavar is None and action.dest in METAVARS and (
                    action.nargs != 0 and not action.choices):
                action.metavar = METAVARS[action.dest]
        if getattr(module, "WANTS_ROOT_PARSER", False):
            p.set_defaults(root_parser=parser)
    return parser, modules


def _parsers(parser: argparse.ArgumentParser) -> list[_Parser]:
    out = [parser] if isinstance(parser, _Parser) else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _parsers(sub)
    return out


def run(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the CLI with `argv`, writing to `out`/`err`; return the exit code."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    parser, modules = build_parser()
    for p in _parsers(parser):
        p.out = out
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
        with paused_gc() if args.command in SHORT else contextlib.nullcontext():
            return int(modules[args.command].execute(args, out, err))
    except SpecError as exc:
        # Each diagnostic line already says `file:line:col: error: ...`.
        print(str(exc), file=err)
        return exc.exit_code
    except SpecrunnerError as exc:
        print(f"error: {exc}" + (f" ({exc.hint})" if exc.hint else ""), file=err)
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
