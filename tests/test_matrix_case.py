"""include/exclude values select combinations as GitHub's `==` compares them (MATRIX.md):
text case-insensitively, for enum-valued request fields and input/prompt names alike; the
value sent is always the one the axis declares. A value that is sent as written (a variant,
a key that is no axis, an include entry that makes a new combination) must be valid."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.specfiles import write_spec

from specrunner.errors import SpecError
from specrunner.plan import build_plan
from specrunner.plan.matrix import expand
from specrunner.spec import load_spec

SPEC = """\
version: 1
name: case
inputs:
  bakery: {seed: seed.png, mask: mask.png}
  diner: {seed: seed.jpg, mask: mask.png}
prompts:
  sign: "A sign reading MIRELLE"
matrix:
  input: [bakery, diner]
  styleType: [DESIGN, REALISTIC]
{extra}budget: {max_usd: 10}
"""


def plan_of(tmp_path: Path, extra: str) -> list[tuple[str, str, str | None]]:
    spec = load_spec(write_spec(tmp_path, SPEC.replace("{extra}", extra)))
    return [(t.input_name, t.request["providerSettings"]["ideogram"]["styleType"],
             t.request["providerSettings"]["ideogram"].get("magicPrompt"))
            for t in build_plan(spec).tasks]


def errors_of(tmp_path: Path, extra: str) -> list[tuple[str, str, str | None]]:
    with pytest.raises(SpecError) as info:
        build_plan(load_spec(write_spec(tmp_path, SPEC.replace("{extra}", extra))))
    return [(d.path, d.message, d.hint) for d in info.value.diagnostics]


def test_the_github_vector_matches_regardless_of_case() -> None:
    axes = [("fruit", ["apple", "pear"]), ("animal", ["cat", "dog"])]
    exp = expand(axes, [{"fruit": "APPLE", "shape": "circle"}], [{"animal": "DOG"}])
    assert [dict(c.values) for c in exp.combinations] == [
        {"fruit": "apple", "animal": "cat", "shape": "circle"}, {"fruit": "pear", "animal": "cat"}]


def test_exclude_an_enum_value_in_another_case(tmp_path: Path) -> None:
    assert plan_of(tmp_path, "  exclude: [{styleType: realistic}]\n") == [
        ("bakery", "DESIGN", None), ("diner", "DESIGN", None)]


def test_exclude_an_input_name_in_another_case(tmp_path: Path) -> None:
    assert plan_of(tmp_path, "  exclude: [{input: BAKERY, styleType: Design}]\n") == [
        ("bakery", "REALISTIC", None), ("diner", "DESIGN", None), ("diner", "REALISTIC", None)]


def test_include_joins_in_another_case_and_the_axis_value_is_sent(tmp_path: Path) -> None:
    extra = ('  include:\n    - {styleType: design, magicPrompt: "OFF"}\n'
             '    - {input: DINER, magicPrompt: "ON"}\n')
    assert plan_of(tmp_path, extra) == [
        ("bakery", "DESIGN", "OFF"), ("bakery", "REALISTIC", None),
        ("diner", "DESIGN", "ON"), ("diner", "REALISTIC", "ON")]


def test_an_include_that_makes_a_new_combination_sends_its_value_as_written(
        tmp_path: Path) -> None:
    (error,) = errors_of(tmp_path, "  include: [{styleType: anime, input: bakery}]\n")
    assert error[0] == "$.matrix.include[0].styleType"
    assert "'anime' is not one of" in error[1]
    assert error[2] == ("this include entry matches no combination of the axes, so it makes a "
                        "new one and its values are sent as written")


@pytest.mark.parametrize("extra, path, message", [
    # a misspelling is still one, in any case
    ("  exclude: [{styleType: realistc}]\n", "$.matrix.exclude[0].styleType",
     "`realistc` is not one of"),
    ("  exclude: [{input: bakry}]\n", "$.matrix.exclude[0].input", "unknown input `bakry`"),
    # a key that is no axis is added to combinations, so sent: it must be valid as written
    ("  include: [{magicPrompt: auto}]\n", "$.matrix.include[0].magicPrompt",
     "`auto` is not one of: AUTO, ON, OFF"),
])
def test_values_that_match_nothing_or_are_sent_stay_errors(tmp_path: Path, extra: str,
                                                           path: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, SPEC.replace("{extra}", extra)))
    (d,) = info.value.diagnostics
    assert d.path == path and message in d.message, d


def test_a_variant_value_is_sent_as_written(tmp_path: Path) -> None:
    text = SPEC.split("matrix:")[0] + "variants:\n  - {input: bakery, styleType: design}\n" \
        "budget: {max_usd: 10}\n"
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, text))
    (d,) = info.value.diagnostics
    assert (d.path, d.hint) == ("$.variants[0].styleType", "did you mean `DESIGN`?")
