"""spec.load_spec and `specrunner validate`: the valid path, the schema, templates, refs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import jsonschema
import pytest
from fixtures.specfiles import BASE_SPEC, SIZE, run_cli, validate_json, write_spec

from specrunner import models, runware
from specrunner.errors import Loc, SpecError
from specrunner.spec import (
    SCHEMA_FILE,
    TemplateSyntaxError,
    build_schema,
    images,
    load_spec,
    load_spec_checked,
    template_fields,
)
from specrunner.spec.yamlload import load as yaml_load

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "specs" / "examples").glob("*.yaml"))
CANARY = os.environ["RUNWARE_API_KEY"]


def test_valid_spec_loads_into_a_typed_spec(tmp_path: Path) -> None:
    path = write_spec(tmp_path, BASE_SPEC + "prices: {\"ideogram:3@3\": 0.05}\n"
                      "execution: {concurrency: 2, request_timeout_s: 5}\n")
    spec = load_spec(path)
    assert spec.path == path.resolve() and spec.name == "demo" and spec.model == "ideogram:3@3"
    assert spec.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert spec.defaults == {"outputFormat": "PNG"}
    assert spec.vars == {"city": "Lyon"}
    shop = spec.inputs["shop"]
    assert shop.polarity == "white-edits" and shop.vars == {"shop_name": "MIRELLE"}
    assert shop.seed.kind == "file" and shop.seed.value == str(tmp_path / "seed.png")
    assert shop.seed.display == "seed.png" and shop.seed.size == SIZE
    assert shop.seed.format == "PNG"
    assert shop.mask.sha256 == hashlib.sha256((tmp_path / "mask.png").read_bytes()).hexdigest()
    assert spec.matrix is not None
    assert spec.matrix.axes == (("styleType", ("DESIGN", "REALISTIC")),)
    assert spec.variants is None and spec.repeat == 1
    assert spec.output.dir == tmp_path / "out" / "demo" and spec.output.name == "{variant}"
    assert spec.budget.max_usd == Decimal("1") and spec.budget.max_tasks == 10_000
    assert spec.prices["ideogram:3@3"] == Decimal("0.05")
    assert spec.execution.concurrency == 2 and spec.execution.request_timeout_s == 5.0
    assert spec.execution.max_attempts == 3
    assert spec.loc("$.inputs.shop.seed") == Loc(str(path), 9, 11)
    assert spec.loc("$.matrix.styleType[1]") == Loc(str(path), 15, 23)


def test_paths_resolve_from_the_spec_folder_not_the_cwd(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "campaign"
    sub.mkdir()
    write_spec(sub)
    monkeypatch.chdir(tmp_path)
    spec = load_spec("campaign/spec.yaml")
    assert spec.inputs["shop"].seed.value == str(sub / "seed.png")
    assert spec.loc("$.name") == Loc("campaign/spec.yaml", 3, 7)


def test_package_prices_apply_without_override(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path))
    assert spec.prices["ideogram:3@3"] == models.MODELS["ideogram:3@3"].price_per_image


def test_other_image_kinds_are_accepted(tmp_path: Path) -> None:
    uuid = "6b5e1e2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
    text = BASE_SPEC.replace("seed: seed.png", f"seed: {uuid}").replace(
        "mask: mask.png", "mask: https://example.com/masks/m.png?size=large")
    spec = load_spec(write_spec(tmp_path, text))
    assert spec.inputs["shop"].seed == images_ref("uuid", uuid)
    assert spec.inputs["shop"].mask.kind == "url"
    for seed in ("seed.jpg", "seed.webp"):
        spec = load_spec(write_spec(tmp_path, BASE_SPEC.replace("seed.png", seed)))
        assert spec.inputs["shop"].seed.format == {"seed.jpg": "JPEG", "seed.webp": "WEBP"}[seed]


def images_ref(kind: str, value: str):
    from specrunner.spec.types import ImageRef
    return ImageRef(kind=kind, value=value, display=value)


def test_variants_spec(tmp_path: Path) -> None:
    text = BASE_SPEC.replace("matrix:\n  styleType: [DESIGN, REALISTIC]\n", (
        "variants:\n  - {id: first, styleType: DESIGN}\n"
        "  - {magicPrompt: \"OFF\", shop_name: OTHER}\n"))
    spec = load_spec(write_spec(tmp_path, text))
    assert spec.matrix is None and spec.variants is not None
    assert [(v.id, dict(v.values)) for v in spec.variants] == [
        ("first", {"styleType": "DESIGN"}), (None, {"magicPrompt": "OFF", "shop_name": "OTHER"})]


def test_every_problem_is_reported_most_relevant_first(tmp_path: Path) -> None:
    text = (BASE_SPEC.replace("name: demo", "name: Demo").replace("PNG", "GIF")
            .replace("{city}", "{town}").replace("seed: seed.png", "seed: gone.png")
            .replace("city: Lyon", "city: NO"))
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, text))
    got = [(d.code, d.loc.line if d.loc else None) for d in info.value.diagnostics]
    assert got == [("yaml-1.1", 6), ("invalid-value", 3), ("invalid-enum", 5),
                   ("undefined-variable", 13), ("image-missing", 9)]


def test_a_full_mask_is_a_warning_not_an_error(tmp_path: Path) -> None:
    path = write_spec(tmp_path, BASE_SPEC.replace("mask: mask.png", "mask: white.png"))
    spec, warnings = load_spec_checked(path)
    assert spec.name == "demo"
    assert [(w.severity, w.code) for w in warnings] == [("warning", "mask-full")]
    code, out, _ = run_cli(["validate", str(path)])
    assert code == 0 and "warning: mask edits every pixel" in out


def test_duplicate_variant_ids(tmp_path: Path) -> None:
    text = BASE_SPEC.replace("matrix:\n  styleType: [DESIGN, REALISTIC]\n",
                             "variants:\n  - {id: a}\n  - {id: a, styleType: DESIGN}\n")
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, text))
    (diag,) = info.value.diagnostics
    assert diag.code == "duplicate-id" and diag.loc == Loc(str(tmp_path / "spec.yaml"), 16, 10)


def test_secrets_are_rejected_and_never_repeated(tmp_path: Path) -> None:
    secret = "sk-live-0123456789abcdef"
    text = BASE_SPEC.replace("Lyon", secret).replace("PNG", secret)
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(tmp_path, text), secrets=[secret])
    assert secret not in str(info.value)
    assert {d.code for d in info.value.diagnostics} >= {"secret-in-spec"}
    assert "[redacted]" in str(info.value)  # the enum error would have echoed it


def test_the_canary_key_never_reaches_validate_output(tmp_path: Path) -> None:
    path = write_spec(tmp_path, BASE_SPEC.replace("PNG", CANARY))
    for fmt in ("text", "json"):
        code, out, err = run_cli(["validate", "--format", fmt, str(path)])
        assert code == 2 and CANARY not in out + err and "API key" in out


@pytest.mark.parametrize(
    "text, names",
    [("plain", []), ("{a} and {b_2}", ["a", "b_2"]), ("{{literal}} {x}", ["x"]),
     ("}}{{", []), ("{_x}{x}", ["_x", "x"])],
)
def test_template_fields(text: str, names: list[str]) -> None:
    assert template_fields(text) == names


@pytest.mark.parametrize("text", ["{0}", "{a.b}", "{a!r}", "{a:>3}", "{", "x}", "{a", "{}",
                                  "{ a }", "{a-b}"])
def test_template_syntax_errors(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        template_fields(text)


@pytest.mark.parametrize(
    "value, kind, problem",
    [("a.png", "file", None), ("dir/a b.png", "file", None), ("C:/x.png", "file", None),
     ("https://x.org/a.png", "url", None),
     ("6B5E1E2A-3C4D-4E5F-8A9B-0C1D2E3F4A5B", "uuid", None),
     ("http://x.org/a.png", "url", "only https"), ("HTTPS://u@x.org/a", "url", "credentials"),
     ("https:///a.png", "url", "no host"), ("file:///etc/passwd", "url", "only https"),
     ("https://x.org/a.png?api_key=1", "url", "credential-like")],
)
def test_image_reference_classes(value: str, kind: str, problem: str | None) -> None:
    got_kind, got_problem = images.classify_ref(value)
    assert got_kind == kind
    assert (got_problem is None) if problem is None else (problem in (got_problem or ""))


def test_committed_schema_is_generated_from_the_request_schema() -> None:
    committed = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert committed == build_schema()
    jsonschema.Draft202012Validator.check_schema(committed)
    ideogram = committed["$defs"]["defaults"]["properties"]["providerSettings"]
    assert "styleType" in ideogram["properties"]["ideogram"]["properties"]
    assert not set(committed["$defs"]["defaults"]["properties"]) & runware.RUNNER_FIELDS


def test_editor_schema_accepts_valid_and_rejects_invalid_specs(tmp_path: Path) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    data = yaml_load(write_spec(tmp_path)).data
    assert list(validator.iter_errors(data)) == []
    data["budget"] = {}
    data["matrix"]["include"] = [{"styleType": ["nested"]}]
    assert {e.validator for e in validator.iter_errors(data)} == {"required", "type"}


@pytest.mark.skipif(not EXAMPLES, reason="no example specs yet")
@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_point_editors_at_the_schema_and_validate(example: Path) -> None:
    first = example.read_text(encoding="utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    assert (example.parent / first[len(prefix):]).resolve() == SCHEMA_FILE.resolve()
    code, result = validate_json(example)
    assert code == 0 and result["valid"], result


def test_validate_text_output(tmp_path: Path) -> None:
    good = write_spec(tmp_path)
    bad = write_spec(tmp_path, BASE_SPEC.replace("budget:", "budjet:"), "bad.yaml")
    code, out, _ = run_cli(["validate", str(good), str(bad)])
    assert code == 2
    assert out.splitlines() == [
        # the valid spec leaves magicPrompt to Runware's default AUTO: a warning, and once a
        # note that the model takes no seed
        f"{good}:5:3: warning: magicPrompt is not set for 2 of 2 tasks, so Runware's default "
        '"AUTO" applies: the provider may rewrite each prompt before generating, so the image '
        "follows a prompt the plan does not show [$.defaults.providerSettings.ideogram] (set "
        'providerSettings.ideogram.magicPrompt: "OFF" in defaults to send prompts as written)',
        f"{good}:2:1: note: ideogram:3@3 takes no seed: every generation is a new image and "
        "none can be regenerated; an identical request is answered from the run record, not "
        "generated again [$.model] (`repeat: N` asks for N different images of each variant)",
        f"{good}: valid (2 tasks)",
        f"{bad}:16:1: error: unknown field `budjet` [$.budjet] (did you mean `budget`?)",
        "2 spec(s) checked: 1 valid, 1 invalid, 1 error(s), 1 warning(s)"]


def test_validate_json_output(tmp_path: Path) -> None:
    code, result = validate_json(write_spec(tmp_path))
    assert code == 0 and result["valid"] is True
    (entry,) = result["specs"]
    assert entry["file"] == str(tmp_path / "spec.yaml")
    assert [(d["severity"], d["code"], d["path"], d["line"]) for d in entry["diagnostics"]] == [
        ("warning", "magic-prompt", "$.defaults.providerSettings.ideogram", 5),
        ("note", "no-seed", "$.model", 2)]
    assert entry["planned"] is True and entry["tasks"] == 2
    code, result = validate_json(tmp_path / "missing.yaml")
    assert code == 2 and result["valid"] is False
    assert result["specs"][0]["diagnostics"][0] == {
        "file": str(tmp_path / "missing.yaml"), "line": None, "column": None, "path": "$",
        "code": "file-missing", "severity": "error",
        "hint": None, "message": "no such file"}


def test_python_dash_m_validate(tmp_path: Path) -> None:
    path = write_spec(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "specrunner", "validate", str(path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 valid, 0 invalid" in proc.stdout


def test_whole_floats_in_integer_fields_become_ints(tmp_path: Path) -> None:
    # JSON Schema counts 2.0 as an integer; the planner once read `numberResults: 2.0` as one
    # image (half the cost reserved), sent 2.0, and gave the task another key than `2`.
    from specrunner.plan import build_plan

    def planned(defaults: str, axis: str) -> list:
        text = BASE_SPEC.replace("  outputFormat: PNG\n", f"  outputFormat: PNG\n{defaults}")
        text = text.replace("  styleType: [DESIGN, REALISTIC]\n",
                            f"  styleType: [DESIGN, REALISTIC]\n{axis}")
        plan = build_plan(load_spec(write_spec(tmp_path, text)))
        return [(t.task_key, t.number_results, t.est_cost, dict(t.request)) for t in plan.tasks]

    floats = planned("  numberResults: 2.0\n", "  outputQuality: [90.0]\n")
    ints = planned("  numberResults: 2\n", "  outputQuality: [90]\n")
    assert floats == ints
    assert [(n, c) for _, n, c, _ in floats] == [(2, Decimal("0.16"))] * 2
    request = floats[0][3]
    assert type(request["numberResults"]) is int and type(request["outputQuality"]) is int
    variants = BASE_SPEC.split("matrix:")[0] + ("variants:\n  - {numberResults: 3.0}\n"
                                                "budget: {max_usd: 1}\n")
    plan = build_plan(load_spec(write_spec(tmp_path, variants)))
    assert plan.tasks[0].number_results == 3 and plan.total_cost == Decimal("0.24")
