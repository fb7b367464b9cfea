"""yamlload: positions, YAML 1.2 scalars with YAML 1.1 warnings, and every rejection."""

from __future__ import annotations

import math
import tracemalloc
from pathlib import Path

import pytest

from specrunner.errors import Loc, SpecError
from specrunner.spec import yamlload


@pytest.fixture(autouse=True, params=sorted(yamlload._COMPOSERS))
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on libyaml's events (the default when built in) and on PyYAML's own."""
    monkeypatch.setattr(yamlload, "PARSER", request.param)
    return str(request.param)


def test_libyaml_is_the_default_when_available() -> None:
    import yaml
    assert ("libyaml" in yamlload._COMPOSERS) == bool(yaml.__with_libyaml__)


def load_text(tmp_path: Path, text: str | bytes) -> yamlload.Loaded:
    path = tmp_path / "x.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return yamlload.load(path, "x.yaml")


def fail(tmp_path: Path, text: str | bytes) -> tuple[str, Loc, str]:
    with pytest.raises(SpecError) as info:
        load_text(tmp_path, text)
    (diag,) = info.value.diagnostics
    return diag.code, diag.loc, diag.message


def test_positions_of_values_and_keys(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "inputs:\n  bakery:\n    seed: a.png\nmatrix:\n  include:\n"
                                 "    - {color: red}\n    - color: blue\n")
    assert loaded.data == {"inputs": {"bakery": {"seed": "a.png"}},
                           "matrix": {"include": [{"color": "red"}, {"color": "blue"}]}}
    assert loaded.locs["$.inputs.bakery.seed"] == Loc("x.yaml", 3, 11)
    assert loaded.key_locs["$.inputs.bakery.seed"] == Loc("x.yaml", 3, 5)
    assert loaded.locs["$.matrix.include[0].color"] == Loc("x.yaml", 6, 15)
    assert loaded.locs["$.matrix.include[1]"] == Loc("x.yaml", 7, 7)
    assert loaded.locs["$.matrix.include[1].color"] == Loc("x.yaml", 7, 14)


@pytest.mark.parametrize(
    "text, value",
    [("~", None), ("null", None), ("true", True), ("False", False), ("42", 42), ("-7", -7),
     ("0x1F", 31), ("0o17", 15), ("1.5", 1.5), ("1e3", 1000.0), (".inf", math.inf),
     ("NO", "NO"), ("yes", "yes"), ("off", "off"), ("0755", 755), ("2024-01-01", "2024-01-01"),
     ("1_000", "1_000"), ("12:30", "12:30"), ("y", "y"), ("ideogram:3@3", "ideogram:3@3")],
)
def test_scalars_follow_yaml_12_core(text: str, value: object) -> None:
    assert yamlload.resolve_scalar(text) == value
    assert type(yamlload.resolve_scalar(text)) is type(value)


@pytest.mark.parametrize(
    "text, fragment",
    [("NO", "the boolean false to YAML 1.1 readers but text"),
     ("on", "the boolean true"), ("0755", "the number 493 to YAML 1.1 readers but the number 755"),
     ("2024-01-01", "the date 2024-01-01"), ("1e3", "text to YAML 1.1 readers but the number"),
     ("1_000", "the number 1000"), ("12:30", "the number 750")],
)
def test_yaml11_differences_are_flagged(tmp_path: Path, text: str, fragment: str) -> None:
    loaded = load_text(tmp_path, f"a: {text}\n")
    (note,) = loaded.notes
    assert (note.code, note.path, note.loc) == ("yaml-1.1", "$.a", Loc("x.yaml", 1, 4))
    assert fragment in note.message and f'quote it: "{text}"' in note.message


@pytest.mark.parametrize("text", ['"NO"', "'0755'", "true", "12", "1.5", "Lyon", "null"])
def test_unambiguous_scalars_are_not_flagged(tmp_path: Path, text: str) -> None:
    assert load_text(tmp_path, f"a: {text}\n").notes == ()


def test_aliases_within_bounds_work_and_are_located_at_the_alias(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "a: &x {b: 1}\nc: *x\n")
    assert loaded.data == {"a": {"b": 1}, "c": {"b": 1}}
    assert loaded.locs["$.c"] == Loc("x.yaml", 2, 4)


def test_billion_laughs_fails_fast_in_bounded_memory(tmp_path: Path) -> None:
    lines = ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        prev, cur = chr(96 + i), chr(97 + i)
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    tracemalloc.start()
    try:
        code, _, message = fail(tmp_path, "\n".join(lines) + "\n")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == "alias-limit" and "expand to more than" in message
    assert peak < 30 * 1024 * 1024


def test_too_many_alias_uses(tmp_path: Path) -> None:
    code, loc, _ = fail(tmp_path, "a: &x 1\nb: [" + ", ".join(["*x"] * 101) + "]\n")
    assert code == "alias-limit" and loc == Loc("x.yaml", 2, 5 + 100 * 4)


def test_recursive_alias(tmp_path: Path) -> None:
    assert fail(tmp_path, "a: &a [1, *a]\n")[:2] == ("alias-recursive", Loc("x.yaml", 1, 11))


def test_nesting_limit(tmp_path: Path) -> None:
    assert load_text(tmp_path, "[" * 64 + "]" * 64).data is not None
    code, loc, _ = fail(tmp_path, "[" * 65 + "]" * 65)
    assert (code, loc) == ("too-deep", Loc("x.yaml", 1, 65))
    assert fail(tmp_path, "[" * 100_000)[0] in ("too-deep", "yaml-syntax")


def test_tags_are_collected_and_never_constructed(tmp_path: Path) -> None:
    victim = tmp_path / "created-by-yaml"
    loaded = load_text(tmp_path, f"a: !!python/object/apply:os.mkdir ['{victim}']\n"
                                 "b: !custom 1\nc: !!str 2\nd: ! 3\n")
    assert not victim.exists()
    assert [(n.code, n.path, n.loc.line) for n in loaded.notes] == [
        ("yaml-tag", "$.a", 1), ("yaml-tag", "$.b", 2), ("yaml-tag", "$.c", 3),
        ("yaml-tag", "$.d", 4)]
    assert "!!python/object/apply:os.mkdir" in loaded.notes[0].message


def test_duplicate_keys_keep_the_first_and_are_reported(tmp_path: Path) -> None:
    loaded = load_text(tmp_path, "a: 1\nb: 2\na: 3\n")
    assert loaded.data == {"a": 1, "b": 2}
    (note,) = loaded.notes
    assert (note.code, note.loc, note.message) == (
        "duplicate-key", Loc("x.yaml", 3, 1), "duplicate key `a` (first at line 1)")


@pytest.mark.parametrize(
    "text, code, line, col",
    [("a: 1\n---\nb: 2\n", "multiple-documents", 2, 1),
     ("a: [1, 2\nb: 3\n", "yaml-syntax", 2, 2), ("a: 'x\n", "yaml-syntax", 2, 1),
     ("a: \x00\n", "yaml-syntax", 1, 4), ("? [a]\n: 1\n", "complex-key", 1, 3),
     ("<<: {a: 1}\n", "merge-key", 1, 1),
     (b"a: 1\nb: \xc3\x28\n", "not-utf8", 2, 4), ("\ufeffa: 1\nb: [\n", "yaml-syntax", 3, 1)],
)
def test_rejections_are_located(tmp_path: Path, text: str | bytes, code: str, line: int,
                                col: int) -> None:
    assert fail(tmp_path, text)[:2] == (code, Loc("x.yaml", line, col))


@pytest.mark.parametrize("text", ["", "# only a comment\n", "\n\n"])
def test_an_empty_file_is_a_problem_of_the_whole_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "x.yaml").write_text(text)
    with pytest.raises(SpecError) as info:
        yamlload.load(tmp_path / "x.yaml", "x.yaml")
    (d,) = info.value.diagnostics
    assert (d.code, d.loc, d.file) == ("file-empty", None, "x.yaml")
    assert d.format() == "x.yaml: error: file is empty (no YAML content)"


def test_bom_is_accepted(tmp_path: Path) -> None:
    assert load_text(tmp_path, "\ufeffa: 1\n").data == {"a": 1}


def test_file_level_rejections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SpecError, match="no such file"):
        yamlload.load(tmp_path / "missing.yaml")
    with pytest.raises(SpecError, match="is a folder"):
        yamlload.load(tmp_path)
    monkeypatch.setattr(yamlload, "MAX_BYTES", 10)
    (tmp_path / "big.yaml").write_text("a: 12345678901\n")
    with pytest.raises(SpecError) as info:
        yamlload.load(tmp_path / "big.yaml")
    assert info.value.diagnostics[0].code == "file-too-large"


def test_keys_are_always_text(tmp_path: Path) -> None:
    assert load_text(tmp_path, "1: a\ntrue: b\nNO: c\n").data == {"1": "a", "true": "b", "NO": "c"}


# --- positions count lines as editors do: \n, \r\n and a lone \r; never NEL, LS or PS ------

@pytest.mark.parametrize("nl", ["\n", "\r\n", "\r"])
def test_positions_with_every_line_ending(tmp_path: Path, nl: str) -> None:
    loaded = load_text(tmp_path, nl.join(["a: 1", "b:", "  c: [x, y]", "d: 'z'", ""]))
    assert loaded.locs["$.b.c[1]"] == Loc("x.yaml", 3, 10)
    assert loaded.key_locs["$.d"] == Loc("x.yaml", 4, 1)


@pytest.mark.parametrize("nl", ["\n", "\r\n", "\r"])
def test_reader_and_encoding_errors_located_with_every_line_ending(tmp_path: Path,
                                                                   nl: str) -> None:
    text = nl.join(["a: 1", "b: 2", "c: x\x01y", ""])
    assert fail(tmp_path, text)[:2] == ("yaml-syntax", Loc("x.yaml", 3, 5))
    raw = nl.join(["a: 1", "bé: 2", "c: x\xffy", ""]).encode("latin-1").replace(
        b"b\xe9", "bé".encode())
    assert fail(tmp_path, raw)[:2] == ("not-utf8", Loc("x.yaml", 3, 5))
    assert fail(tmp_path, b"\xef\xbb\xbf" + raw)[:2] == ("not-utf8", Loc("x.yaml", 3, 5))


@pytest.mark.parametrize("sep", ["\u0085", "\u2028", "\u2029"])
def test_unicode_line_separators_do_not_shift_positions(tmp_path: Path, sep: str) -> None:
    # PyYAML counts NEL/LS/PS as line breaks (YAML 1.1); YAML 1.2 and editors do not.
    loaded = load_text(tmp_path, f"a: 'x{sep}y'\nb: [1, 2]\n")
    assert loaded.locs["$.b[1]"] == Loc("x.yaml", 2, 8)
    code, loc, _ = fail(tmp_path, f"a: 'x{sep}y'\nb: [1, 2\n")
    assert (code, loc.line) == ("yaml-syntax", 3)
