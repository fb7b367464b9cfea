"""Plan: requests, identity, limits, collisions, escapes, explain, and the `plan` command."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specrunner import cli, models, runware
from specrunner import plan as planmod
from specrunner.errors import Loc, PlanLimitError, SpecError
from specrunner.plan import build_plan, explain, identity, outpaths
from specrunner.plan.task import LocalImage, Task
from specrunner.spec import load_spec
from specrunner.spec.types import (
    Budget,
    Execution,
    ImageRef,
    InputPair,
    Matrix,
    OutputSettings,
    Spec,
    VariantDecl,
)

FILE = "/camp/spec.yaml"
LOC_PATHS = ["$.model", "$.defaults", "$.defaults.outputQuality", "$.prompts", "$.matrix",
             "$.matrix.styleType", "$.matrix.include[0]", "$.matrix.include[1]",
             "$.matrix.exclude[0]", "$.variants[0]", "$.variants[1]", "$.output.name",
             "$.prompts.neon", "$.prompts.deco", "$.inputs"]


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def pair(name: str, polarity: str = "white-edits") -> InputPair:
    return InputPair(name, ImageRef("file", f"/camp/img/{name}.jpg", f"img/{name}.jpg",
                                    sha(name + ".jpg"), (64, 48), "JPEG"),
                     ImageRef("file", f"/camp/img/{name}-mask.png", f"img/{name}-mask.png",
                              sha(name + "-mask.png"), (64, 48), "PNG"),
                     polarity, {"shop": name.upper()})


def make_spec(inputs: Any = ("bakery",), prompts: Any = None, *, repeat: int = 1,
              defaults: Any = None, output_name: str = "{variant}", max_usd: str = "100",
              max_tasks: int = 10_000, variants: Any = None, delivery: str = "async",
              **spec_vars: str) -> Spec:
    """A Spec as spec.py would build it (fake but consistent image hashes, fake locs)."""
    prompts = prompts if prompts is not None else {"neon": "Neon sign reading {shop}"}
    locs = {p: Loc(FILE, i + 2, 3) for i, p in enumerate(LOC_PATHS)}
    return Spec(
        path=Path(FILE), source_sha256="0" * 64, name="camp", model="ideogram:3@3",
        defaults=defaults or {}, vars=dict(spec_vars),
        inputs={n: pair(n) for n in inputs}, prompts=dict(prompts),
        matrix=None if variants else Matrix(axes=(("input", tuple(inputs)),
                                                  ("prompt", tuple(prompts)))),
        variants=tuple(variants) if variants else None, repeat=repeat,
        output=OutputSettings(Path("/camp/out"), output_name),
        budget=Budget(Decimal(max_usd), max_tasks), execution=Execution(delivery=delivery),
        prices={"ideogram:3@3": Decimal("0.08")}, locs=locs)


def with_matrix(spec: Spec, m: Matrix) -> Spec:
    return dataclasses.replace(spec, matrix=m, variants=None)


def diags(spec: Spec) -> list:
    with pytest.raises(SpecError) as exc:
        build_plan(spec)
    return exc.value.diagnostics


# --- requests and identity ---------------------------------------------------------------

def test_request_is_exactly_defaults_fields_and_runner_fields() -> None:
    spec = make_spec(("bakery",), {"neon": "Neon sign reading {shop} in {city}"}, city="Lyon",
                     defaults={"outputFormat": "PNG",
                               "providerSettings": {"ideogram": {"magicPrompt": "ON"}}})
    spec = with_matrix(spec, Matrix(axes=(("styleType", ("DESIGN",)),)))
    (task,) = build_plan(spec).tasks
    body = {
        "taskType": "imageInference", "model": "ideogram:3@3",
        "positivePrompt": "Neon sign reading BAKERY in Lyon", "outputFormat": "PNG",
        "providerSettings": {"ideogram": {"magicPrompt": "ON", "styleType": "DESIGN"}},
        "inputs": {"seedImage": "local:" + sha("bakery.jpg"),
                   "maskImage": "local:" + sha("bakery-mask.png")},
        "includeCost": True, "deliveryMethod": "async",
    }
    keyed = {k: v for k, v in body.items() if k not in ("includeCost", "deliveryMethod")}
    canonical = json.dumps({"request": keyed, "maskPolarity": "white-edits", "repeat": 0},
                           sort_keys=True, separators=(",", ":")).encode()
    assert task.task_key == hashlib.sha256(canonical).hexdigest()
    assert task.task_uuid == runware.task_uuid(task.task_key)
    assert dict(task.request) == {"taskUUID": task.task_uuid, **body}
    assert list(task.request)[:4] == ["taskType", "taskUUID", "model", "positivePrompt"]
    assert task.local_inputs == {
        "seedImage": LocalImage(Path("/camp/img/bakery.jpg"), sha("bakery.jpg"), False),
        "maskImage": LocalImage(Path("/camp/img/bakery-mask.png"), sha("bakery-mask.png"),
                                False)}
    assert (task.variant_id, task.output_stem, task.output_ext) == ("DESIGN", "DESIGN", "png")
    assert spec.defaults == {"outputFormat": "PNG",
                             "providerSettings": {"ideogram": {"magicPrompt": "ON"}}}


def test_url_and_uuid_inputs_go_as_written_and_black_edits_inverts_the_mask() -> None:
    uuid = "d01113cd-fe21-4a0f-a480-706372b78c09"
    spec = make_spec()
    black = dataclasses.replace(spec.inputs["bakery"], polarity="black-edits")
    url = InputPair("web", ImageRef("uuid", uuid, uuid),
                    ImageRef("url", "https://x.test/m.png", "https://x.test/m.png"))
    spec = dataclasses.replace(spec, inputs={"bakery": black, "web": url},
                               prompts={"neon": "Neon"},
                               matrix=Matrix(axes=(("input", ("bakery", "web")),)))
    t_black, t_web = build_plan(spec).tasks
    assert t_black.local_inputs["maskImage"].invert and not t_black.local_inputs["seedImage"].invert
    assert t_web.request["inputs"] == {"seedImage": uuid, "maskImage": "https://x.test/m.png"}
    assert t_web.local_inputs == {}
    white = dataclasses.replace(spec, inputs={**spec.inputs, "bakery": pair("bakery")})
    assert build_plan(white).tasks[0].task_key != t_black.task_key  # polarity is identity


def test_order_ids_repeat_and_delivery() -> None:
    spec = make_spec(("b", "a"), {"z": "Z {shop}", "y": "Y {shop}"}, repeat=2, delivery="sync")
    tasks = build_plan(spec).tasks
    assert [t.variant_id for t in tasks] == ["b-z", "b-z-r2", "b-y", "b-y-r2", "a-z", "a-z-r2",
                                             "a-y", "a-y-r2"]
    assert [t.index for t in tasks] == list(range(8))
    assert [t.repeat for t in tasks] == [0, 1] * 4
    assert {t.request["deliveryMethod"] for t in tasks} == {"sync"}
    assert tasks[0].request == {**tasks[1].request, "taskUUID": tasks[0].task_uuid}


def test_cost_uses_number_results_and_price_table() -> None:
    spec = make_spec(("a", "b"), defaults={"numberResults": 3})
    spec = dataclasses.replace(spec, prices={"ideogram:3@3": Decimal("0.0125")})
    p = build_plan(spec)
    assert (p.total_images, p.total_cost) == (6, Decimal("0.0750"))
    assert p.tasks[0].output_paths() == ["a-neon-1.jpg", "a-neon-2.jpg", "a-neon-3.jpg"]
    assert [(k, [(v.value, v.tasks, v.images, v.cost) for v in vals])
            for k, vals in p.breakdown] == [
        ("input", [("a", 1, 3, Decimal("0.0375")), ("b", 1, 3, Decimal("0.0375"))]),
        ("prompt", [("neon", 2, 6, Decimal("0.0750"))])]


def test_plan_module_is_pure() -> None:
    code = ("import sys, specrunner.plan, specrunner.plan.matrix; "
            "assert not {'httpx', 'anyio'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[1])


# --- expansion-time checks ----------------------------------------------------------------

def test_output_collision_case_insensitive_with_location() -> None:
    spec = make_spec(("acme", "Acme2"), output_name="{shop}")
    spec = dataclasses.replace(spec, inputs={"acme": pair("acme"),
                                             "Acme2": dataclasses.replace(
                                                 pair("Acme2"), vars={"shop": "Acme"})})
    (d,) = diags(spec)
    assert d.message == ("variants `acme-neon` and `Acme2-neon` both write 'Acme.jpg' "
                         "(names differ only in case)")
    assert (d.path, d.loc, d.code) == ("$.output.name", Loc(FILE, 13, 3), "output-collision")


def test_output_collision_between_results_of_different_tasks() -> None:
    spec = make_spec(("a",), {"neon": "N", "deco": "D"}, output_name="x{prompt}")
    spec = dataclasses.replace(spec, prompts={"neon": "N", "neon-1": "D"},
                               matrix=Matrix(axes=(("prompt", ("neon", "neon-1")),),
                                             include=({"prompt": "neon", "numberResults": 2},)),
                               locs=spec.locs)
    messages = [d.message for d in diags(spec)]
    assert "variants `neon-2` and `neon-1` both write 'xneon-1.jpg'" in messages


@pytest.mark.parametrize("name,why", [
    ("../{variant}", "escapes the output folder (..)"),
    ("a/../../{variant}", "escapes the output folder (..)"),
    ("/etc/{variant}", "is an absolute path"),
    ("C:{variant}", "is an absolute path"),
    ("a\\{variant}", "contains a backslash (a folder separator on Windows); use /"),
    ("{evil}", "contains a NUL character"),
    ("CON", "uses the reserved Windows device name 'CON'"),
    ("nul.{variant}", "uses the reserved Windows device name 'nul'"),
    ("a//{variant}", "has an empty or '.' folder name ('a//bakery-neon')"),
    ("{variant}?", "has a character that is not portable in file names in 'bakery-neon?'"),
])
def test_output_escapes_are_located(name: str, why: str) -> None:
    d = diags(make_spec(output_name=name, evil="x\0y"))[0]
    assert d.message.endswith(f", which {why}")
    assert (d.path, d.loc, d.code) == ("$.output.name", Loc(FILE, 13, 3), "output-path")


def test_prompt_length_and_undefined_variables_are_located() -> None:
    spec = make_spec(("a", "b"), {"neon": "x" * 2000 + "{shop}{shop}", "deco": "{nope}"})
    found = [(d.code, d.path, d.loc, d.message) for d in diags(spec)]
    assert found == [
        ("prompt-length", "$.prompts.neon", Loc(FILE, 14, 3),
         "prompt `neon` renders to 2002 characters for input `a`; Runware accepts 1-2000"),
        ("undefined-variable", "$.prompts.deco", Loc(FILE, 15, 3),
         "prompt `deco` uses {nope}, which is not defined for input `a`"),
        ("prompt-length", "$.prompts.neon", Loc(FILE, 14, 3),
         "prompt `neon` renders to 2002 characters for input `b`; Runware accepts 1-2000"),
        ("undefined-variable", "$.prompts.deco", Loc(FILE, 15, 3),
         "prompt `deco` uses {nope}, which is not defined for input `b`"),
    ]


def test_request_schema_errors_point_at_their_source() -> None:
    spec = make_spec(defaults={"outputQuality": 5})
    spec = with_matrix(spec, Matrix(axes=(("styleType", ("DESIGN", "BOGUS")),)))
    found = sorted({(d.path, d.loc.line) for d in diags(spec)})
    assert found == [("$.defaults.outputQuality", 4), ("$.matrix.styleType", 7)]
    messages = [d.message for d in diags(spec)]
    assert "request field outputQuality: 5 is less than the minimum of 20" in messages
    assert any(m.startswith("request field providerSettings.ideogram.styleType: 'BOGUS' is "
                            "not one of") for m in messages)
    assert {d.path for d in diags(spec)} == {"$.defaults.outputQuality", "$.matrix.styleType"}


def test_include_field_error_points_at_include_entry() -> None:
    spec = with_matrix(make_spec(), Matrix(axes=(("styleType", ("DESIGN",)),),
                                           include=({"styleType": "DESIGN", "ttl": 30},)))
    paths = {(d.path, d.loc) for d in diags(spec)}
    assert ("$.matrix.include[0].ttl", Loc(FILE, 8, 3)) in paths  # nearest located ancestor


def test_duplicate_ids_and_identical_requests_are_errors() -> None:
    spec = with_matrix(make_spec(output_name="{variant}"),
                       Matrix(axes=(("shop", ("a b", "a_b")),)))
    assert [d.code for d in diags(spec)] == ["duplicate-id"]
    same = with_matrix(make_spec(output_name="{variant}-{tag}"),
                       Matrix(axes=(("tag", ("x", "y")),)))
    (d,) = diags(same)
    assert (d.code, d.message) == ("duplicate-request", "variants `x` and `y` send identical "
                                   "requests (same task key, so the same taskUUID)")


def test_variants_missing_input_and_unknown_names() -> None:
    spec = make_spec(("a", "b"), variants=[VariantDecl({"prompt": "neon"}),
                                           VariantDecl({"input": "c", "prompt": "neon"})])
    found = [(d.code, d.path, d.hint) for d in diags(spec)]
    assert found == [("missing-input", "$.variants[0]", "add `input:` (one of: a, b)"),
                     ("unknown-input", "$.variants[1].input", "declared: a, b")]


def test_runner_owned_defaults_rejected() -> None:
    d = diags(make_spec(defaults={"deliveryMethod": "sync"}))[0]
    assert (d.code, d.path) == ("runner-field", "$.defaults.deliveryMethod")


# --- limits ----------------------------------------------------------------------------

def test_budget_limit_message() -> None:
    spec = make_spec(tuple(f"in{i}" for i in range(16)), {"neon": "N", "deco": "D"}, repeat=5,
                     max_usd="10")
    with pytest.raises(PlanLimitError) as exc:
        build_plan(spec)
    assert str(exc.value) == "plan needs $12.80 for 160 images; budget max_usd is $10.00"
    assert (exc.value.limit, exc.value.needed, exc.value.allowed) == (
        "max_usd", Decimal("12.80"), Decimal("10"))


def test_task_cap_message_counts_before_building() -> None:
    spec = make_spec(tuple(f"in{i}" for i in range(16)), {"neon": "N", "deco": "D"}, repeat=5,
                     max_tasks=100)
    with pytest.raises(PlanLimitError) as exc:
        build_plan(spec)
    assert str(exc.value) == ("plan has 160 tasks (32 combinations x repeat 5); budget "
                              "max_tasks is 100")
    assert (exc.value.limit, exc.value.needed, exc.value.allowed) == ("max_tasks", 160, 100)
    variants = make_spec(("a",), variants=[VariantDecl({"shop": str(i)}, id=f"v{i}")
                                           for i in range(3)], max_tasks=2)
    with pytest.raises(PlanLimitError, match=r"^plan has 3 tasks; budget max_tasks is 2$") as exc:
        build_plan(variants)
    assert (exc.value.limit, exc.value.needed, exc.value.allowed) == ("max_tasks", 3, 2)


def test_huge_product_refused_at_once() -> None:
    axes = tuple((f"v{i}", tuple(range(100))) for i in range(8))
    spec = with_matrix(make_spec(prompts={"neon": "".join(f"{{v{i}}}" for i in range(8))}),
                       Matrix(axes=axes))
    with pytest.raises(PlanLimitError, match="matrix product has 10,000,000,000,000,000 "
                                             "combinations; specrunner refuses to expand more "
                                             "than 1,000,000") as exc:
        build_plan(spec)
    assert (exc.value.limit, exc.value.needed, exc.value.allowed) == (None, 10**16, 1_000_000)


def test_a_matrix_counted_only_from_below_says_at_least(monkeypatch: pytest.MonkeyPatch) -> None:
    from specrunner.plan import matrix

    monkeypatch.setattr(matrix, "MAX_PROJECTION", 1)  # too many points to count exactly
    axes = tuple((f"v{i}", tuple(range(10))) for i in range(4))
    spec = with_matrix(make_spec(prompts={"neon": "".join(f"{{v{i}}}" for i in range(4))},
                                 max_tasks=100),
                       Matrix(axes=axes, exclude=({"v0": 0},)))
    with pytest.raises(PlanLimitError) as exc:
        build_plan(spec)
    assert str(exc.value) == ("plan has at least 9,000 tasks (at least 9,000 combinations x "
                              "repeat 1); budget max_tasks is 100")


def test_validate_points_at_the_limit_exceeded(tmp_path: Path) -> None:
    from fixtures.specfiles import BASE_SPEC, validate_json, write_spec

    path = write_spec(tmp_path, BASE_SPEC.replace(
        "budget: {max_usd: 1}", "budget:\n  max_tasks: 5\n  max_usd: 0.1"))
    code, result = validate_json(path)
    (d,) = result["specs"][0]["diagnostics"]
    assert code == 2 and (d["line"], d["column"], d["path"], d["code"]) == (
        18, 12, "$.budget.max_usd", "plan-limit")
    assert d["message"] == "plan needs $0.16 for 2 images; budget max_usd is $0.10"
    path.write_text(BASE_SPEC.replace("budget: {max_usd: 1}", "budget: {max_usd: 1, max_tasks: 1}"))
    (d,) = validate_json(path)[1]["specs"][0]["diagnostics"]
    assert (d["line"], d["path"]) == (16, "$.budget.max_tasks")


# --- fast validation is equivalent to validating every request ---------------------------

FIELD_VALUES = {
    "styleType": st.sampled_from(["DESIGN", "AUTO", "bogus", 3]),
    "outputQuality": st.integers(0, 120),
    "numberResults": st.integers(0, 25),
    "ttl": st.integers(0, 200),
    "outputType": st.sampled_from(["URL", "dataURI", "nope"]),
}


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(FIELD_VALUES)), st.just(None), max_size=3)
       .flatmap(lambda keys: st.fixed_dictionaries({k: st.lists(FIELD_VALUES[k], min_size=1,
                                                                max_size=2, unique=True)
                                                    for k in keys})),
       st.lists(st.integers(0, 2100), min_size=1, max_size=2, unique=True))
def test_signature_validation_equals_full_validation(axes: dict, lengths: list) -> None:
    prompts = {f"p{i}": "x" * n for i, n in enumerate(lengths)}
    spec = with_matrix(make_spec(prompts=prompts, max_usd="1000"),
                       Matrix(axes=(("prompt", tuple(prompts)),
                                    *((k, tuple(v)) for k, v in axes.items()))))
    validator = models.request_validator("ideogram:3@3")
    fields = models.field_paths("ideogram:3@3")
    any_invalid = False
    for combo in planmod.matrix.expand(spec.matrix.axes).combinations:
        req: dict[str, Any] = {"taskType": "imageInference", "taskUUID": runware.task_uuid("k"),
                               "model": "ideogram:3@3",
                               "positivePrompt": prompts[combo.values["prompt"]],
                               "inputs": {"seedImage": "local:a", "maskImage": "local:b"},
                               "includeCost": True, "deliveryMethod": "async"}
        for k, v in combo.values.items():
            if k in fields:
                node = req
                for part in fields[k][:-1]:
                    node = node.setdefault(part, {})
                node[fields[k][-1]] = v
        any_invalid |= not validator.is_valid(req)
    try:
        tasks = build_plan(spec).tasks
    except SpecError as exc:
        assert any_invalid, exc
        assert {d.code for d in exc.diagnostics} <= {"request-schema", "prompt-length", "more"}
    else:
        assert not any_invalid
        assert all(validator.is_valid(dict(t.request)) for t in tasks)


# --- explain -------------------------------------------------------------------------------

def test_explain_found_with_include_changes() -> None:
    spec = with_matrix(make_spec(("a", "b")), Matrix(
        axes=(("input", ("a", "b")), ("styleType", ("DESIGN", "ANIME"))),
        include=({"magicPrompt": "ON"}, {"input": "a", "magicPrompt": "OFF"}),
        exclude=({"input": "b", "styleType": "ANIME"},)))
    p = build_plan(spec)
    status, text = explain(p, "a-ANIME-OFF")
    assert status == "found"
    lines = text.splitlines()
    assert lines[:6] == [
        "variant a-ANIME-OFF: combination #2 of 3, 1 task(s) (repeat 1)",
        f"  declared by: matrix product, combination #2 of 4 ($.matrix at {FILE}:6:3)",
        "  axis values: input=a, styleType=ANIME",
        f"  include #1 ($.matrix.include[0] at {FILE}:8:3): added magicPrompt=ON",
        f"  include #2 ($.matrix.include[1] at {FILE}:9:3): changed magicPrompt: ON -> OFF",
        "  excludes: none of the 1 entries matches it",
    ]
    assert json.loads("\n".join(lines[lines.index("  request:") + 1:])) == \
        dict(p.tasks[1].request)
    status, text = explain(p, "b-ANIME")
    assert (status, text) == ("excluded", "variant b-ANIME is not in the plan: matrix "
                              "combination #4 (input=b, styleType=ANIME) was removed by exclude "
                              f"#1 {{input=b, styleType=ANIME}} ($.matrix.exclude[0] at "
                              f"{FILE}:10:3)")
    assert explain(p, "a-ANIM-OFF") == ("unknown", "no variant `a-ANIM-OFF` in the plan; did "
                                        "you mean `a-ANIME-OFF`, `a-DESIGN-OFF`?")


# --- the `plan` command ----------------------------------------------------------------

IMAGES = Path(__file__).resolve().parents[1] / "specs/examples/images"
MINI = """\
version: 1
name: mini
inputs:
  bakery: {seed: bakery.jpg, mask: bakery-mask.png, vars: {shop_name: MIRELLE}}
  diner: {seed: diner.jpg, mask: diner-mask.png, vars: {shop_name: SUNRISE}}
prompts:
  neon: Neon sign reading "{shop_name}" above the door, warm pink tubes
matrix:
  input: [bakery, diner]
  styleType: [DESIGN, ANIME]
  exclude:
    - {input: diner, styleType: ANIME}
  include:
    - {input: bakery, numberResults: 2}
budget:
  max_usd: 1
"""

TABLE = """\
plan mini: 3 tasks, 5 images, estimated $0.40 (budget $1.00, max 10,000 tasks)

variant          input    prompt    style      results    est. cost
---------------  -------  --------  -------  ---------  -----------
bakery-DESIGN-2  bakery   neon      DESIGN           2        $0.16
bakery-ANIME-2   bakery   neon      ANIME            2        $0.16
diner-DESIGN     diner    neon      DESIGN           1        $0.08

by axis:
axis           value        tasks    images    est. cost
-------------  ---------  -------  --------  -----------
input          bakery           2         4        $0.32
input          diner            1         1        $0.08
prompt         neon             3         5        $0.40
styleType      DESIGN           2         3        $0.24
styleType      ANIME            1         2        $0.16
numberResults  2                2         4        $0.32
numberResults  (not set)        1         1        $0.08
"""

MARKDOWN = """\
## plan mini: 3 tasks, 5 images, estimated $0.40 (budget $1.00, max 10,000 tasks)

| variant         | input   | prompt   | style   |   results |   est. cost |
|-----------------|---------|----------|---------|-----------|-------------|
| bakery-DESIGN-2 | bakery  | neon     | DESIGN  |         2 |       $0.16 |

(2 more tasks not shown; --all shows them, --format json or csv lists them all)

### By axis

| axis          | value     |   tasks |   images |   est. cost |
|---------------|-----------|---------|----------|-------------|
| input         | bakery    |       2 |        4 |       $0.32 |
| input         | diner     |       1 |        1 |       $0.08 |
| prompt        | neon      |       3 |        5 |       $0.40 |
| styleType     | DESIGN    |       2 |        3 |       $0.24 |
| styleType     | ANIME     |       1 |        2 |       $0.16 |
| numberResults | 2         |       2 |        4 |       $0.32 |
| numberResults | (not set) |       1 |        1 |       $0.08 |
"""


@pytest.fixture()
def mini(tmp_path: Path) -> Path:
    for name in ("bakery.jpg", "bakery-mask.png", "diner.jpg", "diner-mask.png"):
        (tmp_path / name).write_bytes((IMAGES / name).read_bytes())
    path = tmp_path / "spec.yaml"
    path.write_text(MINI, encoding="utf-8")
    return path


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.run(["plan", *argv], out, err)
    return code, out.getvalue(), err.getvalue()


# MINI leaves magicPrompt unset (Runware's default AUTO): plan warns on stderr, and notes
# once that the model takes no seed; stdout stays the plan.
MAGIC = ("magicPrompt is not set for 3 of 3 tasks, so Runware's default \"AUTO\" applies: the "
         "provider may rewrite each prompt before generating, so the image follows a prompt "
         "the plan does not show")
MAGIC_HINT = ('set providerSettings.ideogram.magicPrompt: "OFF" in defaults to send prompts '
              "as written")


def mini_stderr(mini: Path) -> str:
    return (f"{mini}:1:1: warning: {MAGIC} [$.defaults.providerSettings.ideogram] "
            f"({MAGIC_HINT})\n"
            f"{mini}:1:1: note: ideogram:3@3 takes no seed: every generation is a new image "
            "and none can be regenerated; an identical request is answered from the run "
            "record, not generated again [$.model] (`repeat: N` asks for N different images of "
            "each variant)\n")


def test_cli_table_exact(mini: Path) -> None:
    assert run_cli(str(mini)) == (0, TABLE, mini_stderr(mini))


def test_cli_markdown_exact_with_limit(mini: Path) -> None:
    # the warning also heads the Markdown (a pull-request comment), in a GitHub alert
    head, rest = MARKDOWN.split("\n\n", 1)
    expected = (f"{head}\n\n> [!WARNING]\n> - `{mini}:1:1` {MAGIC} ({MAGIC_HINT})\n\n{rest}")
    assert run_cli(str(mini), "--format", "markdown", "--limit", "1") == (
        0, expected, mini_stderr(mini))


def test_cli_csv_one_row_per_task(mini: Path) -> None:
    import csv

    code, out, _ = run_cli(str(mini), "--format", "csv", "--limit", "1")  # csv ignores limit
    rows = list(csv.DictReader(io.StringIO(out)))
    plan = build_plan(load_spec(mini))
    assert code == 0 and out.splitlines()[0] == (
        "index,variant,input,prompt,repeat,styleType,numberResults,number_results,est_cost,"
        "outputs,task_uuid,task_key,positive_prompt")
    assert [(r["variant"], r["numberResults"], r["est_cost"], r["outputs"]) for r in rows] == [
        ("bakery-DESIGN-2", "2", "0.16", "bakery-DESIGN-2-1.jpg;bakery-DESIGN-2-2.jpg"),
        ("bakery-ANIME-2", "2", "0.16", "bakery-ANIME-2-1.jpg;bakery-ANIME-2-2.jpg"),
        ("diner-DESIGN", "", "0.08", "diner-DESIGN.jpg")]
    assert [r["task_uuid"] for r in rows] == [t.task_uuid for t in plan.tasks]
    assert [r["prompt"] for r in rows] == ["neon"] * 3
    assert rows[2]["positive_prompt"] == ('Neon sign reading "SUNRISE" above the door, '
                                          "warm pink tubes")


def test_repeat_counts_from_1_in_csv_and_json_as_in_output_names(mini: Path) -> None:
    import csv

    mini.write_text(MINI.replace("budget:", 'output: {name: "{variant}-{repeat}"}\nrepeat: 2\n'
                                 "budget:"), encoding="utf-8")
    _, out, _ = run_cli(str(mini), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["variant"], r["repeat"], r["outputs"].split(";")[0]) for r in rows][:2] == [
        ("bakery-DESIGN-2", "1", "bakery-DESIGN-2-1-1.jpg"),
        ("bakery-DESIGN-2-r2", "2", "bakery-DESIGN-2-r2-2-1.jpg")]
    _, out, _ = run_cli(str(mini), "--format", "json")
    assert [t["repeat"] for t in json.loads(out)["tasks"]] == [1, 2] * 3


def test_cli_json_is_complete_and_exact(mini: Path) -> None:
    code, out, _ = run_cli(str(mini), "--format", "json", "--limit", "1")
    doc = json.loads(out)
    plan = build_plan(load_spec(mini))
    assert code == 0
    assert doc["totals"] == {"tasks": 3, "images": 5, "est_cost": "0.40", "max_usd": "1",
                             "max_tasks": 10000}
    assert doc["breakdown"]["numberResults"] == [
        {"value": 2, "tasks": 2, "images": 4, "est_cost": "0.32"},
        {"value": None, "tasks": 1, "images": 1, "est_cost": "0.08"}]
    assert [t["request"] for t in doc["tasks"]] == [dict(t.request) for t in plan.tasks]
    first = doc["tasks"][0]
    assert first["local_inputs"]["seedImage"] == {
        "path": str(mini.parent / "bakery.jpg"), "invert": False,
        "sha256": hashlib.sha256((IMAGES / "bakery.jpg").read_bytes()).hexdigest()}
    assert first["request"]["inputs"]["seedImage"] == "local:" + first["local_inputs"][
        "seedImage"]["sha256"]
    # repeat counts from 1, as {repeat} does in output names
    assert (first["variant"], first["repeat"], first["outputs"]) == (
        "bakery-DESIGN-2", 1, ["bakery-DESIGN-2-1.jpg", "bakery-DESIGN-2-2.jpg"])


def test_cli_limits_and_overrides(mini: Path) -> None:
    assert run_cli(str(mini), "--max-usd", "0.30") == (
        2, "", "error: plan needs $0.40 for 5 images; budget max_usd is $0.30 (raise "
        "budget.max_usd, or override it with --max-usd USD (plan, run))\n")
    assert run_cli(str(mini), "--max-tasks", "2") == (
        2, "", "error: plan has 3 tasks (3 combinations x repeat 1); budget max_tasks is 2 "
        "(raise budget.max_tasks, or try the plan with `specrunner plan --max-tasks N`)\n")
    code, out, _ = run_cli(str(mini), "--max-usd", "0.40", "--max-tasks", "3")
    assert code == 0 and out.startswith("plan mini: 3 tasks, 5 images, estimated $0.40 "
                                        "(budget $0.40, max 3 tasks)\n")
    for argv, msg in [(("--max-usd", "abc"), "--max-usd must be a positive number of dollars, "
                        "not 'abc'"), (("--max-usd", "-1"), "--max-usd must be a positive "
                                       "number of dollars, not '-1'"),
                      (("--max-tasks", "0"), "--max-tasks must be a whole number >= 1, not '0'"),
                      (("--limit", "x"), "--limit must be a whole number >= 1, not 'x'")]:
        assert run_cli(str(mini), *argv) == (2, "", f"error: {msg}\n")


def test_cli_explain(mini: Path) -> None:
    code, out, err = run_cli(str(mini), "--explain", "bakery-ANIME-2")
    assert code == 0 and err == ""
    assert out.splitlines()[:4] == [
        "variant bakery-ANIME-2: combination #2 of 3, 1 task(s) (repeat 1)",
        f"  declared by: matrix product, combination #2 of 4 ($.matrix at {mini}:9:3)",
        "  axis values: input=bakery, styleType=ANIME",
        f"  include #1 ($.matrix.include[0] at {mini}:14:7): added numberResults=2"]
    assert run_cli(str(mini), "--explain", "diner-ANIME") == (0, (
        "variant diner-ANIME is not in the plan: matrix combination #4 (input=diner, "
        "styleType=ANIME) was removed by exclude #1 {input=diner, styleType=ANIME} "
        f"($.matrix.exclude[0] at {mini}:12:7)\n"), "")
    assert run_cli(str(mini), "--explain", "dinner-DESIGN") == (
        2, "", "error: no variant `dinner-DESIGN` in the plan; did you mean `diner-DESIGN`, "
        "`bakery-DESIGN-2`?\n")


def test_cli_invalid_spec_exit_2(mini: Path) -> None:
    mini.write_text(MINI.replace("name: mini", "name: mini\noutput: {name: '{input}'}"),
                    encoding="utf-8")
    code, out, err = run_cli(str(mini))
    assert (code, out) == (2, "")
    where = f"{mini}:3:16: error: variants `bakery-DESIGN-2` and `bakery-ANIME-2` both write"
    # One prefix per line: the diagnostics say `error:` themselves.
    assert err == (f"{where} 'bakery-1.jpg' [$.output.name] (put {{variant}} in "
                   f"output.name)\n{where} 'bakery-2.jpg' [$.output.name] (put {{variant}} in "
                   "output.name)\n")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="aZ09._- /\\:?*\0\u00e9CONnul", max_size=12))
def test_path_check_fast_path_agrees_with_full_walk(stem: str) -> None:
    assert planmod.path_problem(stem) == outpaths._path_problem(stem)


def test_fast_task_keys_equal_reference_keys() -> None:
    spec = make_spec(("a", "b"), {"neon": "Néon « {shop} » \u2028 \\ \" {{x}}", "deco": "D"},
                     repeat=3, defaults={"providerSettings": {"ideogram": {"magicPrompt": "ON"}},
                                         "outputFormat": "WEBP"})
    for t in build_plan(spec).tasks:
        assert t.task_key == planmod.task_key(t.request, "white-edits", t.repeat)
    sentinel = make_spec(prompts={"neon": "N"}, defaults={"webhookURL": "https://x.test/"
                                                          + identity._SENTINEL})
    (t,) = build_plan(sentinel).tasks  # the sentinel in a field value takes the plain road
    assert t.task_key == planmod.task_key(t.request, "white-edits", 0)


def test_the_planner_makes_tasks_equal_to_the_dataclass_constructor() -> None:
    spec = make_spec(("a", "b"), repeat=2, defaults={"outputFormat": "WEBP"})
    for t in build_plan(spec).tasks:
        made = Task(**{f.name: getattr(t, f.name) for f in dataclasses.fields(Task)})
        assert made == t and repr(made) == repr(t)
        assert [getattr(made, f.name) for f in dataclasses.fields(Task)] == \
            [getattr(t, f.name) for f in dataclasses.fields(Task)]
    assert dataclasses.replace(t, repeat=5).repeat == 5  # still a frozen dataclass
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.repeat = 1  # type: ignore[misc]


def test_output_collisions_are_found_whatever_the_names_hash_to(monkeypatch) -> None:
    """The planner holds output names by hash: names whose hashes collide are still told
    apart, and every real collision (case only, or exact) is reported as before."""
    spec = make_spec(("a", "b", "A"), repeat=2, output_name="{input}-{repeat}",
                     defaults={"numberResults": 2})
    spec = dataclasses.replace(spec, inputs={**spec.inputs, "A": pair("a-upper")})
    first = [(d.code, d.message) for d in diags(spec)]
    assert [c for c, _ in first] == ["output-collision"] * 4
    for collide in (lambda name: 0, len):
        monkeypatch.setattr(planmod.build, "_name_hash", collide)
        assert [(d.code, d.message) for d in diags(spec)] == first
    fine = make_spec(("a", "b"), repeat=3, output_name="{input}-{repeat}",
                     defaults={"numberResults": 2})
    monkeypatch.setattr(planmod.build, "_name_hash", lambda name: 0)
    assert len(build_plan(fine).tasks) == 6  # all 12 names differ, all hashing to 0


def test_exclude_key_must_be_an_axis() -> None:
    spec = with_matrix(make_spec(), Matrix(axes=(("styleType", ("DESIGN", "ANIME")),),
                                           include=({"magicPrompt": "ON"},),
                                           exclude=({"magicPrompt": "ON"},)))
    (d,) = diags(spec)
    assert (d.code, d.path, d.loc, d.hint) == ("exclude-key", "$.matrix.exclude[0].magicPrompt",
                                               Loc(FILE, 10, 3), "axes: styleType")


def test_switching_delivery_keeps_every_task_key_and_uuid() -> None:
    """A crash under async delivery resumed under sync must not mint new UUIDs (and pay again)."""
    a = build_plan(make_spec(("b", "a"), repeat=2, delivery="async")).tasks
    b = build_plan(make_spec(("b", "a"), repeat=2, delivery="sync")).tasks
    assert [t.request["deliveryMethod"] for t in b] == ["sync"] * len(b)
    assert [(t.task_key, t.task_uuid) for t in a] == [(t.task_key, t.task_uuid) for t in b]
    for t in a:  # the fast path and the public definition agree
        assert planmod.task_key(t.request, "white-edits", t.repeat) == t.task_key


# --- task ids, empty plans, locations of name problems -------------------------------------

def test_repeat_suffix_cannot_collide_with_another_variant_id() -> None:
    # `a` repeated twice makes task `a-r2`, which an explicit variant id already holds: two
    # tasks with one id (reports and explain would mix them up), even when their files differ.
    spec = make_spec(repeat=2, output_name="{variant}-{styleType}", variants=[
        VariantDecl({"styleType": "DESIGN"}, id="a-r2"),
        VariantDecl({"styleType": "REALISTIC"}, id="a")])
    (d,) = diags(spec)
    assert (d.code, d.path) == ("duplicate-id", "$.variants[1]")
    assert d.message == ("task id `a-r2` is used twice: variant `a-r2` and repeat 2 of "
                         "variant `a`")
    axes = with_matrix(make_spec(repeat=2, output_name="{variant}"),
                       Matrix(axes=(("shop", ("x", "x-r2")),)))
    assert [d.code for d in diags(axes)] == ["duplicate-id"]


def _task_id_clashes(ids: list[str], repeat: int) -> list[str]:
    """What a registry of every task id (first claim wins) reports, as the planner once
    kept it: the model the planner's cheaper check must agree with."""
    seen: set[str] = set()
    held: dict[str, tuple[str, int]] = {}
    out = []

    def which(v: str, r: int) -> str:
        return f"variant `{v}`" if r == 0 else f"repeat {r + 1} of variant `{v}`"

    for _i, vid in enumerate(ids):
        if vid in seen:
            out.append(f"variant id `{vid}` is used twice")
            continue
        seen.add(vid)
        for r in range(repeat):
            tid = vid if r == 0 else f"{vid}-r{r + 1}"
            if tid in held:
                out.append(f"task id `{tid}` is used twice: {which(*held[tid])} and "
                           f"{which(vid, r)}")
                continue
            held[tid] = (vid, r)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["a", "a-r2", "a-r3", "a-r2-r2", "a-r02", "a-r1", "b",
                                 "b-r2", "a-r", "a-r-r2", "c-r10"]), min_size=1, max_size=6),
       st.integers(min_value=1, max_value=3))
def test_task_id_clashes_are_those_of_a_registry_of_every_id(ids: list[str],
                                                             repeat: int) -> None:
    spec = make_spec(repeat=repeat, variants=[VariantDecl({"shop": f"S{i}"}, id=v)
                                              for i, v in enumerate(ids)])
    try:
        got = [] if len(build_plan(spec).tasks) == len(ids) * repeat else ["tasks missing"]
    except SpecError as exc:
        got = [d.message.split(" (combinations")[0] for d in exc.diagnostics
               if d.code == "duplicate-id"]
    assert got == _task_id_clashes(ids, repeat)


def test_a_plan_without_tasks_is_an_error() -> None:
    spec = with_matrix(make_spec(), Matrix(axes=(("shop", ("x",)),),
                                           exclude=({"shop": "X"},)))
    (d,) = diags(spec)
    assert (d.code, d.path, d.loc) == ("empty-plan", "$.matrix", Loc(FILE, 6, 3))
    assert d.message == "the plan has no tasks: exclude removes every combination of the matrix"


def test_name_problems_point_at_the_variant_when_output_name_is_not_written() -> None:
    spec = make_spec(variants=[VariantDecl({"styleType": "DESIGN", "numberResults": 2}, id="con"),
                               VariantDecl({"styleType": "REALISTIC"}, id="con-1")])
    locs = {p: loc for p, loc in spec.locs.items() if p != "$.output.name"}
    spec = dataclasses.replace(spec, locs=locs)
    got = [(d.code, d.path, d.loc) for d in diags(spec)]
    assert got == [("output-path", "$.variants[0]", Loc(FILE, 11, 3)),
                   ("output-collision", "$.variants[1]", Loc(FILE, 12, 3))]
    written = make_spec(variants=[VariantDecl({"styleType": "DESIGN"}, id="con")])
    (d,) = diags(written)
    assert (d.path, d.loc) == ("$.output.name", Loc(FILE, 13, 3))
