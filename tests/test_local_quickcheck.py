"""The local server's quick check: True only where jsonschema finds no error, and True for
the requests the planner sends (else it saves nothing)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specrunner import models
from specrunner.local import quickcheck
from specrunner.local.testing import inference_task

MODEL = "ideogram:3@3"
VALIDATOR = models.request_validator(MODEL)
QUICK = quickcheck.build(models.load_schema(models.get_model(MODEL).request_schema))
UUID = "82978073-f98b-4a15-b029-cf6f3bd9a2ef"


def full_request() -> dict[str, Any]:
    """Every field the schema knows, each valid, except the ones that need `format`."""
    return {"taskType": "imageInference", "taskUUID": UUID, "model": MODEL,
            "positivePrompt": "a red door", "outputType": "URL", "outputFormat": "PNG",
            "outputQuality": 90, "deliveryMethod": "sync", "ttl": 60, "includeCost": True,
            "numberResults": 3, "safety": {"checkContent": True, "mode": "fast"},
            "inputs": {"seedImage": "https://example.invalid/seed.png", "maskImage": UUID},
            "providerSettings": {"ideogram": {"magicPrompt": "OFF", "renderingSpeed": "TURBO",
                                              "styleType": "ANIME",
                                              "styleReferenceImages": ["a", "b"]}}}


def test_valid_requests_pass_quickly() -> None:
    for req in (full_request(), inference_task()):
        assert VALIDATOR.is_valid(req)
        assert QUICK(req), req


def test_what_it_cannot_tell_goes_to_jsonschema() -> None:
    with_format = {**full_request(), "webhookURL": "https://example.invalid/hook"}
    assert VALIDATOR.is_valid(with_format) and not QUICK(with_format)  # `format`: unsure
    assert not quickcheck.build({"type": "object", "propertyNames": {"maxLength": 3}})({})
    assert not quickcheck.build({"$ref": "#/$defs/missing"})("x")
    assert not quickcheck.build({"type": "integer"})(3.0)  # stricter than jsonschema
    assert not quickcheck.build({"enum": [1]})(True)


PATHS = [("taskType",), ("taskUUID",), ("model",), ("positivePrompt",), ("outputType",),
         ("outputFormat",), ("outputQuality",), ("deliveryMethod",), ("ttl",), ("includeCost",),
         ("numberResults",), ("width",), ("safety",), ("safety", "mode"),
         ("safety", "checkContent"), ("safety", "other"), ("inputs",), ("inputs", "seedImage"),
         ("inputs", "maskImage"), ("inputs", "other"), ("providerSettings",),
         ("providerSettings", "ideogram"), ("providerSettings", "other"),
         ("providerSettings", "ideogram", "styleType"),
         ("providerSettings", "ideogram", "styleReferenceImages")]
EDGES: list[Any] = [None, True, False, 0, 1, 19, 20, 21, 59, 60, 99, 100, 1.0, 60.0, 95.5, -1,
                    "", "x", "x" * 2000, "x" * 2001, "URL", "base64Data", "JPG", "sync",
                    "async", "fast", "ANIME", "imageInference", MODEL, UUID, UUID.upper(),
                    UUID.replace("-4", "-5"), "https://example.invalid/a.png", [], ["a"] * 4,
                    ["a"] * 5, [""], [1], {}, {"mode": "none"}, {"ideogram": {}},
                    {"seedImage": "s", "maskImage": "m"}]
DROP = object()


def edited(req: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of `req` with `path` set to `value` (or removed for DROP)."""
    out = copy.deepcopy(req)
    node = out
    for p in path[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    if value is DROP:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return out


@pytest.mark.parametrize("path", PATHS, ids=".".join)
def test_one_edit_never_passes_what_jsonschema_refuses(path: tuple[str, ...]) -> None:
    refused = passed = 0
    for value in [DROP, *EDGES]:
        req = edited(full_request(), path, value)
        if QUICK(req):
            assert VALIDATOR.is_valid(req), req
            passed += 1
        refused += not VALIDATOR.is_valid(req)
    assert refused and passed  # each path is edited both ways


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(PATHS), st.sampled_from([DROP, *EDGES])),
                min_size=2, max_size=4))
def test_several_edits_never_pass_what_jsonschema_refuses(
        edits: list[tuple[tuple[str, ...], Any]]) -> None:
    req = full_request()
    for path, value in edits:
        req = edited(req, path, value)
    if QUICK(req):
        assert VALIDATOR.is_valid(req), req
