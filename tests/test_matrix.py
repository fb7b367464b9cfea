"""Matrix semantics (GitHub Actions, MATRIX.md) and task identity properties."""

from __future__ import annotations

import itertools
import math
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_plan import make_spec, with_matrix

from specrunner import runware
from specrunner.plan import build_plan, matrix
from specrunner.plan.matrix import Combination, MatrixTooLarge, expand, github_equals
from specrunner.spec.types import Matrix

FRUIT_AXES = [("fruit", ["apple", "pear"]), ("animal", ["cat", "dog"])]
FRUIT_INCLUDE = [{"color": "green"}, {"color": "pink", "animal": "cat"},
                 {"fruit": "apple", "shape": "circle"}, {"fruit": "banana"},
                 {"fruit": "banana", "animal": "cat"}]


def typed(values: Any) -> list[tuple[str, type, Any]]:
    """Items with their types, so 1, 1.0 and True are told apart."""
    return [(k, type(v), v) for k, v in values.items()]


def test_github_documentation_vector() -> None:
    got = [list(c.values.items()) for c in expand(FRUIT_AXES, FRUIT_INCLUDE).combinations]
    assert got == [
        [("fruit", "apple"), ("animal", "cat"), ("color", "pink"), ("shape", "circle")],
        [("fruit", "apple"), ("animal", "dog"), ("color", "green"), ("shape", "circle")],
        [("fruit", "pear"), ("animal", "cat"), ("color", "pink")],
        [("fruit", "pear"), ("animal", "dog"), ("color", "green")],
        [("fruit", "banana")],
        [("fruit", "banana"), ("animal", "cat")],
    ]


def test_github_vector_provenance() -> None:
    combos = expand(FRUIT_AXES, FRUIT_INCLUDE).combinations
    assert [c.product_index for c in combos] == [0, 1, 2, 3, None, None]
    assert [c.created_by for c in combos] == [None, None, None, None, 3, 4]
    assert [c.touched_by for c in combos] == [(0, 1, 2), (0, 2), (0, 1), (0,), (), ()]


def test_github_exclude_example() -> None:
    axes = [("os", ["macos", "windows"]), ("version", [12, 14, 16]),
            ("environment", ["staging", "production"])]
    exclude = [{"os": "macos", "version": 12, "environment": "production"},
               {"os": "windows", "version": 16}]
    exp = expand(axes, exclude=exclude)
    assert len(exp.combinations) == 9
    assert exp.excluded == ((1, 0), (10, 1), (11, 1))
    assert exp.combination_at(10) == {"os": "windows", "version": 16,
                                      "environment": "staging"}
    kept = [tuple(c.values.values()) for c in exp.combinations]
    assert ("macos", 12, "production") not in kept and ("macos", 12, "staging") in kept


def test_exclude_applies_before_include() -> None:
    exp = expand([("a", [1, 2])], include=[{"a": 2, "x": "y"}], exclude=[{"a": 2}])
    # the include cannot join the excluded combination, so it becomes a new one
    assert [dict(c.values) for c in exp.combinations] == [{"a": 1}, {"a": 2, "x": "y"}]
    assert exp.combinations[1].created_by == 0


@pytest.mark.parametrize("a,b,equal", [
    (1, "1", True), (12, "12.0", True), (True, 1, True), (False, 0, True), (True, "1", True),
    ("true", True, False), ("DESIGN", "design", True), ("a", "b", False), (1, 1.0, True),
    ("", 0, True), ("abc", 0, False), ("nan", math.nan, False), (math.nan, math.nan, False),
    ("1_000", 1000, False), ("0x10", 16, True), (None, 0, True), (None, None, True),
])
def test_github_equality(a: Any, b: Any, equal: bool) -> None:
    assert github_equals(a, b) is equal
    assert github_equals(b, a) is equal


def test_product_cap_fails_before_materialising() -> None:
    axes = [(f"k{i}", list(range(100))) for i in range(10)]  # 10**20 combinations
    with pytest.raises(MatrixTooLarge) as exc:
        expand(axes, max_product=1_000_000)
    assert (exc.value.what, exc.value.size, exc.value.limit) == ("product", 10**20, 1_000_000)


def test_combination_cap_counts_exactly() -> None:
    axes = [("a", list(range(10))), ("b", list(range(10)))]
    with pytest.raises(MatrixTooLarge) as exc:
        expand(axes, include=[{"a": 99}], exclude=[{"a": 0}], max_combinations=90)
    assert (exc.value.what, exc.value.size) == ("combinations", 91)
    assert len(expand(axes, include=[{"a": 99}], exclude=[{"a": 0}],
                      max_combinations=91).combinations) == 91


def test_a_large_matrix_over_the_cap_is_refused_without_walking_the_product(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 10**6 combinations and 50 includes: walking them took 23 s and 300 MB to say no.
    walked = []

    class CountingItertools:
        @staticmethod
        def product(*ranges: Any) -> Any:
            for idx in itertools.product(*ranges):
                walked.append(1)
                yield idx

    monkeypatch.setattr(matrix, "itertools", CountingItertools)
    axes = [(f"v{i}", [f"x{k}" for k in range(10)]) for i in range(6)]
    include = [{f"v{j % 6}": f"x{j % 10}", "magicPrompt": "ON"} for j in range(50)]
    with pytest.raises(MatrixTooLarge) as exc:
        expand(axes, include, [{"v0": "x0", "v1": "x1"}], max_product=10**6,
               max_combinations=10_000)
    assert (exc.value.size, exc.value.at_least) == (10**6 - 10**4, False)
    assert len(walked) < 1_000  # the 100-point projection onto v0, v1, and the includes


# --- an independent reference, written from MATRIX.md's words -----------------------------

def reference(axes: list, include: list, exclude: list) -> list[dict]:
    """Brute force: recursive product, filter, then include against an 'original' flag."""
    def product(rest: list) -> list[dict]:
        if not rest:
            return [{}]
        (key, values), tail = rest[0], rest[1:]
        return [{key: v, **more} for v in values for more in product(tail)]

    keys = [k for k, _ in axes]
    combos = product(axes) if axes else []
    combos = [c for c in combos
              if not any(all(k in c and github_equals(c[k], v) for k, v in e.items())
                         for e in exclude)]
    table = [[c, True] for c in combos]
    for entry in include:
        joined = False
        for row in table:
            combo, original = row
            if original and all(github_equals(combo[k], v) for k, v in entry.items()
                                if k in keys):
                for k, v in entry.items():
                    if k not in keys:
                        combo[k] = v
                joined = True
        if not joined:
            table.append([dict(entry), False])
    return [c for c, _ in table]


SCALARS = st.sampled_from(["a", "A", "b", "1", 1, 2, 1.0, True, False, "x y", ""])
KEYS = st.sampled_from(["k1", "k2", "k3", "e1", "e2"])


@st.composite
def matrices(draw: Any) -> tuple[list, list, list]:
    axis_keys = draw(st.lists(st.sampled_from(["k1", "k2", "k3"]), unique=True, max_size=3))
    axes = [(k, draw(st.lists(SCALARS, min_size=1, max_size=4))) for k in axis_keys]
    entry = st.dictionaries(KEYS, SCALARS, min_size=1, max_size=3)
    excludes = []
    if axis_keys:
        excl = st.dictionaries(st.sampled_from(axis_keys), SCALARS, min_size=1, max_size=2)
        excludes = draw(st.lists(excl, max_size=3))
    return axes, draw(st.lists(entry, max_size=5)), excludes


@settings(max_examples=300, deadline=None)
@given(matrices())
def test_matches_independent_reference(m: tuple[list, list, list]) -> None:
    axes, include, exclude = m
    got = [typed(c.values) for c in expand(axes, include, exclude).combinations]
    assert got == [typed(c) for c in reference(axes, include, exclude)]


@settings(max_examples=200, deadline=None)
@given(matrices())
def test_semantics_properties(m: tuple[list, list, list]) -> None:
    axes, include, exclude = m
    exp = expand(axes, include, exclude)
    again = expand(axes, include, exclude)
    assert [typed(c.values) for c in exp.combinations] == \
        [typed(c.values) for c in again.combinations]  # deterministic
    originals = [c for c in exp.combinations if c.product_index is not None]
    assert len(originals) + len(exp.excluded) == exp.product_size
    assert [c.product_index for c in originals] == sorted(c.product_index for c in originals)
    keys = [k for k, _ in axes]
    for c in originals:  # no survivor matches an exclude; axis values are the product's
        base = matrix.combination_at(exp.axes, c.product_index)  # type: ignore[arg-type]
        assert typed({k: c.values[k] for k in keys}) == typed(base)
        assert not any(all(github_equals(base[k], v) for k, v in e.items()) for e in exclude)
    created = [c.created_by for c in exp.combinations if c.product_index is None]
    assert created == sorted(created)  # new combinations follow include order
    for j in created:  # a created entry matches no original combination
        entry = include[j]  # type: ignore[index]
        assert not any(all(github_equals(c.values[k], v) for k, v in entry.items()
                           if k in keys) for c in originals)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_count_is_the_number_of_combinations_expand_makes(data: Any) -> None:
    axes, include, exclude = data.draw(matrices())
    n = len(expand(axes, include, exclude).combinations)
    assert matrix.count(axes, include, exclude) == (n, True)


@settings(max_examples=200, deadline=None)
@given(matrices())
def test_count_without_the_projection_is_a_lower_bound(m: tuple[list, list, list]) -> None:
    axes, include, exclude = m
    n = len(expand(axes, include, exclude).combinations)
    old = matrix.MAX_PROJECTION
    matrix.MAX_PROJECTION = 0  # restored below; hypothesis runs this body many times
    try:
        total, exact = matrix.count(axes, include, exclude)
    finally:
        matrix.MAX_PROJECTION = old
    assert total <= n and not exact


@settings(max_examples=200, deadline=None)
@given(matrices(), st.integers(0, 40))
def test_expand_refuses_exactly_above_the_cap(m: tuple[list, list, list], cap: int) -> None:
    axes, include, exclude = m
    n = len(expand(axes, include, exclude).combinations)
    if n <= cap:
        assert len(expand(axes, include, exclude, max_combinations=cap).combinations) == n
    else:
        with pytest.raises(MatrixTooLarge) as exc:
            expand(axes, include, exclude, max_combinations=cap)
        assert (exc.value.size, exc.value.at_least) == (n, False)


# --- task identity ---------------------------------------------------------------------

def keys_by_variant(spec: Any) -> dict[str, str]:
    return {t.variant_id: t.task_key for t in build_plan(spec).tasks}


NAMES = st.lists(st.sampled_from(["bakery", "diner", "records", "books"]), min_size=1,
                 max_size=3, unique=True)


@st.composite
def campaigns(draw: Any) -> Any:
    inputs = draw(NAMES)
    prompts = draw(st.lists(st.sampled_from(["neon", "deco", "chalk"]), min_size=1,
                            max_size=3, unique=True))
    styles = draw(st.lists(st.sampled_from(["DESIGN", "REALISTIC", "ANIME"]), min_size=1,
                           max_size=2, unique=True))
    include = draw(st.lists(st.fixed_dictionaries(
        {"input": st.sampled_from(inputs), "magicPrompt": st.sampled_from(["ON", "OFF"])}),
        max_size=2))
    spec = make_spec(inputs=inputs, prompts={p: f"{p} sign reading {{shop}}" for p in prompts},
                     repeat=draw(st.integers(1, 3)))
    return with_matrix(spec, Matrix(axes=(("input", tuple(inputs)), ("prompt", tuple(prompts)),
                                          ("styleType", tuple(styles))),
                                    include=tuple(include)))


@settings(max_examples=60, deadline=None)
@given(campaigns(), st.randoms(use_true_random=False))
def test_keys_ignore_order_of_unrelated_parts(spec: Any, rnd: Any) -> None:
    import dataclasses

    def shuffled(d: Any) -> dict:
        items = list(d.items())
        rnd.shuffle(items)
        return dict(items)

    other = dataclasses.replace(
        spec, inputs=shuffled(spec.inputs), prompts=shuffled(spec.prompts),
        vars=shuffled({**spec.vars, "unused": "x"}), description="edited",
        defaults=shuffled({"outputFormat": "PNG", "outputQuality": 90}))
    base = dataclasses.replace(spec, defaults={"outputQuality": 90, "outputFormat": "PNG"})
    assert keys_by_variant(other) == keys_by_variant(base)


@settings(max_examples=60, deadline=None)
@given(campaigns())
def test_editing_one_prompt_keeps_other_keys(spec: Any) -> None:
    import dataclasses

    first = next(iter(spec.prompts))
    edited = dataclasses.replace(spec, prompts={**spec.prompts, first: "edited {shop}"})
    before, after = build_plan(spec).tasks, build_plan(edited).tasks
    assert [t.variant_id for t in before] == [t.variant_id for t in after]
    for a, b in zip(before, after, strict=True):
        assert (a.task_key == b.task_key) is (a.prompt_name != first)


@settings(max_examples=60, deadline=None)
@given(campaigns())
def test_adding_an_input_keeps_other_keys(spec: Any) -> None:
    import dataclasses

    extra = make_spec(inputs=["zeta"]).inputs["zeta"]
    m = spec.matrix
    axes = tuple((k, (*v, "zeta")) if k == "input" else (k, v) for k, v in m.axes)
    grown = dataclasses.replace(spec, inputs={**spec.inputs, "zeta": extra},
                                matrix=Matrix(axes=axes, include=m.include, exclude=m.exclude))
    before = keys_by_variant(spec)
    after = keys_by_variant(grown)
    for vid, key in before.items():
        if vid in after:
            assert after[vid] == key
    assert set(before.values()) <= set(after.values())


@settings(max_examples=40, deadline=None)
@given(campaigns())
def test_more_repeats_keep_earlier_keys(spec: Any) -> None:
    import dataclasses

    one = build_plan(dataclasses.replace(spec, repeat=1)).tasks
    two = build_plan(dataclasses.replace(spec, repeat=2)).tasks
    assert [t.task_key for t in two[::2]] == [t.task_key for t in one]
    assert [t.variant_id for t in two[::2]] == [t.variant_id for t in one]
    assert all(t.variant_id.endswith("-r2") and t.repeat == 1 for t in two[1::2])


@settings(max_examples=60, deadline=None)
@given(campaigns())
def test_task_uuids_valid_v4_and_unique(spec: Any) -> None:
    tasks = build_plan(spec).tasks
    assert all(runware.is_uuid4(t.task_uuid) for t in tasks)
    assert all(t.task_uuid == runware.task_uuid(t.task_key) for t in tasks)
    assert len({t.task_uuid for t in tasks}) == len(tasks)
    assert len({t.variant_id for t in tasks}) == len(tasks)
    assert sum((t.est_cost for t in tasks), Decimal(0)) == build_plan(spec).total_cost


def test_a_plain_product_makes_the_same_combinations_as_the_constructor() -> None:
    axes = [("a", (1, 2)), ("b", ("x", "y", "z"))]
    exp = expand(axes)
    made = tuple(Combination({"a": a, "b": b}, i, None, ()) for i, (a, b) in enumerate(
        [(a, b) for a in (1, 2) for b in ("x", "y", "z")]))
    assert exp.combinations == made and made == exp.combinations
    assert list(exp.combinations) == list(made) and len(exp.combinations) == 6
    assert (exp.combinations[-1], exp.combinations[1:3]) == (made[-1], made[1:3])
    assert [repr(c) for c in exp.combinations] == [repr(c) for c in made]
    assert exp.combinations != made[:-1]
    with pytest.raises(IndexError):
        exp.combinations[6]
    # with an exclude or an include, the same combinations as the general walk makes
    walked = expand(axes, exclude=[{"b": "nothing"}]).combinations
    assert isinstance(walked, tuple) and walked == made

