"""The CLI documents itself: every command has help text, examples, exit codes and the
environment it reads; the examples parse; metavars say the same thing the same way; shell
completion scripts generate, are valid for their shell, and complete (sqlite-utils' test_docs
idea)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures.specfiles import run_cli

from specrunner import cli

NAMES = list(cli.COMMANDS)


def help_of(*argv: str) -> str:
    code, out, err = run_cli([*argv, "--help"])
    assert (code, err) == (0, "")
    return out


def test_top_level_help_says_what_specrunner_is() -> None:
    text = help_of()
    assert "Run Runware image-editing campaigns" in text
    assert "argv" not in text and "library calls" not in text
    for name in NAMES:
        assert re.search(rf"^    {name}\b", text, re.M), name  # listed with its summary
    assert "get started:\n  # write an example campaign into demo/\n  specrunner init demo" in text
    assert "exit codes:" in text and "RUNWARE_API_KEY" in text


@pytest.mark.parametrize("name", NAMES)
def test_every_command_has_help_examples_exit_codes_and_environment(name: str) -> None:
    command = cli.COMMANDS[name]
    text = help_of(name)
    assert command.summary and command.summary in text
    assert command.examples and "\nexamples:\n  # " in text
    for line, what in command.examples:
        assert f"  # {what}\n  {line}\n" in text
    assert "\nexit codes:\n  0  " in text
    for code, meaning in command.exit_codes:
        assert re.search(rf"^  {code}\s+{re.escape(meaning)}$", text, re.M), (code, meaning)
    assert "\nenvironment:\n" in text
    for variable, _ in command.environment:
        assert variable in text
    for action in cli.build_parser()[0]._subparsers._group_actions[0].choices[name]._actions:
        assert action.help, (name, action.dest)  # every option says what it does


def test_commands_that_read_the_key_or_the_url_say_so() -> None:
    env = {name: {v for v, _ in c.environment} for name, c in cli.COMMANDS.items()}
    assert env["run"] == {"RUNWARE_API_KEY", "RUNWARE_BASE_URL"}
    assert env["serve"] == {"RUNWARE_API_KEY"}
    for name in ("validate", "plan", "report", "diff"):
        assert env[name] == {"RUNWARE_API_KEY"}, name
    assert env["init"] == env["completion"] == set()


@pytest.mark.parametrize("name", NAMES)
def test_every_example_parses(name: str) -> None:
    parser, _ = cli.build_parser()
    for line, _ in cli.COMMANDS[name].examples:
        words = shlex.split(line)
        if ">" in words:
            words = words[:words.index(">")]
        while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
            words = words[1:]
        assert words[0] == "specrunner", line
        args = parser.parse_args(words[1:])
        assert args.command in NAMES, line


def test_metavars_are_consistent() -> None:
    parser, _ = cli.build_parser()
    seen: dict[str, set[str]] = {}
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        for action in sub._actions:
            if action.option_strings == ["-h", "--help"]:
                continue
            metavar = action.metavar or ("" if action.nargs == 0 else None)
            if action.choices:
                continue  # shown as {a,b,c}
            assert metavar is not None, (name, action.dest)
            assert metavar == metavar.upper(), (name, action.dest, metavar)
            seen.setdefault(action.dest, set()).add(metavar)
    assert seen["spec"] == {"SPEC"} and seen["specs"] == {"SPEC"}
    assert seen["max_usd"] == {"USD"} and seen["max_tasks"] == {"N"}
    assert seen["faults"] == {"FILE"} and seen["key_file"] == {"FILE"}
    assert seen["dest"] == {"DIR"}


# --- completion ------------------------------------------------------------------------

@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_generate_and_are_valid(shell: str, tmp_path: Path) -> None:
    code, script, err = run_cli(["completion", shell])
    assert (code, err) == (0, "")
    for name in NAMES:
        assert name in script
    path = tmp_path / f"specrunner.{shell}"
    path.write_text(script)
    check = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}
    if shutil.which(shell) is None:
        pytest.skip(f"{shell} is not installed (.ci/run installs it)")
    proc = subprocess.run([*check[shell], str(path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_an_unknown_shell_is_a_usage_error() -> None:
    code, _, err = run_cli(["completion", "tcsh"])
    assert code == 2 and "invalid choice: 'tcsh'" in err


DRIVE = r"""
source "$1"; shift
cd "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMP_LINE="${COMP_WORDS[*]}"; COMP_POINT=${#COMP_LINE}; COMPREPLY=()
_shtab_specrunner specrunner "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}" | sort
"""


@pytest.mark.parametrize("words, expected", [
    (["specrunner", "pl"], ["plan"]),
    (["specrunner", ""], sorted(NAMES)),
    (["specrunner", "plan", "--fo"], ["--format"]),
    (["specrunner", "plan", "--format", ""], ["csv", "github", "json", "markdown", "table"]),
    (["specrunner", "validate", "s"], ["spec.yaml", "specs"]),  # files and folders
    (["specrunner", "init", ""], ["specs"]),  # folders only
    (["specrunner", "completion", ""], ["bash", "fish", "zsh"]),
])
def test_bash_completes_like_a_tab_press(tmp_path: Path, words: list[str],
                                         expected: list[str]) -> None:
    if shutil.which("bash") is None:
        pytest.skip("bash is not installed")
    script = tmp_path / "specrunner.bash"
    script.write_text(run_cli(["completion", "bash"])[1])
    folder = tmp_path / "here"
    (folder / "specs").mkdir(parents=True)
    (folder / "spec.yaml").write_text("version: 1\n")
    proc = subprocess.run(["bash", "-c", DRIVE, "drive", str(script), str(folder), *words],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == expected
