"""magicPrompt warnings located where the value is set, and the no-seed note."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from specrunner.plan import build_plan
from specrunner.plan.reproducibility import reproducibility_diagnostics
from specrunner.spec import load_spec

IMAGES = Path(__file__).resolve().parents[1] / "specs" / "examples" / "images"

HEAD = """\
version: 1
name: shop
inputs:
  bakery: {seed: images/bakery.jpg, mask: images/bakery-mask.png}
prompts:
  neon: Neon sign reading "MIRELLE" above the door, warm pink tubes
budget:
  max_usd: 5
"""


Found = list[tuple[str, str, int, int, str]]  # severity, JSON path, line, col, message head
Write = Callable[[str], Found]


@pytest.fixture()
def write(tmp_path: Path) -> Write:
    """Write HEAD + a tail as a spec beside the images; its reproducibility diagnostics."""
    (tmp_path / "images").mkdir()
    for name in ("bakery.jpg", "bakery-mask.png"):
        shutil.copyfile(IMAGES / name, tmp_path / "images" / name)

    def _write(tail: str) -> Found:
        path = tmp_path / "spec.yaml"
        path.write_text(HEAD + tail, encoding="utf-8")
        diags = reproducibility_diagnostics(build_plan(load_spec(path)))
        return [(d.severity, d.path, d.loc.line, d.loc.col, d.message.split(":")[0])
                for d in diags if d.loc]
    return _write


NOTE = ("note", "$.model", 1, 1, "ideogram")


def test_defaults(write: Write) -> None:
    assert write("defaults:\n  providerSettings:\n    ideogram: {magicPrompt: \"ON\"}\n"
                 "matrix:\n  styleType: [DESIGN, ANIME]\n") == [
        ("warning", "$.defaults.providerSettings.ideogram.magicPrompt", 11, 29,
         'magicPrompt is "ON" for 2 of 2 tasks'), NOTE]


def test_matrix_values_are_located_at_the_list_item_and_counted_with_repeat(write: Write) -> None:
    assert write('repeat: 2\nmatrix:\n  magicPrompt: ["AUTO", "OFF", "ON"]\n'
                 "  styleType: [DESIGN, ANIME]\n") == [
        ("warning", "$.matrix.magicPrompt[0]", 11, 17, 'magicPrompt is "AUTO" for 4 of 12 tasks'),
        ("warning", "$.matrix.magicPrompt[2]", 11, 32, 'magicPrompt is "ON" for 4 of 12 tasks'),
        NOTE]


def test_include_entries_and_the_unset_default(write: Write) -> None:
    assert write("matrix:\n  styleType: [DESIGN, ANIME]\n  include:\n"
                 '    - {styleType: ANIME, magicPrompt: "ON"}\n'
                 '    - {styleType: REALISTIC, magicPrompt: "OFF"}\n') == [
        # DESIGN sends nothing: Runware's default AUTO (located at the spec's first key)
        ("warning", "$.defaults.providerSettings.ideogram", 1, 1,
         "magicPrompt is not set for 1 of 3 tasks, so Runware's default \"AUTO\" applies"),
        ("warning", "$.matrix.include[0].magicPrompt", 12, 39,
         'magicPrompt is "ON" for 1 of 3 tasks'), NOTE]


def test_variants_and_the_dotted_alias(write: Write) -> None:
    assert write("defaults:\n  providerSettings:\n    ideogram: {magicPrompt: \"OFF\"}\n"
                 "variants:\n  - {id: a}\n  - {id: b, magicPrompt: AUTO}\n"
                 "  - {id: c, providerSettings.ideogram.magicPrompt: \"ON\"}\n") == [
        ("warning", "$.variants[1].magicPrompt", 14, 26, 'magicPrompt is "AUTO" for 1 of 3 tasks'),
        ("warning", "$.variants[2].providerSettings.ideogram.magicPrompt", 15, 52,
         'magicPrompt is "ON" for 1 of 3 tasks'), NOTE]


def test_off_everywhere_leaves_only_the_note(write: Write) -> None:
    assert write("defaults:\n  providerSettings:\n    ideogram: {magicPrompt: \"OFF\"}\n"
                 "matrix:\n  styleType: [DESIGN, ANIME]\n") == [NOTE]
