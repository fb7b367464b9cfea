"""Stage 1: a YAML file -> a validated `Spec` (safe loading, JSON Schema, file checks).

`load_spec(path)` returns the Spec or raises `SpecError` with every located problem.
"""

from specrunner.spec.load import load_spec, load_spec_checked
from specrunner.spec.schema import SCHEMA_FILE, build_schema
from specrunner.spec.templates import TemplateSyntaxError, template_fields
from specrunner.spec.types import (
    BUILTIN_KEYS,
    Budget,
    Execution,
    ImageRef,
    InputPair,
    Matrix,
    OutputSettings,
    Scalar,
    Spec,
    VariantDecl,
)

__all__ = [
    "BUILTIN_KEYS", "SCHEMA_FILE", "Budget", "Execution", "ImageRef", "InputPair", "Matrix",
    "OutputSettings", "Scalar", "Spec", "TemplateSyntaxError", "VariantDecl", "build_schema",
    "load_spec", "load_spec_checked", "template_fields",
]
