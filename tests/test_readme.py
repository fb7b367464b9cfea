"""README.md tells the truth: the example YAML it shows is the example file, every
specrunner command in its code blocks parses with the real CLI, and the validate and plan
outputs it shows are what those commands print."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from fixtures.specfiles import run_cli

from specrunner import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def blocks(lang: str | None = None) -> list[str]:
    return [body for kind, body in BLOCK.findall(README) if lang is None or kind == lang]


def block_after(marker: str) -> str:
    """The first fenced block after `marker`."""
    start = README.index(marker)
    m = BLOCK.search(README, start)
    assert m is not None, marker
    return m.group(2)


def block_containing(marker: str) -> str:
    """The fenced block whose text holds `marker`."""
    (body,) = [b for _, b in BLOCK.findall(README) if marker in b]
    return body


def commands() -> list[str]:
    """Every specrunner command line in the README's code blocks: shell blocks line by line
    (`&&`, `;` and `|` split), other blocks where a line starts with `$ `."""
    out = []
    for kind, body in BLOCK.findall(README):
        for line in body.splitlines():
            if kind != "sh":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            for part in re.split(r"&&|;|\|", line):
                words = shlex.split(part, comments=True)
                while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
                    words = words[1:]
                if words and words[0] == "specrunner":
                    out.append(shlex.join(words[:words.index(">")] if ">" in words else words))
    return list(dict.fromkeys(out))


def test_the_example_yaml_shown_is_the_file() -> None:
    shown = block_after("The example below is [`specs/examples/storefront-local.yaml`]")
    assert shown == (ROOT / "specs" / "examples" / "storefront-local.yaml").read_text()


def test_the_readme_shows_commands_of_every_kind() -> None:
    names = {shlex.split(c)[1] for c in commands()}
    assert {"init", "run", "validate", "plan", "report", "serve", "completion"} <= names


@pytest.mark.parametrize("line", commands())
def test_every_command_shown_parses(line: str) -> None:
    parser, _ = cli.build_parser()
    args = parser.parse_args(shlex.split(line)[1:])
    assert args.command in cli.COMMANDS


@pytest.fixture()
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    assert run_cli(["init", "demo"])[0] == 0
    return tmp_path / "demo"


def test_the_validate_example_is_what_validate_prints(demo: Path) -> None:
    (demo / "bad.yaml").write_text(block_after("A broken copy of the example"))
    shown = block_containing("$ specrunner validate demo/bad.yaml").splitlines()
    code, out, _ = run_cli(shlex.split(shown[0][2:])[1:])
    assert code == 2
    assert out.splitlines() == shown[1:]


def test_the_example_validates_as_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    shown = block_containing("$ specrunner validate specs/examples/").splitlines()
    code, out, _ = run_cli(shlex.split(shown[0][2:])[1:])
    assert code == 0
    assert out.splitlines() == shown[1:]


def test_the_plan_example_is_what_plan_prints(demo: Path) -> None:
    spec = demo / "storefront-local.yaml"
    assert run_cli(["run", str(spec.relative_to(demo.parent)), "--local", "--progress",
                    "none"])[0] == 0
    spec.write_text(spec.read_text().replace("warm pink and teal", "warm pink and blue"))
    shown = block_containing("$ specrunner plan demo/storefront-local.yaml").splitlines()
    code, out, _ = run_cli(shlex.split(shown[0][2:])[1:])  # warnings go to stderr
    assert code == 0
    got = out.splitlines()
    assert got[0] == shown[1]
    assert got[1].split(" (record: ")[0] == shown[2].split(" (record: ")[0]
    assert got[2:8] == shown[3:9] and shown[9] == "..."


def test_the_quick_start_run_prints_what_the_readme_shows(demo: Path) -> None:
    """Outside a git repository, as after a plain `pip install`: the summary, the provenance
    line and the paths relative to where the command was typed."""
    shown = block_containing("$ specrunner run demo/storefront-local.yaml --local").splitlines()
    code, out, _ = run_cli([*shlex.split(shown[0][2:])[1:], "--progress", "none"])
    assert code == 0
    assert out.splitlines() == shown[1:]
    again = run_cli([*shlex.split(shown[0][2:])[1:], "--progress", "none"])[1]
    assert "requests sent (imageInference)           0" in again  # a second run sends nothing
