"""YAML file -> validated `campaign.Spec`, or `SpecError` listing every problem found.

`load_spec(path)` runs, in order: safe loading (yamlload), the credential scan, JSON Schema
validation against `schemas/spec.schema.json` (spec_schema.py), then checks that need the
whole spec or its files (spec_checks.py: model known, names referenced, templates,
combination keys, field values, images), and builds the typed Spec. Every Diagnostic has
file:line:col, a JSON path and a code; errors come first, grouped loader -> schema ->
references -> files, each group in file order (schema errors shallowest first, as
jsonschema's best_match prefers). Messages never repeat a secret.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from specrunner import models
from specrunner.errors import Diagnostic, SpecError
from specrunner.spec import yamlload
from specrunner.spec.checks import check_reference_images, check_references, redact, scan_secrets
from specrunner.spec.schema import (  # noqa: F401 (SCHEMA_FILE, build_schema: public API)
    GROUP_LOADER,
    GROUP_REFS,
    GROUP_SCHEMA,
    SCHEMA_FILE,
    Collector,
    build_schema,
    did_you_mean,
    integer_fields,
    schema_error,
    spec_validator,
)
from specrunner.spec.templates import TemplateSyntaxError, template_fields  # noqa: F401 (API)
from specrunner.spec.types import (
    Budget,
    Execution,
    ImageRef,
    InputPair,
    Matrix,
    OutputSettings,
    Spec,
    VariantDecl,
)


def load_spec(path: str | Path, *, secrets: Sequence[str] = ()) -> Spec:
    """Load and validate a spec file; raise SpecError with every Diagnostic found.

    `secrets`: values that must never appear in a spec (the CLI passes RUNWARE_API_KEY).
    """
    return load_spec_checked(path, secrets=secrets)[0]


def load_spec_checked(path: str | Path, *,
                      secrets: Sequence[str] = ()) -> tuple[Spec, list[Diagnostic]]:
    """Like load_spec, but also return the warnings of a valid spec."""
    secrets = tuple(s for s in secrets if s)
    display = str(path)
    try:
        loaded = yamlload.load(path, display)
    except SpecError as exc:
        raise SpecError(redact(exc.diagnostics, secrets)) from None
    ctx = Collector(display, loaded)
    for note in loaded.notes:
        ctx.add(GROUP_LOADER, note.message, note.path, note.code, hint=note.hint,
                severity=note.severity, loc=note.loc)
    data = loaded.data
    if not isinstance(data, dict):
        ctx.add(GROUP_SCHEMA, f"a spec is a mapping of fields (version, name, inputs, ...), "
                f"not {yamlload.describe(data)}", "$", "invalid-type")
        raise SpecError(redact(ctx.sorted(), secrets))
    scan_secrets(ctx, data, "$", secrets)
    model = data.get("model", models.DEFAULT_MODEL)
    known = isinstance(model, str) and model in models.MODELS
    ambiguous = {d.path for d in loaded.notes if d.code == "yaml-1.1"}
    for err in spec_validator(model if known else models.DEFAULT_MODEL).iter_errors(data):
        if err.json_path not in ambiguous:
            schema_error(ctx, err)
    if isinstance(model, str) and not known and "$.model" not in ctx.reported:
        ctx.add(GROUP_REFS, f"unknown model `{model}`", "$.model", "unknown-model",
                hint=did_you_mean(model, models.MODELS) or
                "known: " + ", ".join(models.MODELS))
    folder = Path(path).resolve().parent
    refs = check_references(ctx, data, model if known else models.DEFAULT_MODEL, folder)
    images = check_reference_images(ctx, data, model if known else models.DEFAULT_MODEL,
                                    folder)
    if ctx.errors():
        raise SpecError(redact(ctx.sorted(), secrets))
    warnings = redact(ctx.sorted(), secrets)
    return _build(Path(path).resolve(), loaded, data, refs, images), warnings


def _whole(value: Any) -> Any:
    """2.0 -> 2: JSON Schema accepts a whole float as an integer, but the request must carry
    (and the task key hash) one spelling, and counts such as numberResults must be ints."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _ints(values: dict, fields: dict[str, tuple[str, ...]]) -> dict:
    return {k: _whole(v) if k in fields else v for k, v in values.items()}


def _ints_nested(defaults: dict, paths: Iterable[tuple[str, ...]]) -> dict:
    out = copy.deepcopy(defaults)
    for p in paths:
        node: Any = out
        for part in p[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and p[-1] in node:
            node[p[-1]] = _whole(node[p[-1]])
    return out


def _build(path: Path, loaded: yamlload.Loaded, data: dict, refs: dict[str, InputPair],
           images: dict[str, ImageRef]) -> Spec:
    model = data.get("model", models.DEFAULT_MODEL)
    ints = integer_fields(model)
    prices = {m.id: m.price_per_image for m in models.MODELS.values()}
    prices.update({k: Decimal(str(v)) for k, v in data.get("prices", {}).items()})
    matrix = None
    if "matrix" in data:
        m = data["matrix"]
        matrix = Matrix(
            axes=tuple((k, tuple(_whole(x) for x in v) if k in ints else tuple(v))
                       for k, v in m.items() if k not in ("include", "exclude")),
            include=tuple(_ints(x, ints) for x in m.get("include", [])),
            exclude=tuple(_ints(x, ints) for x in m.get("exclude", [])),
        )
    variants = None
    if "variants" in data:
        variants = tuple(
            VariantDecl(values=_ints({k: v for k, v in x.items() if k != "id"}, ints),
                        id=x.get("id"))
            for x in data["variants"]
        )
    out = data.get("output", {})
    budget = data["budget"]
    ex = dict(data.get("execution", {}))
    for k in ("concurrency", "max_attempts", "max_download_bytes"):
        if k in ex:
            ex[k] = int(ex[k])
    for k in ("request_timeout_s", "task_deadline_s", "retry_budget_ratio",
              "poll_interval_s", "poll_max_interval_s"):
        if k in ex:
            ex[k] = float(ex[k])
    return Spec(
        path=path,
        source_sha256=loaded.sha256,
        name=data["name"],
        model=model,
        defaults=_ints_nested(data.get("defaults", {}), set(ints.values())),
        vars=dict(data.get("vars", {})),
        inputs=refs,
        prompts=dict(data["prompts"]),
        matrix=matrix,
        variants=variants,
        repeat=int(data.get("repeat", 1)),
        output=OutputSettings(
            dir=(path.parent / out.get("dir", f"out/{data['name']}")).resolve(),
            name=out.get("name", "{variant}"),
        ),
        budget=Budget(max_usd=Decimal(str(budget["max_usd"])),
                      max_tasks=int(budget.get("max_tasks", 10_000))),
        execution=Execution(**ex),
        prices=prices,
        locs=dict(loaded.locs),
        description=data.get("description", ""),
        images=images,
    )
