"""YAML file -> validated `campaign.Spec`, or `SpecError` listing every problem found.

`load_spec(path)` runs, in order: safe loading (yamlload), the credential scan, JSON Schema
validation against `schemas/spec.schema.json` (whose `defaults` part is built from the model's
request schema, so there is one source of truth), then checks that need the whole spec
(model known, names referenced, templates, combination keys, field values) and checks that
need files (images.py). Every Diagnostic has file:line:col, a JSON path and a code; errors
come first, grouped loader -> schema -> references -> files, each group in file order
(schema errors shallowest first, as jsonschema's best_match prefers).

Image references: `https://` URLs (no user:password@, no credential-like query parameters),
Runware image UUIDs (8-4-4-4-12 hex), anything else is a local path relative to the spec's
folder. Other schemes (http:, ftp:, file:, data:) are refused.

Credentials: a mapping key named like a credential (apiKey, api_key, token, authorization,
secret, password, at any depth), a value containing one of the `secrets` passed in (the CLI
passes RUNWARE_API_KEY), or a `Bearer ...` value is an error. No guessing from the shape of a
string: Runware's key format is undocumented, and image UUIDs and hashes would be false
positives. Messages never repeat a secret (every one is redacted before raising).
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import jsonschema

from specrunner import images, models, templates, yamlload
from specrunner.campaign import (
    Budget, Execution, ImageRef, InputPair, Matrix, OutputSettings, Spec, VariantDecl,
)
from specrunner.errors import Diagnostic, Loc, SpecError
from specrunner.templates import TemplateSyntaxError, template_fields  # noqa: F401 (API)

SCHEMA_FILE = models.SCHEMA_DIR / "spec.schema.json"
# Request fields the runner sets from other settings; a spec may not set them directly.
RUNNER_SET = {
    "deliveryMethod": "set `execution.delivery` instead",
    "includeCost": "specrunner always asks for the cost",
}
SECRET_KEYS = {"apikey", "token", "accesstoken", "authorization", "secret", "password",
               "runwareapikey", "bearer"}
BUILTINS_PROMPT = ("input", "prompt")
BUILTINS_OUTPUT = ("input", "prompt", "variant", "repeat")
GROUP_SECRET, GROUP_LOADER, GROUP_SCHEMA, GROUP_REFS, GROUP_FILES = range(5)


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean `x`?' hint for a misspelled name, or None."""
    pool = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(pool), n=1, cutoff=0.6)
    return f"did you mean `{pool[close[0]]}`?" if close else None


def defaults_schema(model_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `defaults` subschema for a model, and the request schema `$defs` it refers to."""
    request = models.load_schema(models.get_model(model_id).request_schema)
    excluded = models.RUNNER_FIELDS | set(RUNNER_SET)
    props = {k: v for k, v in request["properties"].items() if k not in excluded}
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


@lru_cache(maxsize=None)
def _validator(model_id: str) -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(build_schema(model_id))


@lru_cache(maxsize=None)
def field_validators(model_id: str) -> dict[str, jsonschema.protocols.Validator]:
    """alias -> validator of that request field's value (runner-owned fields left out)."""
    request = models.load_schema(models.get_model(model_id).request_schema)
    out = {}
    for alias, path in models.field_paths(model_id).items():
        if path[0] in RUNNER_SET:
            continue
        sub: Any = request
        for part in path:
            sub = sub["properties"][part]
        sub = dict(sub, **{"$defs": request.get("$defs", {})})
        out[alias] = jsonschema.Draft202012Validator(sub)
    return out


class _Ctx:
    """Collects diagnostics with their sort keys while one spec is checked."""

    def __init__(self, file: str, loaded: yamlload.Loaded, source: Path | None = None) -> None:
        self.file = file
        self.loaded = loaded
        self.source = source  # the spec file, read again only to place template errors
        self._lines: list[str] | None = None
        self.items: list[tuple[tuple, Diagnostic]] = []
        self.reported: set[str] = set()

    def loc(self, path: str, key: bool = False) -> Loc:
        if key and path in self.loaded.key_locs:
            return self.loaded.key_locs[path]
        while path not in self.loaded.locs and path != "$":
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else "$"
        return self.loaded.locs.get(path, Loc(self.file, 1, 1))

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
        if start is None or self.source is None:
            return None
        if self._lines is None:
            try:
                self._lines = re.split(r"\r\n|\r|\n", self.source.read_text(encoding="utf-8"))
            except (OSError, UnicodeError):
                self._lines = []
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


def _plain_hint(ctx: _Ctx, path: str) -> str | None:
    text = ctx.loaded.plain.get(path)
    return f'quote it: "{text}"' if text is not None else None


_TYPE_NAMES = {"string": "text", "integer": "a whole number", "number": "a number",
               "boolean": "true or false", "object": "a mapping", "array": "a list",
               "null": "null"}


def _schema_error(ctx: _Ctx, e: jsonschema.ValidationError, base: str | None = None,
                  group: int = GROUP_SCHEMA) -> None:
    """Turn one jsonschema error into located Diagnostics (`base`: path of the instance)."""
    v, inst, schema = e.validator, e.instance, e.schema
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
                f"specrunner sets `{k}` itself" if k in models.RUNNER_FIELDS else None
            ) or did_you_mean(k, allowed)
            if hint is None and allowed:
                hint = "allowed: " + ", ".join(allowed)
            ctx.add(GROUP_SCHEMA, f"unknown field `{k}`", f"{path}.{k}", "unknown-field",
                    hint=hint, key=True, rank=rank)
        return
    if v == "required":
        for k in e.validator_value:
            if isinstance(inst, dict) and k not in inst and not _misspelled(k, inst, schema):
                ctx.add(GROUP_SCHEMA, f"missing required field `{k}`", f"{path}.{k}",
                        "missing-field", rank=rank)
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
    if custom:
        message = custom
    elif v == "type":
        types = v_list(e.validator_value)
        message = f"expected {' or '.join(_TYPE_NAMES.get(t, t) for t in types)}, " \
                  f"got {yamlload.describe(inst)}"
        if "string" in types:
            hint = _plain_hint(ctx, path)
    elif v == "enum":
        choices = [str(c) for c in e.validator_value]
        message = f"`{inst}` is not one of: {', '.join(choices)}"
        hint = did_you_mean(str(inst), choices)
    elif v == "const":
        message = f"must be {json.dumps(e.validator_value)}, got {json.dumps(inst)}"
    elif v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        word = {"minimum": "at least", "exclusiveMinimum": "greater than",
                "maximum": "at most", "exclusiveMaximum": "less than"}[v]
        message = f"must be {word} {e.validator_value}, got {inst}"
    elif v in ("minLength", "maxLength"):
        if v == "minLength" and e.validator_value == 1:
            message = "must not be empty"
        else:
            word = "at least" if v == "minLength" else "at most"
            message = f"is {len(inst)} characters long; must be {word} {e.validator_value}"
    elif v in ("minItems", "maxItems", "minProperties", "maxProperties"):
        word = "at least" if v.startswith("min") else "at most"
        what = "items" if v.endswith("Items") else "entries"
        message = f"has {len(inst)} {what}; must have {word} {e.validator_value}"
    else:
        message = e.message
    ctx.add(group, message, path, f"invalid-{v}" if v in ("type", "enum") else
            "invalid-value", hint=hint, rank=rank)


def _misspelled(name: str, inst: dict, schema: dict) -> bool:
    """True when an unknown key of `inst` is a likely misspelling of the missing `name`
    (the unknown-field diagnostic, with its did-you-mean, already says it)."""
    if schema.get("additionalProperties") is not False:
        return False
    allowed = schema.get("properties", {})
    return any(k not in allowed and did_you_mean(k, allowed) == f"did you mean `{name}`?"
               for k in inst)


def v_list(value: Any) -> list[str]:
    return list(value) if isinstance(value, list) else [value]


def _scan_secrets(ctx: _Ctx, node: Any, path: str, secrets: Sequence[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            child = f"{path}.{k}"
            if re.sub(r"[-_ ]", "", k.lower()) in SECRET_KEYS | {"apikey"}:
                ctx.add(GROUP_SECRET, f"`{k}` looks like a credential; an API key never goes "
                        "in a spec", child, "secret-in-spec", key=True,
                        hint="set RUNWARE_API_KEY in the environment instead")
            _scan_secrets(ctx, v, child, secrets)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _scan_secrets(ctx, item, f"{path}[{i}]", secrets)
    elif isinstance(node, str):
        if any(len(s) >= 8 and s in node for s in secrets):
            ctx.add(GROUP_SECRET, "this value contains the API key (RUNWARE_API_KEY); remove "
                    "it: the key travels only in the Authorization header", path,
                    "secret-in-spec")
        elif re.match(r"(?i)^bearer\s+\S{8,}", node):
            ctx.add(GROUP_SECRET, "this value looks like an Authorization header; an API key "
                    "never goes in a spec", path, "secret-in-spec")


def _redact(diags: list[Diagnostic], secrets: Sequence[str]) -> list[Diagnostic]:
    out = []
    for d in diags:
        message, hint = d.message, d.hint
        for s in secrets:
            if s:
                message = message.replace(s, "[redacted]")
                hint = hint.replace(s, "[redacted]") if hint else hint
        out.append(Diagnostic(message, d.path, d.loc, d.code, hint, d.severity))
    return out


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
        raise SpecError(_redact(exc.diagnostics, secrets)) from None
    ctx = _Ctx(display, loaded, Path(path))
    for note in loaded.notes:
        ctx.add(GROUP_LOADER, note.message, note.path, note.code, hint=note.hint,
                severity=note.severity, loc=note.loc)
    data = loaded.data
    if not isinstance(data, dict):
        ctx.add(GROUP_SCHEMA, f"a spec is a mapping of fields (version, name, inputs, ...), "
                f"not {yamlload.describe(data)}", "$", "invalid-type")
        raise SpecError(_redact(ctx.sorted(), secrets))
    _scan_secrets(ctx, data, "$", secrets)
    model = data.get("model", models.DEFAULT_MODEL)
    known = isinstance(model, str) and model in models.MODELS
    ambiguous = {d.path for d in loaded.notes if d.code == "yaml-1.1"}
    for err in _validator(model if known else models.DEFAULT_MODEL).iter_errors(data):
        if err.json_path not in ambiguous:
            _schema_error(ctx, err)
    if isinstance(model, str) and not known and "$.model" not in ctx.reported:
        ctx.add(GROUP_REFS, f"unknown model `{model}`", "$.model", "unknown-model",
                hint=did_you_mean(model, models.MODELS) or
                "known: " + ", ".join(models.MODELS))
    folder = Path(path).resolve().parent
    refs = check_references(ctx, data, model if known else models.DEFAULT_MODEL, folder)
    if ctx.errors():
        raise SpecError(_redact(ctx.sorted(), secrets))
    warnings = _redact(ctx.sorted(), secrets)
    return _build(Path(path).resolve(), loaded, data, refs), warnings


@lru_cache(maxsize=None)
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


def _build(path: Path, loaded: yamlload.Loaded, data: dict, refs: dict[str, InputPair]) -> Spec:
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
    )


def image_ref(ctx: Any, value: str, path: str, folder: Path,
              cache: dict[Path, images.ImageInfo | images.ImageProblem]) -> ImageRef | None:
    """Classify and check one seed/mask reference; report problems on `ctx`."""
    kind, problem = images.classify_ref(value)
    if problem:
        ctx.add(GROUP_REFS, problem, path, "invalid-url")
        return None
    if kind != "file":
        return ImageRef(kind=kind, value=value, display=value)
    full = (folder / value).resolve()
    if full not in cache:
        try:
            cache[full] = images.inspect(full)
        except images.ImageProblem as exc:
            cache[full] = exc
    info = cache[full]
    if isinstance(info, images.ImageProblem):
        ctx.add(GROUP_FILES, f"{value}: {info.message}", path, info.code)
        return None
    return ImageRef(kind="file", value=str(full), display=value, sha256=info.sha256,
                    size=info.size, format=info.format)




def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def check_references(ctx: _Ctx, data: dict, model: str, folder: Path) -> dict[str, InputPair]:
    """Checks across sections: templates, combination keys and values, inputs and images."""
    fields = field_validators(model)
    inputs, prompts = _dict(data.get("inputs")), _dict(data.get("prompts"))
    spec_vars = set(_dict(data.get("vars")))
    input_vars = {k: set(_dict(_dict(v).get("vars"))) for k, v in inputs.items()}
    request = models.load_schema(models.get_model(model).request_schema)
    max_prompt = request["properties"]["positivePrompt"].get("maxLength", 2000)

    used: set[str] = set()
    prompt_fields: dict[str, list[str]] = {}
    for name, text in prompts.items():
        if not isinstance(text, str):
            continue
        tpl = _template(ctx, text, f"$.prompts.{name}", f"prompt `{name}`")
        if tpl is None:
            continue
        prompt_fields[name] = list(tpl.names)
        used |= set(tpl.names)
        if len(tpl.literal) > max_prompt:
            ctx.add(GROUP_REFS, f"prompt `{name}` is {len(tpl.literal)} characters without "
                    f"its variables; Runware accepts at most {max_prompt}", f"$.prompts.{name}",
                    "prompt-too-long")
    output_fields = _check_output_name(ctx, _dict(data.get("output")))
    used |= set(output_fields or ())

    entries, contexts = _combinations(data)
    _check_keys(ctx, entries, fields, used, inputs, prompts)
    _check_implied(ctx, data, inputs, prompts)

    reported: set[tuple[str, str]] = set()
    for label, inp, prm, keys in contexts:
        if (inp is not None and inp not in inputs) or (prm is not None and prm not in prompts):
            continue  # reported as an unknown input/prompt already
        defined = spec_vars | input_vars.get(inp or "", set()) | keys
        checks = [(f"prompts.{prm}", f"prompt `{prm}`", prompt_fields.get(prm or "", []),
                   set(BUILTINS_PROMPT))]
        if output_fields is not None:
            checks.append(("output.name", "the output name", output_fields,
                           set(BUILTINS_OUTPUT)))
        for where, what, names, builtins in checks:
            for var in names:
                if var in defined | builtins or (where, var) in reported:
                    continue
                reported.add((where, var))
                ctx.add(GROUP_REFS, f"{what} uses {{{var}}}, which is not defined for {label}",
                        f"$.{where}", "undefined-variable",
                        hint=did_you_mean(var, defined | builtins)
                        or "define it in `vars`, in the input's `vars`, or in the matrix")
    return _check_inputs(ctx, inputs, folder)


def _template(ctx: _Ctx, text: str, path: str, what: str) -> templates.Template | None:
    """Parse a template; report a syntax error at its column when the source allows it."""
    parsed = templates.parse(text)
    if isinstance(parsed, templates.Template):
        return parsed
    loc = ctx.column(path, text, parsed.offset)
    where = "" if loc else f" (at character {parsed.offset + 1})"
    ctx.add(GROUP_REFS, f"{what}: {parsed.message}{where}", path, "template-syntax", loc=loc)
    return None


def _check_output_name(ctx: _Ctx, output: dict) -> list[str] | None:
    name = output.get("name", "{variant}")
    if not isinstance(name, str):
        return None
    tpl = _template(ctx, name, "$.output.name", "output name")
    if tpl is None:
        return None
    names = list(tpl.names)
    sample = tpl.render(dict.fromkeys(names, "x"))
    if sample.startswith("/") or "\\" in sample or any(
        part in ("", ".", "..") for part in sample.split("/")
    ):
        ctx.add(GROUP_REFS, "output name must be a relative path inside the output folder "
                "(no leading /, no . or .. parts, no backslashes)", "$.output.name",
                "output-escape")
    return names


Entry = tuple[str, Any, str, str]  # key, value, path of the value, path of the key


def _combinations(data: dict) -> tuple[list[Entry], list[tuple[str, Any, Any, set[str]]]]:
    """Every (key, value) a matrix or the variants set, and the contexts templates see."""
    entries: list[Entry] = []
    contexts: list[tuple[str, Any, Any, set[str]]] = []
    inputs, prompts = list(_dict(data.get("inputs"))), list(_dict(data.get("prompts")))
    sole_in = inputs[0] if len(inputs) == 1 else None
    sole_pr = prompts[0] if len(prompts) == 1 else None
    matrix = data.get("matrix")
    if isinstance(matrix, dict):
        keys: set[str] = set()
        groups: list[dict] = []
        axes: dict[str, list] = {}
        for k, v in matrix.items():
            if k in ("include", "exclude") and isinstance(v, list):
                for i, entry in enumerate(v):
                    if isinstance(entry, dict):
                        base = f"$.matrix.{k}[{i}]"
                        entries += [(ek, ev, f"{base}.{ek}", f"{base}.{ek}")
                                    for ek, ev in entry.items()]
                        if k == "include":
                            keys |= set(entry)
                            groups.append(entry)
            elif isinstance(v, list):
                axes[k] = v
                keys.add(k)
                entries += [(k, item, f"$.matrix.{k}[{i}]", f"$.matrix.{k}")
                            for i, item in enumerate(v)]
        ax_in = axes.get("input") or [sole_in]
        ax_pr = axes.get("prompt") or [sole_pr]
        pairs = {(i, p) for i in ax_in for p in ax_pr}
        for g in groups:
            pairs |= {(i, p) for i in ([g["input"]] if "input" in g else ax_in)
                      for p in ([g["prompt"]] if "prompt" in g else ax_pr)}
        for inp, prm in sorted(pairs, key=str):
            contexts.append((f"input `{inp}`" if inp else "the matrix", inp, prm, keys))
    variants = data.get("variants")
    if isinstance(variants, list):
        for i, entry in enumerate(variants):
            if not isinstance(entry, dict):
                continue
            entries += [(k, v, f"$.variants[{i}].{k}", f"$.variants[{i}].{k}")
                        for k, v in entry.items() if k != "id"]
            inp, prm = entry.get("input", sole_in), entry.get("prompt", sole_pr)
            contexts.append((f"variants[{i}]", inp, prm, set(entry) - {"id"}))
    return entries, contexts


def _check_keys(ctx: _Ctx, entries: list[Entry], fields: dict, used: set[str],
                inputs: dict, prompts: dict) -> None:
    aliases = [a for a in fields if "." not in a]
    seen_keys: set[str] = set()
    for key, value, vpath, kpath in entries:
        if key in ("input", "prompt"):
            names = inputs if key == "input" else prompts
            if not isinstance(value, str) or value not in names:
                ctx.add(GROUP_REFS, f"unknown {key} `{value}`", vpath, f"unknown-{key}",
                        hint=did_you_mean(str(value), names) or
                        f"declared: {', '.join(names) or 'none'}")
        elif key in fields:
            errors = list(fields[key].iter_errors(value))
            if errors:
                _schema_error(ctx, jsonschema.exceptions.best_match(errors), vpath, GROUP_REFS)
        elif key not in used and kpath not in seen_keys:
            seen_keys.add(kpath)
            hint = RUNNER_SET.get(key) or (f"specrunner sets `{key}` itself"
                                           if key in models.RUNNER_FIELDS else None)
            ctx.add(GROUP_REFS, f"unknown key `{key}`: not a request field, and no template "
                    f"uses {{{key}}}", kpath, "unknown-key", key=True,
                    hint=hint or did_you_mean(key, aliases + sorted(used) + ["input", "prompt"]))


def _check_implied(ctx: _Ctx, data: dict, inputs: dict, prompts: dict) -> None:
    matrix, variants = data.get("matrix"), data.get("variants")
    for key, names in (("input", inputs), ("prompt", prompts)):
        if len(names) <= 1:
            continue
        if isinstance(matrix, dict):
            includes = matrix.get("include") if isinstance(matrix.get("include"), list) else []
            if key not in matrix and not any(isinstance(e, dict) and key in e for e in includes):
                ctx.add(GROUP_REFS, f"the matrix must choose the {key}: there are "
                        f"{len(names)} {key}s", "$.matrix", f"missing-{key}",
                        hint=f"add `{key}: [{', '.join(names)}]`")
        if isinstance(variants, list):
            for i, entry in enumerate(variants):
                if isinstance(entry, dict) and key not in entry:
                    ctx.add(GROUP_REFS, f"variant needs `{key}`: there are {len(names)} "
                            f"{key}s", f"$.variants[{i}]", f"missing-{key}")
    if isinstance(variants, list):
        ids: dict[str, int] = {}
        for i, entry in enumerate(variants):
            vid = entry.get("id") if isinstance(entry, dict) else None
            if isinstance(vid, str) and vid in ids:
                ctx.add(GROUP_REFS, f"duplicate variant id `{vid}` (also variants[{ids[vid]}])",
                        f"$.variants[{i}].id", "duplicate-id")
            elif isinstance(vid, str):
                ids[vid] = i


def _check_inputs(ctx: _Ctx, inputs: dict, folder: Path) -> dict[str, InputPair]:
    cache: dict[Path, images.ImageInfo | images.ImageProblem] = {}
    coverage: dict[tuple[str, str], images.MaskCoverage | images.ImageProblem] = {}
    pairs: dict[str, InputPair] = {}
    for name, entry in inputs.items():
        if not isinstance(entry, dict):
            continue
        base = f"$.inputs.{name}"
        seed = entry.get("seed")
        mask = entry.get("mask")
        polarity = entry.get("mask_polarity", "white-edits")
        seed_ref = image_ref(ctx, seed, f"{base}.seed", folder, cache) \
            if isinstance(seed, str) and seed else None
        mask_ref = image_ref(ctx, mask, f"{base}.mask", folder, cache) \
            if isinstance(mask, str) and mask else None
        if mask_ref and seed_ref and mask_ref.size and seed_ref.size \
                and mask_ref.size != seed_ref.size:
            ctx.add(GROUP_FILES, f"mask is {mask_ref.size[0]}x{mask_ref.size[1]} pixels but the "
                    f"seed is {seed_ref.size[0]}x{seed_ref.size[1]}; they must be the same size",
                    f"{base}.mask", "mask-size")
        if mask_ref and mask_ref.kind != "file" and polarity == "black-edits":
            ctx.add(GROUP_FILES, f"mask_polarity black-edits needs a local mask file to invert; "
                    f"a {mask_ref.kind} mask is sent as it is, so white would be edited",
                    f"{base}.mask_polarity", "mask-polarity",
                    hint="invert the mask yourself and use white-edits, or use a local file")
        if mask_ref and mask_ref.kind == "file" and polarity in ("white-edits", "black-edits"):
            key = (mask_ref.value, polarity)
            if key not in coverage:
                try:
                    coverage[key] = images.mask_coverage(Path(mask_ref.value), polarity)
                except images.ImageProblem as exc:
                    coverage[key] = exc
            cov = coverage[key]
            keep = "black" if polarity == "white-edits" else "white"
            if isinstance(cov, images.ImageProblem):
                ctx.add(GROUP_FILES, f"{mask}: {cov.message}", f"{base}.mask", cov.code)
            elif not cov.edits_some:
                ctx.add(GROUP_FILES, f"mask is empty: every pixel is {keep} (keep) with "
                        f"mask_polarity {polarity}, so nothing would be edited",
                        f"{base}.mask", "mask-empty",
                        hint="check mask_polarity, or draw the area to edit")
            elif cov.edits_all:
                ctx.add(GROUP_FILES, f"mask edits every pixel (mask_polarity {polarity})",
                        f"{base}.mask", "mask-full", severity="warning")
        if seed_ref and mask_ref:
            pairs[name] = InputPair(name=name, seed=seed_ref, mask=mask_ref, polarity=polarity,
                                    vars=dict(_dict(entry.get("vars"))))
    return pairs
