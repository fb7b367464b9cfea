"""The example campaign plans exactly the four requests on Runware's ideogram:3@3 page.

The documented requests are parsed from the markdown at test time (shared/reference, or the
copy committed under tests/fixtures/golden/ when shared/ is absent). Only `taskUUID` may
differ, and the runner adds exactly `includeCost` and `deliveryMethod` on purpose.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from specrunner import runware
from specrunner.plan import build_plan
from specrunner.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared/reference/ideogram-2-0-edit.md"
FIXTURE = ROOT / "tests/fixtures/golden/ideogram-2-0-edit.md"
EXAMPLE = ROOT / "specs/examples/storefront-signage.yaml"
RUNNER_ADDED = {"includeCost": True, "deliveryMethod": "async"}


def documented_requests() -> list[dict]:
    """The JSON blocks that follow a '**Request**:' line, in page order."""
    text = (SHARED if SHARED.exists() else FIXTURE).read_text(encoding="utf-8")
    blocks = re.findall(r"\*\*Request\*\*:\s*```json\n(.*?)\n```", text, flags=re.S)
    return [json.loads(b) for b in blocks]


def test_markdown_holds_four_requests_and_fixture_is_current() -> None:
    docs = documented_requests()
    assert len(docs) == 4
    assert all(d["model"] == "ideogram:3@3" for d in docs)
    if SHARED.exists():
        assert FIXTURE.read_text(encoding="utf-8") == SHARED.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def planned() -> list[dict]:
    plan = build_plan(load_spec(EXAMPLE))
    return [dict(t.request) for t in plan.tasks]


@pytest.mark.parametrize("i", range(4))
def test_planned_request_matches_documented(planned: list[dict], i: int) -> None:
    doc = documented_requests()[i]
    got = planned[i]
    assert len(planned) == 4
    assert runware.is_uuid4(got["taskUUID"])
    extra = {k: got[k] for k in got.keys() - doc.keys()}
    assert extra == RUNNER_ADDED
    assert doc.keys() - got.keys() == set()
    for key in doc.keys() - {"taskUUID"}:
        assert got[key] == doc[key], key
    # field by field, including nesting: nothing but the runner's keys differs
    trimmed = {k: v for k, v in got.items() if k not in RUNNER_ADDED and k != "taskUUID"}
    assert trimmed == {k: v for k, v in doc.items() if k != "taskUUID"}


def test_plan_costs_and_uuids(planned: list[dict]) -> None:
    plan = build_plan(load_spec(EXAMPLE))
    assert str(plan.total_cost) == "0.32"
    assert len({t.task_uuid for t in plan.tasks}) == 4
    assert [t.variant_id for t in plan.tasks] == [
        "bakery-artdeco", "diner-menuboard", "records-marquee", "bookshop-window"]
