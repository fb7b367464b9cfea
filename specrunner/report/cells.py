"""Table cells from text that may come from anyone (axis values, variant ids, error messages
from a server): always one line, and in Markdown shown literally.

A Markdown cell escapes what could change the document's structure: `|` (a new cell), line
breaks (a new row), `<` (raw HTML, autolinks), `&` before an entity, `[` `]` (links and
images), `` ` `` (code spans), `*` `~` and word-edge `_` (emphasis), and `\\` itself, so no
escape of ours can be undone. `_` inside a word (RENDER_3D, shop_name) is left as it is.
"""

from __future__ import annotations

import re
from typing import Any

_MD = re.compile(r"[\\|\[\]`*~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_ENTITY = re.compile(r"&(?=#?[A-Za-z0-9]+;)")


def one_line(value: Any) -> str:
    """`value` as text with every run of whitespace, line breaks included, one space."""
    return " ".join(str(value).split())


def markdown(value: Any) -> str:
    """`value` as literal text inside a GitHub Markdown table cell (or heading)."""
    text = _MD.sub(lambda m: "\\" + m.group(0), one_line(value))
    return _ENTITY.sub("&amp;", text).replace("<", "&lt;")


def cell(value: Any, md: bool) -> str:
    """A table cell: Markdown-escaped when `md`, else one line of plain text."""
    return markdown(value) if md else one_line(value)
