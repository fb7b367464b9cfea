"""Markdown output shows hostile values literally: a `|` or a line break in a value never
makes a new cell or row, and raw HTML, links and images never become markup. Checked with a
real CommonMark + GFM-tables parser (markdown-it-py), not with string searches alone."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from html.parser import HTMLParser
from typing import Any

import pytest
from markdown_it import MarkdownIt

from specrunner.report import diff as rundiff
from specrunner.report import summary
from specrunner.report.cells import markdown, one_line

HOSTILE = [
    "a|b", "line1\nline2\r\nline3", "<img src=x onerror=alert(1)>", "![x](https://e/x.png)",
    "[click](https://e/)", "<https://e/>", "`code|cell`", "**bold** _em_ ~~gone~~",
    "back\\|slash\\", "&lt;script&gt;", "<script>alert(1)</script>", "RENDER_3D", "| x |",
]
MD = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")
STRUCTURE = {"h2", "h3", "p", "table", "thead", "tbody", "tr", "th", "td"}


class Tables(HTMLParser):
    """Collects every element name, and each table as rows of cell texts."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: set[str] = set()
        self.tables: list[list[list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        self.tags.add(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append("".join(self.cell))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def parse(text: str) -> Tables:
    p = Tables()
    p.feed(MD.render(text))
    return p


@pytest.mark.parametrize("value", HOSTILE)
def test_one_cell_renders_as_its_literal_text(value: str) -> None:
    page = parse(f"| h |\n|---|\n| {markdown(value)} |\n")
    assert page.tags <= STRUCTURE, page.tags
    assert page.tables == [[["h"], [one_line(value)]]]


def task(i: int, value: str, *, failed: bool = False) -> summary.TaskInfo:
    return summary.TaskInfo(
        index=i, variant_id=f"v{i}-{value}", task_key=f"k{i}", state="failed" if failed else
        "done", status="failed" if failed else "done", axes=(("tone", value),),
        est_cost=Decimal("0.08"), cost=None if failed else Decimal("0.08"), number_results=1,
        images=(), error_code=f"code|{i}" if failed else None,
        error_message=f"<b>boom</b>\n| {value}" if failed else None, sends=1, latency_s=None)


def run_data(values: list[str], name: str) -> summary.RunData:
    return summary.RunData(
        name=name, spec_path="spec.yaml", status="failed", runs=1, started_at=None,
        ended_at=None, wall_s=1.0, budget=Decimal("1"), axes=("tone",),
        tasks=tuple(task(i, v, failed=i % 2 == 1) for i, v in enumerate(values)),
        request_latencies=(), new_uuids=0, warnings=("a note with <img src=x> | and\nbreak",))


def check_tables(text: str, allowed: frozenset[str] = frozenset()) -> Tables:
    page = parse(text)
    assert page.tags <= STRUCTURE | allowed, page.tags
    for table in page.tables:
        assert len({len(row) for row in table}) == 1, table  # every row as wide as the header
    return page


def test_report_markdown_escapes_every_cell() -> None:
    s = summary.summarize(run_data(HOSTILE, "evil<img src=x>"), ["tone"])
    text = summary.render(s, "markdown")
    page = check_tables(text)
    by_tone = page.tables[1]
    assert [row[0] for row in by_tone[1:]] == [one_line(v) for v in HOSTILE]
    failures = page.tables[-1]
    assert [row[2:] for row in failures[1:]] == [
        [f"code|{i}", one_line(f"<b>boom</b>\n| {HOSTILE[i]}")]
        for i in range(1, len(HOSTILE), 2)]
    assert "note: a note with &lt;img src=x> \\| and break" in text
    assert text.splitlines()[0].startswith("## run evil&lt;img src=x>: failed")


def test_table_format_keeps_each_value_on_one_line() -> None:
    text = summary.render(summary.summarize(run_data(HOSTILE, "x"), ["tone"]), "table")
    assert "line1 line2 line3" in text and "line1\n" not in text


def test_diff_markdown_escapes_every_cell() -> None:
    a = summary.summarize(run_data(HOSTILE, "a"), [])
    b_data = run_data(HOSTILE[::-1], "b")
    b = summary.summarize(dataclasses.replace(b_data, tasks=b_data.tasks[:-1]), [])
    d = rundiff.compare(a, b, ["tone"])
    page = check_tables(rundiff.render(d, "markdown"))
    variants = next(t for t in page.tables if t[0][0] == "variant")
    listed = [*d.added, *d.removed, *(c.variant for c in d.changed)]
    assert len(listed) > len(HOSTILE)
    assert [row[0] for row in variants[1:]] == [one_line(v) for v in listed]
    by_tone = next(t for t in page.tables if t[0][0] == "tone")
    assert {row[0] for row in by_tone[1:]} == {one_line(v) for v in HOSTILE}


def test_a_change_names_the_request_fields() -> None:
    kw: dict[str, Any] = {"variant": "v", "outputs_changed": True, "status": ("done", "failed"),
                          "cost": (Decimal(0), Decimal(0))}
    assert rundiff.Change(request_changed=True, request_fields=("positivePrompt",),
                          **kw).kinds() == "request: positivePrompt; outputs; status"
    # same fields, another key (another mask polarity or specrunner version)
    assert rundiff.Change(request_changed=True, **kw).kinds() == \
        "request: task key; outputs; status"


def test_plan_markdown_escapes_axis_values(tmp_path: Any) -> None:
    import json

    from fixtures.specfiles import BASE_SPEC, run_cli, write_spec

    values = ["a|b", "<img src=x onerror=alert(1)>", "![x](https://e/x.png)", "two\nlines"]
    spec = write_spec(tmp_path, BASE_SPEC.replace(
        "{city}", "{city} {tone}").replace(
        "  styleType: [DESIGN, REALISTIC]", f"  tone: {json.dumps(values)}"))
    code, text, _ = run_cli(["plan", str(spec), "--format", "markdown"])
    assert code == 0
    # the magicPrompt warning comes first, as a GitHub alert: a quoted list with code spans
    page = check_tables(text, frozenset({"blockquote", "ul", "li", "code"}))
    by_axis = page.tables[1]
    assert [row[1] for row in by_axis if row[0] == "tone"] == [one_line(v) for v in values]
