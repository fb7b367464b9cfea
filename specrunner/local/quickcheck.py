"""A quick "valid" for the common request, so jsonschema runs only to explain a refusal.

jsonschema walks a model's request schema in ~85 us a task (a new validator object at every
level); a checker built once from the same schema answers in a few. It knows a few keywords
and answers False ("not sure") for anything else, and it never answers True where jsonschema
finds an error: it is stricter where the two could differ (an integer must be an int, enum
and const compare type and value). Every False goes to jsonschema, so the server's errors
are jsonschema's, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

# Keywords that never make an instance invalid.
_ANNOTATIONS = frozenset({"$schema", "$id", "$defs", "$comment", "title", "description",
                          "default", "examples"})
_TYPES: dict[str, Check] = {
    "string": lambda x: isinstance(x, str),
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "boolean": lambda x: isinstance(x, bool),
    "integer": lambda x: type(x) is int,
    "null": lambda x: x is None,
}
_SCALARS = (str, int, bool, type(None))


def _never(x: Any) -> bool:
    return False


def _same(a: Any, b: Any) -> bool:
    """Equal in type and value, scalars only (True is not 1; lists and objects: unsure)."""
    return type(a) is type(b) and isinstance(a, _SCALARS) and a == b


def build(root: dict[str, Any]) -> Check:
    """A check for `root` (a JSON Schema whose $refs point into its own $defs): True only
    for instances that `root` accepts; False for the rest and for whatever it cannot tell."""
    building: set[str] = set()

    def compile_(schema: Any) -> Check:
        if schema is True:
            return lambda x: True
        if not isinstance(schema, dict):
            return _never
        checks: list[Check] = []
        for key, value in schema.items():
            check = keyword(key, value, schema)
            if check is None:
                return _never  # an unknown keyword: jsonschema decides
            checks.append(check)
        return lambda x: all(c(x) for c in checks)

    def keyword(key: str, value: Any, schema: dict[str, Any]) -> Check | None:
        if key in _ANNOTATIONS:
            return lambda x: True
        if key == "type" and isinstance(value, str) and value in _TYPES:
            return _TYPES[value]
        if key == "const":
            return lambda x: _same(x, value)
        if key == "enum" and isinstance(value, list):
            return lambda x: any(_same(x, v) for v in value)
        if key in ("minLength", "maxLength") and type(value) is int:
            low = key == "minLength"
            return lambda x: not isinstance(x, str) or (len(x) >= value if low
                                                        else len(x) <= value)
        if key in ("minimum", "maximum") and type(value) is int:
            low = key == "minimum"
            return lambda x: (isinstance(x, bool) or not isinstance(x, (int, float))
                              or (x >= value if low else x <= value))
        if key in ("minItems", "maxItems") and type(value) is int:
            low = key == "minItems"
            return lambda x: not isinstance(x, list) or (len(x) >= value if low
                                                         else len(x) <= value)
        if key == "pattern" and isinstance(value, str):
            rx = re.compile(value)
            return lambda x: not isinstance(x, str) or rx.search(x) is not None
        if key == "required" and isinstance(value, list):
            return lambda x: not isinstance(x, dict) or all(n in x for n in value)
        if key == "properties" and isinstance(value, dict):
            props = {name: compile_(sub) for name, sub in value.items()}
            return lambda x: not isinstance(x, dict) or all(
                check(x[name]) for name, check in props.items() if name in x)
        if key == "additionalProperties" and value is False and "patternProperties" not in schema:
            allowed = frozenset(schema.get("properties", {}))
            return lambda x: not isinstance(x, dict) or allowed.issuperset(x)
        if key == "items" and "prefixItems" not in schema:
            item = compile_(value)
            return lambda x: not isinstance(x, list) or all(item(i) for i in x)
        if key == "dependentSchemas" and isinstance(value, dict):
            deps = {name: compile_(sub) for name, sub in value.items()}
            return lambda x: not isinstance(x, dict) or all(
                check(x) for name, check in deps.items() if name in x)
        if key == "$ref" and isinstance(value, str) and value.startswith("#/$defs/"):
            name = value.removeprefix("#/$defs/")
            target = root.get("$defs", {}).get(name)
            if target is None or value in building:  # missing, or recursive: unsure
                return None
            building.add(value)
            try:
                return compile_(target)
            finally:
                building.discard(value)
        return None

    return compile_(root)
