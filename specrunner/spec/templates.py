"""`{name}` templates, the syntax of prompts and output names: parse once, render per task.

Syntax:
- `{name}` is replaced by the variable `name` (an ASCII letter or `_`, then ASCII letters,
  digits or `_`);
- `{{` is a literal `{`, and `}}` a literal `}`;
- anything else is an error: a lone `{` or `}`, and braces around anything but a name
  (`{}`, `{0}`, `{a.b}`, `{a!r}`, `{a:>3}`, `{ a }`): Python's format mini-language is not
  part of the syntax, so a prompt never changes meaning with the Python version.

`parse(text)` returns a `Template` or, for invalid text, a `TemplateError` value whose
`offset` is the 0-based index in `text` where the problem starts, so a caller can point at
the exact column. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(r"\{\{|\}\}|\{(" + _NAME + r")\}|[{}]")


@dataclass(frozen=True)
class TemplateError:
    """Why a text is not a valid template; `offset` is the 0-based index of the culprit brace."""

    message: str
    offset: int

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Template:
    """A parsed template: literal text (escapes resolved) alternating with variable names."""

    parts: tuple[tuple[str, str | None], ...]  # (literal text, variable name or None)
    names: tuple[str, ...]  # distinct variable names, in order of first use
    # The same template in str.format syntax, so that rendering (once per task: a million
    # times for a plan of a million tasks) is one call into C. Names are identifiers, so
    # `{name}` is a plain key lookup there; literal braces are doubled.
    _format: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_format", "".join(
            lit.replace("{", "{{").replace("}", "}}") + (f"{{{name}}}" if name else "")
            for lit, name in self.parts))

    def render(self, ns: Mapping[str, str]) -> str:
        """The text with every variable substituted; KeyError names a missing variable."""
        return self._format.format_map(ns)

    @property
    def literal(self) -> str:
        """The text without its placeholders, escapes resolved (what no variable changes)."""
        return "".join(lit for lit, _ in self.parts)


def parse(text: str) -> Template | TemplateError:
    """Parse `text`; a TemplateError (returned, not raised) locates the first problem."""
    parts: list[tuple[str, str | None]] = []
    lit: list[str] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        lit.append(text[pos:m.start()])
        pos = m.end()
        tok = m.group(0)
        if tok in ("{{", "}}"):
            lit.append(tok[0])
        elif m.group(1):
            parts.append(("".join(lit), m.group(1)))
            lit = []
        else:
            return _error(text, m.start())
    lit.append(text[pos:])
    parts.append(("".join(lit), None))
    return Template(tuple(parts), tuple(dict.fromkeys(n for _, n in parts if n)))


def _error(text: str, at: int) -> TemplateError:
    if text[at] == "}":
        return TemplateError("single `}`; write `}}` for a literal brace", at)
    end = text.find("}", at)
    if end < 0 or "{" in text[at + 1:end]:
        return TemplateError("unclosed `{`; write `{{` for a literal brace", at)
    return TemplateError(f"`{text[at:end + 1]}` is not a variable: use {{name}} (letters, "
                         "digits, _); write {{ and }} for literal braces", at)


def escape(text: str) -> str:
    """A template whose rendering is exactly `text` (braces doubled)."""
    return text.replace("{", "{{").replace("}", "}}")


class TemplateSyntaxError(ValueError):
    """Raised by `template_fields` for text that `parse` refuses."""


def template_fields(text: str) -> list[str]:
    """The variable names a template uses; TemplateSyntaxError if it is not a template."""
    parsed = parse(text)
    if isinstance(parsed, TemplateError):
        raise TemplateSyntaxError(f"{parsed.message} (at character {parsed.offset + 1})")
    return list(parsed.names)
