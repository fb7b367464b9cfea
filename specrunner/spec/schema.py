"""The spec's JSON Schema and the located, readable Diagnostics its errors become.

The `defaults` part of `schemas/spec.schema.json` is built from the model's request schema
(`build_schema`), so there is one source of truth for request fields. `Collector` gathers the
Diagnostics of one spec with their sort keys (group, then file order); `schema_error` turns a
jsonschema error into messages a person can act on (did-you-mean, "quote it", ranges).
"""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema

from specrunner import models
from specrunner.errors import Diagnostic, Loc, nearest_loc
from specrunner.runware import RUNNER_FIELDS, RUNNER_OWNED, RUNNER_SET
from specrunner.spec import yamlload
from specrunner.spec.suggest import did_you_mean

SCHEMA_FILE = models.SCHEMA_DIR / "spec.schema.json"
# Diagnostic groups, in the order they are listed.
GROUP_SECRET, GROUP_LOADER, GROUP_SCHEMA, GROUP_REFS, GROUP_FILES = range(5)


def defaults_schema(model_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `defaults` subschema for a model, and the request schema `$defs` it refers to."""
    request = models.load_schema(models.get_model(model_id).request_schema)
    props = {k: v for k, v in request["properties"].items() if k not in RUNNER_OWNED}
    sub: dict[str, Any] = {
        "description": f"Request fields sent with every task of {model_id}, nested as in the "
        "request; a matrix or variant can override each one.",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
    }
    dependent = {k: v for k, v in request.get("dependentSchemas", {}).items() if k in props}
    if dependent:
        sub["dependentSchemas"] = dependent
    return sub, request.get("$defs", {})


def build_schema(model_id: str = models.DEFAULT_MODEL) -> dict[str, Any]:
    """The spec JSON Schema for `model_id` (the committed file is this for the default model)."""
    with open(SCHEMA_FILE, encoding="utf-8") as fh:
        schema = json.load(fh)
    sub, request_defs = defaults_schema(model_id)
    schema["$defs"]["defaults"] = sub
    for name, value in request_defs.items():
        schema["$defs"][name] = value
    return schema


@cache
def spec_validator(model_id: str) -> jsonschema.protocols.Validator:
    """The (cached) JSON Schema validator of a spec for `model_id`."""
    return jsonschema.Draft202012Validator(build_schema(model_id))


@cache
def field_validators(model_id: str) -> dict[str, jsonschema.protocols.Validator]:
    """alias -> validator of that request field's value (runner-owned fields left out)."""
    request = models.load_schema(models.get_model(model_id).request_schema)
    out: dict[str, jsonschema.protocols.Validator] = {}
    for alias, path in models.field_paths(model_id).items():
        if path[0] in RUNNER_SET:
            continue
        sub: Any = request
        for part in path:
            sub = sub["properties"][part]
        sub = dict(sub, **{"$defs": request.get("$defs", {})})
        out[alias] = jsonschema.Draft202012Validator(sub)
    return out


@cache
def image_list_fields(model_id: str) -> tuple[tuple[str, ...], ...]:
    """Request paths of the fields that hold a list of images (the request schema says
    `items: {$ref: #/$defs/imageInput}`), e.g. providerSettings.ideogram.styleReferenceImages."""
    request = models.load_schema(models.get_model(model_id).request_schema)
    out = []
    for path in dict.fromkeys(models.field_paths(model_id).values()):
        sub: Any = request
        for part in path:
            sub = sub["properties"][part]
        if sub.get("type") == "array" and sub.get("items", {}).get("$ref", "").endswith(
                "/imageInput"):
            out.append(path)
    return tuple(out)


@cache
def integer_fields(model_id: str) -> dict[str, tuple[str, ...]]:
    """alias -> request path of every field whose schema type is integer."""
    request = models.load_schema(models.get_model(model_id).request_schema)
    out = {}
    for alias, path in models.field_paths(model_id).items():
        sub: Any = request
        for part in path:
            sub = sub["properties"][part]
        if sub.get("type") == "integer":
            out[alias] = path
    return out


class Collector:
    """Collects diagnostics with their sort keys while one spec is checked."""

    def __init__(self, file: str, loaded: yamlload.Loaded) -> None:
        self.file = file
        self.loaded = loaded
        self._lines: list[str] | None = None  # loaded.text split into lines, when needed
        self.items: list[tuple[tuple, Diagnostic]] = []
        self.reported: set[str] = set()

    def loc(self, path: str, key: bool = False) -> Loc:
        if key and path in self.loaded.key_locs:
            return self.loaded.key_locs[path]
        return nearest_loc(self.loaded.locs, path) or Loc(self.file, 1, 1)

    def add(self, group: int, message: str, path: str, code: str, *, hint: str | None = None,
            key: bool = False, severity: str = "error", rank: int = 0,
            loc: Loc | None = None) -> None:
        loc = loc or self.loc(path, key)
        diag = Diagnostic(message, path=path, loc=loc, code=code, hint=hint, severity=severity)
        sev = 0 if severity == "error" else 1
        self.items.append(((sev, group, rank, loc.line, loc.col, path), diag))
        self.reported.add(path)

    def column(self, path: str, text: str, offset: int) -> Loc | None:
        """The position of character `offset` of the string at `path`, when that string is a
        plain scalar on one line (its source text is the value itself); otherwise None."""
        start = self.loaded.locs.get(path)
        if start is None:
            return None
        if self._lines is None:
            self._lines = yamlload.LINE_BREAK.split(self.loaded.text)
        if start.line > len(self._lines):
            return None
        rest = self._lines[start.line - 1][start.col - 1:]
        if rest[:1] in ("\"", "'", "|", ">") or not rest.startswith(text):
            return None
        return Loc(start.file, start.line, start.col + offset)

    def errors(self) -> bool:
        return any(d.severity == "error" for _, d in self.items)

    def sorted(self) -> list[Diagnostic]:
        return [d for _, d in sorted(self.items, key=lambda item: item[0])]


def _plain_hint(ctx: Collector, path: str) -> str | None:
    text = ctx.loaded.plain.get(path)
    return f'quote it: "{text}"' if text is not None else None


_TYPE_NAMES = {"string": "text", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "null"}


def schema_error(ctx: Collector, e: jsonschema.ValidationError, base: str | None = None,
                  group: int = GROUP_SCHEMA) -> None:
    """Turn one jsonschema error into located Diagnostics (`base`: path of the instance)."""
    # A raised error has every field set (the stubs also allow "unset", for hand-made errors);
    # the instance, its schema and the keyword's value are any JSON.
    v = e.validator
    inst: Any = e.instance
    schema: Any = e.schema
    value: Any = e.validator_value
    path = base + e.json_path[1:] if base else e.json_path
    rank = len(e.absolute_path)
    custom = schema.get("errorMessage") if isinstance(schema, dict) else None
    if "propertyNames" in e.absolute_schema_path:
        ctx.add(GROUP_SCHEMA, f"`{inst}`: {custom or e.message}", f"{path}.{inst}",
                "invalid-name", key=True, rank=rank)
        return
    if v == "additionalProperties":
        allowed = list(schema.get("properties", {}))
        for k in inst:
            if k in allowed:
                continue
            hint = RUNNER_SET.get(k) or (
                f"specrunner sets `{k}` itself" if k in RUNNER_FIELDS else None
            ) or did_you_mean(k, allowed)
            if hint is None and allowed:
                hint = "allowed: " + ", ".join(allowed)
            ctx.add(GROUP_SCHEMA, f"unknown field `{k}`", f"{path}.{k}", "unknown-field",
                    hint=hint, key=True, rank=rank)
        return
    if v == "required":
        for k in value:
            if isinstance(inst, dict) and k not in inst and not _misspelled(k, inst, schema):
                ctx.add(GROUP_SCHEMA, f"missing required field `{k}`", f"{path}.{k}",
                        "missing-field", rank=rank,
                        hint=_what_to_write(k, schema.get("properties", {}).get(k, {})))
        return
    if v == "oneOf" and path == "$":
        if "matrix" in inst and "variants" in inst:
            ctx.add(GROUP_SCHEMA, "use either `matrix` or `variants`, not both", "$.variants",
                    "matrix-and-variants", key=True, rank=rank)
        else:
            ctx.add(GROUP_SCHEMA, "missing `matrix` or `variants`: say which tasks to make",
                    "$", "missing-field", rank=rank)
        return
    if "dependentSchemas" in e.absolute_schema_path:
        ctx.add(GROUP_SCHEMA, f"`ttl` needs outputType URL, not `{inst}`", path,
                "invalid-value", rank=rank)
        return
    hint = None
    if v == "type":
        hint = _unquote_hint(inst, _as_list(value))
    elif v == "const":
        hint = _unquote_hint(inst, [type(value).__name__])
    if custom:
        message = custom
    elif v == "type":
        types = _as_list(value)
        message = f"expected {' or '.join(_TYPE_NAMES.get(t, t) for t in types)}, " \
                  f"got {yamlload.describe(inst)}"
        if "string" in types:
            hint = _plain_hint(ctx, path)
    elif v == "enum":
        choices = [str(c) for c in value]
        message = f"`{inst}` is not one of: {', '.join(choices)}"
        hint = did_you_mean(str(inst), choices)
    elif v == "const":
        message = f"must be {json.dumps(value)}, got {json.dumps(inst)}"
    elif v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        word = {"minimum": "at least", "exclusiveMinimum": "greater than",
                "maximum": "at most", "exclusiveMaximum": "less than"}[v]
        message = f"must be {word} {value}, got {inst}"
    elif v in ("minLength", "maxLength"):
        if v == "minLength" and value == 1:
            message = "must not be empty"
        else:
            word = "at least" if v == "minLength" else "at most"
            message = f"is {len(inst)} characters long; must be {word} {value}"
    elif v in ("minItems", "maxItems", "minProperties", "maxProperties"):
        word = "at least" if v.startswith("min") else "at most"
        what = "items" if v.endswith("Items") else "entries"
        message = f"has {len(inst)} {what}; must have {word} {value}"
    else:
        message = e.message
    ctx.add(group, message, path, f"invalid-{v}" if v in ("type", "enum") else
            "invalid-value", hint=hint, rank=rank)


# JSON Schema type (or a Python type name, for `const`) -> Python types of a value of it.
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "integer": (int,), "int": (int,), "number": (int, float), "float": (int, float),
    "boolean": (bool,), "bool": (bool,)}


def _unquote_hint(inst: Any, types: list[str]) -> str | None:
    """"remove the quotes" when a quoted text (`max_usd: "1"`) would be the expected number
    or boolean without them."""
    if not isinstance(inst, str):
        return None
    value = yamlload.resolve_scalar(inst.strip())
    for t in types:
        want = _PY_TYPES.get(t, ())
        if isinstance(value, want) and (bool in want) == isinstance(value, bool):
            return f"remove the quotes: {inst.strip()}"
    return None


def _flow(value: Any) -> str:
    """A value as YAML flow text, as a user would type it: 1, text, {max_usd: 10}."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and yamlload.resolve_scalar(value) != value:
        return json.dumps(value)  # would read as a number, boolean or null: quote it
    return str(value)


def _what_to_write(name: str, prop: dict) -> str | None:
    """The hint of a missing field: its only value (`const`), else its first example."""
    if "const" in prop:
        return f"add `{name}: {_flow(prop['const'])}`"
    examples = prop.get("examples")
    if examples:
        return f"add it, for example `{name}: {_flow(examples[0])}`"
    return None


def _misspelled(name: str, inst: dict, schema: dict) -> bool:
    """True when an unknown key of `inst` is a likely misspelling of the missing `name`
    (the unknown-field diagnostic, with its did-you-mean, already says it)."""
    if schema.get("additionalProperties") is not False:
        return False
    allowed = schema.get("properties", {})
    return any(k not in allowed and did_you_mean(k, allowed) == f"did you mean `{name}`?"
               for k in inst)


def _as_list(value: Any) -> list[str]:
    return list(value) if isinstance(value, list) else [value]
