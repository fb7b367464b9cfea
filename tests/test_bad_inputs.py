"""The bad-input corpus: each case runs `specrunner validate` in-process on one broken spec
and asserts exit code 2, the exact file:line:col of the first diagnostic, and its message.

Positions refer to tests/fixtures/specfiles.BASE_SPEC (16 lines), edited per case.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fixtures.specfiles import BASE_SPEC, run_cli, validate_json, write_spec
from PIL import Image

from specrunner.spec import images

CANARY = os.environ["RUNWARE_API_KEY"]


def r(*pairs: str) -> Callable[[str], str]:
    """An edit of BASE_SPEC: replace each old text (which must occur) by the new one."""

    def edit(text: str) -> str:
        for old, new in zip(pairs[::2], pairs[1::2], strict=True):
            assert old in text, old
            text = text.replace(old, new, 1)
        return text

    return edit


def add(extra: str) -> Callable[[str], str]:
    return lambda text: text + extra


@dataclass
class Case:
    id: str
    edit: Callable[[str], str] | None  # None: the file is written by `raw`
    line: int | None  # None: a problem of the whole file (no position)
    col: int | None
    fragment: str
    hint: str | None = None
    raw: bytes | None = None  # exact file bytes instead of an edit
    target: str | None = None  # validate this path (relative to tmp) instead of spec.yaml
    patch: dict = field(default_factory=dict)  # images module attributes to override
    needs_plan: bool = False


LOL = "".join(
    [
        "lol: &a [x, x, x, x, x, x, x, x, x]\n",
        *(f"l{i}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)),
    ]
)
ALIASES = "  styleType: [&s DESIGN, " + ", ".join(["*s"] * 101) + "]"
MAGIC = "  providerSettings: {ideogram: {magicPrompt: ON}}"
INCLUDE = "    - {styleType: DESIGN, magicPrompt: MAYBE}"
TOKEN = "    vars: {shop_name: MIRELLE, token: abc}"

CASES = [
    # files
    # a problem of the whole file has no position (line and column null)
    Case("file-missing", None, None, None, "no such file", target="nothere.yaml"),
    Case("file-missing-near-name", None, None, None, "no such file", target="spec.yml",
         hint="spec.yaml`?"),
    Case("file-is-folder", None, None, None, "is a folder", target="images"),
    Case("file-empty", None, None, None, "file is empty", raw=b""),
    Case("file-comments-only", None, None, None, "file is empty", raw=b"# nothing here\n\n"),
    Case("file-too-large", None, None, None, "larger than 5 MiB",
         raw=BASE_SPEC.encode() + b"#" * (5 * 1024 * 1024)),
    Case("not-utf8-latin1", None, 3, 8, "not UTF-8",
         raw=BASE_SPEC.encode().replace(b"demo", b"d\xe9mo")),
    Case("not-utf8-utf16", None, 1, 1, "not UTF-8", raw=BASE_SPEC.encode("utf-16")),
    # YAML syntax and structure
    Case("yaml-unclosed-flow", r("[DESIGN, REALISTIC]", "[DESIGN, REALISTIC"), 16, 7,
         "YAML syntax error"),
    Case("yaml-bad-indent", r("    mask: mask.png", "     mask: mask.png"), 10, 10,
         "mapping values are not allowed"),
    Case("yaml-control-char", r("Lyon", "Ly\x07on"), 6, 16, "special characters"),
    Case("yaml-not-mapping", None, 1, 1, "a spec is a mapping", raw=b"- a\n- b\n"),
    Case("several-documents", add("---\nversion: 1\n"), 17, 1, "several YAML documents"),
    Case("tag-python", r("name: demo", "name: !!python/object/apply:os.system [echo hi]"),
         3, 7, "tags are not allowed"),
    Case("tag-custom", r("Lyon", "!custom Lyon"), 6, 14, "found `!custom`"),
    Case("tag-core-str", r("version: 1", "version: !!str 1"), 2, 10, "found `!!str`"),
    Case("alias-count", r("  styleType: [DESIGN, REALISTIC]", ALIASES), 15,
         len("  styleType: [&s DESIGN, ") + 100 * len("*s, ") + 1, "more than 100 aliases"),
    Case("alias-bomb", add(LOL), 21, 9, "aliases expand to more than"),
    Case("nesting-too-deep", r("Lyon", "[" * 70 + "]" * 70), 6, 76, "nesting deeper than 64"),
    Case("duplicate-key", add("name: other\n"), 17, 1, "duplicate key `name` (first at line 3)"),
    Case("merge-key", r("  shop:\n", "  shop:\n    <<: {seed: a.png}\n"), 9, 5, "merge keys"),
    # unknown and missing fields
    Case("unknown-field", r("budget:", "budjet:"), 16, 1, "unknown field `budjet`",
         hint="did you mean `budget`?"),
    Case("unknown-nested-field", r("outputFormat", "outputFromat"), 5, 3,
         "unknown field `outputFromat`", hint="did you mean `outputFormat`?"),
    Case("unknown-provider-field",
         r("  outputFormat: PNG", "  providerSettings:\n    ideogram: {stlyeType: DESIGN}"),
         6, 16, "unknown field `stlyeType`", hint="did you mean `styleType`?"),
    Case("runner-field-in-defaults", r("outputFormat: PNG", "positivePrompt: hi"), 5, 3,
         "unknown field `positivePrompt`", hint="specrunner sets `positivePrompt` itself"),
    Case("missing-name", r("name: demo\n", ""), 2, 1, "missing required field `name`",
         hint="add it, for example `name: storefront-signage`"),
    Case("missing-version", r("version: 1\n", ""), 2, 1, "missing required field `version`",
         hint="add `version: 1`"),
    Case("missing-budget-max-usd", r("budget: {max_usd: 1}", "budget: {}"), 16, 9,
         "missing required field `max_usd`", hint="add it, for example `max_usd: 10`"),
    Case("missing-mask", r("    mask: mask.png\n", ""), 9, 5, "missing required field `mask`"),
    Case("missing-matrix-and-variants", r("matrix:\n  styleType: [DESIGN, REALISTIC]\n", ""),
         2, 1, "missing `matrix` or `variants`"),
    Case("matrix-and-variants", add("variants:\n  - {input: shop}\n"), 17, 1,
         "either `matrix` or `variants`"),
    # wrong types, YAML 1.1 surprises
    Case("version-as-text", r("version: 1", 'version: "1"'), 2, 10, "version must be 1"),
    Case("repeat-as-text", add('repeat: "3"\n'), 17, 9, "expected a whole number, got text",
         hint="remove the quotes: 3"),
    Case("budget-as-text", r("max_usd: 1", 'max_usd: "1"'), 16, 19,
         "expected a number, got text", hint="remove the quotes: 1"),
    Case("bool-as-text", r("outputFormat: PNG", 'safety: {checkContent: "true"}'), 5, 26,
         "expected true or false, got text", hint="remove the quotes: true"),
    Case("matrix-number-as-text",
         r("styleType: [DESIGN, REALISTIC]", 'numberResults: ["2", 3]'), 15, 19,
         "expected a whole number, got text", hint="remove the quotes: 2"),
    Case("var-as-number", r("city: Lyon", "city: 42"), 6, 14, "expected text, got the number 42",
         hint='quote it: "42"'),
    Case("yaml11-no", r("shop_name: MIRELLE", "shop_name: NO"), 11, 23,
         "`NO` is the boolean false to YAML 1.1 readers", hint="write false"),
    Case("yaml11-octal", r("city: Lyon", "city: 0755"), 6, 14, "`0755` is the number 493"),
    Case("yaml11-date", r("city: Lyon", "city: 2024-01-01"), 6, 14, "is the date 2024-01-01"),
    Case("yaml11-exponent", r("city: Lyon", "city: 1e3"), 6, 14, 'quote it: "1e3"'),
    Case("yaml11-on-in-enum", r("  outputFormat: PNG", MAGIC), 5, MAGIC.index("ON") + 1,
         "`ON` is the boolean true"),
    # ranges and enums
    Case("repeat-zero", add("repeat: 0\n"), 17, 9, "must be at least 1, got 0"),
    Case("budget-zero", r("max_usd: 1", "max_usd: 0"), 16, 19, "must be greater than 0"),
    Case("quality-out-of-range", r("outputFormat: PNG", "outputQuality: 10"), 5, 18,
         "must be at least 20"),
    Case("concurrency-too-high", add("execution: {concurrency: 1000}\n"), 17, 26,
         "must be at most 256"),
    Case("enum-output-format", r("PNG", "GIF"), 5, 17, "`GIF` is not one of: JPG, PNG, WEBP"),
    Case("enum-mask-polarity", r("mask.png\n", "mask.png\n    mask_polarity: white\n"), 11, 20,
         "`white` is not one of"),
    Case("enum-matrix-value", r("[DESIGN, REALISTIC]", "[DESIGN, design]"), 15, 23,
         "`design` is not one of", hint="did you mean `DESIGN`?"),
    Case("enum-include-value", add("") if False else r(
        "  styleType: [DESIGN, REALISTIC]\n",
        f"  styleType: [DESIGN, REALISTIC]\n  include:\n{INCLUDE}\n"), 17,
         INCLUDE.index("MAYBE") + 1, "`MAYBE` is not one of: AUTO, ON, OFF"),
    # names and model ids
    Case("model-malformed", r("name: demo\n", "name: demo\nmodel: ideogram3\n"), 4, 8,
         "model must be a Runware model id"),
    Case("model-unknown", r("name: demo\n", "name: demo\nmodel: ideogram:9@9\n"), 4, 8,
         "unknown model `ideogram:9@9`"),
    Case("name-pattern", r("name: demo", "name: Demo Shop"), 3, 7, "name must be 1-64 lowercase"),
    # templates and combination keys
    Case("undefined-variable", r("{shop_name}", "{shopname}"), 13, 9,
         "uses {shopname}, which is not defined", hint="did you mean `shop_name`?"),
    Case("template-positional", r("{city}", "{0}"), 13, 9, "`{0}` is not a variable"),
    Case("template-attribute", r("{city}", "{city.name}"), 13, 9, "`{city.name}` is not"),
    Case("template-unbalanced", r("A sign reading", "A sign } reading"), 13, 9, "single `}`"),
    # a plain one-line scalar: the error points at the brace itself
    Case("template-plain-column", r('"A sign reading {shop_name} in {city}"',
                                    "A sign reading {shop_name} in {0}"),
         13, 9 + len("A sign reading {shop_name} in "), "`{0}` is not a variable"),
    Case("template-plain-unclosed", r('"A sign reading {shop_name} in {city}"',
                                      "A sign reading {shop_name in {city}"),
         13, 9 + len("A sign reading "), "unclosed `{`"),
    Case("output-template-plain-column", add("output:\n  name: x}y\n"), 18,
         len("  name: x") + 1, "single `}`"),
    Case("output-undefined-variable", add('output: {name: "{variant}-{colour}"}\n'), 17, 16,
         "the output name uses {colour}"),
    Case("output-escapes-dotdot", add('output: {name: "../{variant}"}\n'), 17, 16,
         "inside the output folder"),
    Case("output-escapes-absolute", add('output: {name: "/tmp/{variant}"}\n'), 17, 16,
         "inside the output folder"),
    Case("matrix-unknown-key", r("  styleType:", "  stlyeType:"), 15, 3,
         "unknown key `stlyeType`", hint="did you mean `styleType`?"),
    Case("matrix-unknown-input", r("matrix:\n", "matrix:\n  input: [shop, shoe]\n"), 15, 17,
         "unknown input `shoe`", hint="did you mean `shop`?"),
    Case("matrix-must-choose-prompt",
         r('  sign: "A', '  other: "B"\n  sign: "A'), 16, 3, "must choose the prompt"),
    Case("prompt-empty", r('"A sign reading {shop_name} in {city}"', '""'), 13, 9,
         "must not be empty"),
    Case("prompt-too-long", r('"A sign reading {shop_name} in {city}"', "x" * 2001), 13, 9,
         "Runware accepts at most 2000"),
    # URLs and local images
    Case("url-http", r("seed: seed.png", "seed: http://example.com/s.png"), 9, 11,
         "only https URLs are accepted, not http:"),
    Case("url-ftp", r("seed: seed.png", "seed: ftp://example.com/s.png"), 9, 11, "not ftp:"),
    Case("url-data", r("seed: seed.png", "seed: data:image/png;base64,AAAA"), 9, 11, "not data:"),
    Case("url-credentials", r("seed: seed.png", "seed: https://me:pw@example.com/s.png"), 9, 11,
         "URL contains credentials"),
    Case("url-token-param", r("mask: mask.png", "mask: https://example.com/m.png?token=abc"),
         10, 11, "credential-like parameter `token`"),
    Case("image-missing", r("seed: seed.png", "seed: gone.png"), 9, 11, "gone.png: file not found",
         hint="paths are relative to the spec's folder, "),
    Case("image-missing-near-name", r("mask: mask.png", "mask: mask-40X24.pgn"), 10, 11,
         "mask-40X24.pgn: file not found", hint="did you mean `mask-40x24.png`?"),
    Case("image-missing-near-name-in-folder", r("mask: mask.png", "mask: images/cabin_mask.png"),
         10, 11, "file not found", hint="did you mean `images/cabin-mask.png`?"),
    Case("image-folder", r("seed: seed.png", "seed: images"), 9, 11, "is not a file"),
    # base64 pasted where a path goes: too long a name for the filesystem, not a traceback
    Case("image-path-too-long", r("seed: seed.png", "seed: " + "QUFB" * 1000), 9, 11,
         "QUFB" * 15 + "... (4,000 characters): cannot use this path"),
    Case("image-not-an-image", r("seed: seed.png", "seed: notes.png"), 9, 11, "not an image"),
    Case("image-gif", r("seed: seed.png", "seed: anim.gif"), 9, 11, "is a GIF image"),
    Case("image-size-mismatch", r("mask: mask.png", "mask: mask-40x24.png"), 10, 11,
         "mask is 40x24 pixels but the seed is 32x24"),
    Case("mask-empty", r("mask: mask.png", "mask: black.png"), 10, 11, "mask is empty"),
    Case("mask-empty-black-edits",
         r("mask: mask.png\n", "mask: white.png\n    mask_polarity: black-edits\n"), 10, 11,
         "mask is empty: every pixel is white"),
    Case("mask-polarity-needs-local-file",
         r("mask: mask.png\n",
           "mask: https://example.com/m.png\n    mask_polarity: black-edits\n"), 11, 20,
         "black-edits needs a local mask file"),
    Case("image-too-many-bytes", None, 9, 11, "file is too large", patch={"MAX_FILE_BYTES": 10}),
    Case("image-too-many-pixels", None, 9, 11, "image is 32x24 pixels",
         patch={"MAX_PIXELS": 100}),
    # credentials
    Case("secret-key-name", add("apiKey: abcdef123456\n"), 17, 1,
         "`apiKey` looks like a credential"),
    Case("secret-nested-token", r("    vars: {shop_name: MIRELLE}", TOKEN), 11,
         TOKEN.index("token") + 1, "`token` looks like a credential"),
    Case("secret-env-key", r("A sign reading", f"A sign {CANARY} reading"), 13, 9,
         "contains the API key"),
    Case("secret-bearer", r("city: Lyon", "city: Bearer abcdefghijkl"), 6, 14,
         "looks like an Authorization header"),
    # expansion-time checks (plan.py)
    Case("plan-task-cap", r("max_usd: 1", "max_usd: 1, max_tasks: 1"), 16,
         len("budget: {max_usd: 1, max_tasks: ") + 1, "max_tasks is 1", needs_plan=True),
    Case("plan-over-budget", r("max_usd: 1", "max_usd: 0.1"), 16, 19, "$0.16", needs_plan=True),
    Case("plan-output-collision", add('output: {name: "same"}\n'), 17, 16, "both write",
         needs_plan=True),
    Case("plan-prompt-too-long-rendered", r("shop_name: MIRELLE", "shop_name: " + "W" * 1990),
         13, 9, "2013 characters", needs_plan=True),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_spec(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = write_spec(tmp_path, case.edit(BASE_SPEC) if case.edit else BASE_SPEC)
    if case.raw is not None:
        spec.write_bytes(case.raw)
    for name, value in case.patch.items():
        monkeypatch.setattr(images, name, value)
    Image.new("L", (32, 24), 255).save(tmp_path / "images" / "cabin-mask.png")
    target = tmp_path / case.target if case.target else spec
    code, result = validate_json(target)
    assert code == 2
    assert result["valid"] is False
    diags = result["specs"][0]["diagnostics"]
    assert diags, "an invalid spec must come with diagnostics"
    first = diags[0]
    assert (first["file"], first["line"], first["column"]) == (str(target), case.line, case.col), \
        diags
    assert case.fragment in first["message"], first["message"]
    if case.hint is not None:
        assert case.hint in (first["hint"] or ""), first
    assert CANARY not in repr(result)


def test_corpus_is_large_enough() -> None:
    assert len([c for c in CASES if not c.needs_plan]) >= 40


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["validate", "--format", "xml", "x.yaml"], "invalid choice: 'xml'"),
        (["validate"], "the following arguments are required: SPEC"),
        (["validate", "--frmat", "json", "x.yaml"], "unrecognized arguments"),
    ],
)
def test_invalid_cli_values(argv: list[str], fragment: str) -> None:
    code, _out, err = run_cli(argv)
    assert code == 2
    assert fragment in err
