"""templates.py: the one parser of `{name}` / `{{ }}` templates (prompts and output names)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from specrunner.spec import templates
from specrunner.spec.templates import Template, TemplateError, escape, parse

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@pytest.mark.parametrize(
    "text, names, rendered",
    [
        ("plain", (), "plain"),
        ("{a} and {b_2}", ("a", "b_2"), "A and B"),
        ("{{literal}} {a}", ("a",), "{literal} A"),
        ("}}{{", (), "}{"),
        ("{{{a}}}", ("a",), "{A}"),
        ("{a}{a}{_x}", ("a", "_x"), "AAX"),
        ("", (), ""),
    ],
)
def test_parse_and_render(text: str, names: tuple[str, ...], rendered: str) -> None:
    tpl = parse(text)
    assert isinstance(tpl, Template)
    assert tpl.names == names
    assert tpl.render({"a": "A", "b_2": "B", "_x": "X"}) == rendered


@pytest.mark.parametrize(
    "text, offset, fragment",
    [
        ("{0}", 0, "`{0}` is not a variable"),
        ("ab {a.b}", 3, "`{a.b}` is not a variable"),
        ("{a!r}", 0, "`{a!r}` is not a variable"),
        ("{a:>3}", 0, "`{a:>3}` is not a variable"),
        ("{}", 0, "`{}` is not a variable"),
        ("{ a }", 0, "`{ a }` is not a variable"),
        ("{a-b}", 0, "`{a-b}` is not a variable"),
        ("x {", 2, "unclosed `{`"),
        ("{a", 0, "unclosed `{`"),
        ("{a {b}", 0, "unclosed `{`"),
        ("{{ {x} }", 7, "single `}`"),
        ("x}", 1, "single `}`"),
        ("{a}}", 3, "single `}`"),
    ],
)
def test_errors_are_values_with_the_offset(text: str, offset: int, fragment: str) -> None:
    err = parse(text)
    assert isinstance(err, TemplateError)
    assert err.offset == offset
    assert fragment in err.message and str(err) == err.message


def test_literal_leaves_placeholders_out() -> None:
    tpl = parse("{{x}} {a} y")
    assert isinstance(tpl, Template) and tpl.literal == "{x}  y"


def test_render_names_the_missing_variable() -> None:
    tpl = parse("{a} {b}")
    assert isinstance(tpl, Template)
    with pytest.raises(KeyError, match="b"):
        tpl.render({"a": "1"})


def test_template_fields_raises_for_callers_that_want_an_exception() -> None:
    assert templates.template_fields("{a} {b} {a}") == ["a", "b"]
    with pytest.raises(templates.TemplateSyntaxError, match="at character 3"):
        templates.template_fields("ab}")


@given(TEXT)
def test_escaped_literal_text_round_trips(text: str) -> None:
    tpl = parse(escape(text))
    assert isinstance(tpl, Template)
    assert tpl.names == ()
    assert tpl.render({}) == text == tpl.literal


@given(st.lists(st.one_of(TEXT.map(lambda t: ("lit", t)), NAMES.map(lambda n: ("var", n))),
                max_size=8))
def test_mixed_templates_render_exactly(segments: list[tuple[str, str]]) -> None:
    source = "".join(escape(v) if kind == "lit" else "{" + v + "}" for kind, v in segments)
    ns = {v: f"<{v}>" for kind, v in segments if kind == "var"}
    tpl = parse(source)
    assert isinstance(tpl, Template)
    assert tpl.names == tuple(dict.fromkeys(v for kind, v in segments if kind == "var"))
    assert tpl.render(ns) == "".join(v if kind == "lit" else ns[v] for kind, v in segments)


@given(TEXT)
def test_any_text_parses_or_points_at_a_brace(text: str) -> None:
    parsed = parse(text)
    if isinstance(parsed, TemplateError):
        assert text[parsed.offset] in "{}"
    else:  # its canonical spelling parses to the same template
        canonical = "".join(escape(lit) + ("{" + n + "}" if n else "") for lit, n in parsed.parts)
        assert parse(canonical) == parsed
