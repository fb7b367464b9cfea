"""What specrunner knows about each model: its request schema, price, and field names.

The request schema in `schemas/` is the one source of truth for a model's parameters: the
planner validates expanded requests with it and the local server validates received tasks
with it. Prices are estimates used for planning and budget reservation; the cost the API
reports replaces them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from specrunner import runware

_CHECKOUT_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
# A source checkout (or editable install) reads the top-level schemas/; a wheel carries the same
# files as specrunner/_schemas (see pyproject.toml).
SCHEMA_DIR = (_CHECKOUT_SCHEMAS if (_CHECKOUT_SCHEMAS / "spec.schema.json").is_file()
              else Path(__file__).resolve().parent / "_schemas")


@dataclass(frozen=True)
class ModelInfo:
    """A model specrunner can plan for."""

    id: str
    title: str
    request_schema: str  # file name in schemas/
    price_per_image: Decimal  # USD
    provider: str  # key under providerSettings


MODELS: dict[str, ModelInfo] = {
    "ideogram:3@3": ModelInfo(
        id="ideogram:3@3",
        title="Ideogram 2.0 Edit",
        request_schema="ideogram-3-3.request.schema.json",
        price_per_image=Decimal("0.08"),
        provider="ideogram",
    ),
}

DEFAULT_MODEL = "ideogram:3@3"



@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load a JSON Schema from `schemas/` by file name."""
    with open(SCHEMA_DIR / name, encoding="utf-8") as fh:
        return json.load(fh)


def get_model(model_id: str) -> ModelInfo:
    """Return the ModelInfo for `model_id`; KeyError if specrunner does not know it."""
    return MODELS[model_id]


@cache
def prompt_length(model_id: str) -> tuple[int, int]:
    """(min, max) length in characters of `positivePrompt` in `model_id`'s request schema."""
    prop = load_schema(get_model(model_id).request_schema)["properties"].get("positivePrompt", {})
    return int(prop.get("minLength", 1)), int(prop.get("maxLength", 2000))


@cache
def request_validator(model_id: str) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator for one imageInference task of `model_id`."""
    schema = load_schema(get_model(model_id).request_schema)
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _leaf_fields(schema: dict[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for key, sub in schema.get("properties", {}).items():
        path = (*prefix, key)
        if sub.get("type") == "object" and "properties" in sub:
            yield from _leaf_fields(sub, path)
        else:
            yield path


@cache
def field_paths(model_id: str) -> dict[str, tuple[str, ...]]:
    """Settable request fields of a model: short alias -> path in the request.

    Both the dotted path (`providerSettings.ideogram.styleType`) and the leaf name
    (`styleType`), when unambiguous, name a field. Runner-owned fields are excluded.
    """
    schema = load_schema(get_model(model_id).request_schema)
    leaves = [p for p in _leaf_fields(schema) if p[0] not in runware.RUNNER_FIELDS]
    out: dict[str, tuple[str, ...]] = {}
    counts: dict[str, int] = {}
    for p in leaves:
        counts[p[-1]] = counts.get(p[-1], 0) + 1
    for p in leaves:
        out[".".join(p)] = p
        if counts[p[-1]] == 1:
            out[p[-1]] = p
    return out
