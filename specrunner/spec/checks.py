"""Checks of a loaded spec that need the whole document or its files, before planning.

Credentials: a mapping key named like a credential (apiKey, api_key, token, authorization,
secret, password, at any depth), a value containing one of the `secrets` passed in (the CLI
passes RUNWARE_API_KEY), or a `Bearer ...` value is an error. No guessing from the shape of a
string: Runware's key format is undocumented, and image UUIDs and hashes would be false
positives. `redact` removes every secret from messages before they leave.

Cross-references (`check_references`): templates parse (templates.py) and use only defined
variables; every combination key is `input`, `prompt`, a request field (with a valid value)
or a variable some template uses; `input`/`prompt` are named when there are several; inputs
are checked as images (images.py): seed and mask exist, same size, mask not empty; so are
the images of list fields in `defaults` (styleReferenceImages), without the mask checks.

Image references: `https://` URLs (no user:password@, no credential-like query parameters),
Runware image UUIDs (8-4-4-4-12 hex), anything else is a local path relative to the spec's
folder. Other schemes (http:, ftp:, file:, data:) are refused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jsonschema

from specrunner import models
from specrunner.errors import Diagnostic
from specrunner.runware import RUNNER_FIELDS, RUNNER_SET
from specrunner.spec import images, suggest, templates
from specrunner.spec.schema import (
    GROUP_FILES,
    GROUP_REFS,
    GROUP_SECRET,
    Collector,
    did_you_mean,
    field_validators,
    image_list_fields,
    schema_error,
)
from specrunner.spec.types import BUILTIN_KEYS, ImageRef, InputPair

SECRET_KEYS = {"apikey", "token", "accesstoken", "authorization", "secret", "password",
               "runwareapikey", "bearer"}
BUILTINS_OUTPUT = (*BUILTIN_KEYS, "variant", "repeat")


def scan_secrets(ctx: Collector, node: Any, path: str, secrets: Sequence[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            child = f"{path}.{k}"
            if re.sub(r"[-_ ]", "", k.lower()) in SECRET_KEYS:
                ctx.add(GROUP_SECRET, f"`{k}` looks like a credential; an API key never goes "
                        "in a spec", child, "secret-in-spec", key=True,
                        hint="set RUNWARE_API_KEY in the environment instead")
            scan_secrets(ctx, v, child, secrets)
    elif isinstance(node, list):
        for i, item in enumerate(node):
            scan_secrets(ctx, item, f"{path}[{i}]", secrets)
    elif isinstance(node, str):
        if any(len(s) >= 8 and s in node for s in secrets):
            ctx.add(GROUP_SECRET, "this value contains the API key (RUNWARE_API_KEY); remove "
                    "it: the key travels only in the Authorization header", path,
                    "secret-in-spec")
        elif re.match(r"(?i)^bearer\s+\S{8,}", node):
            ctx.add(GROUP_SECRET, "this value looks like an Authorization header; an API key "
                    "never goes in a spec", path, "secret-in-spec")


def redact(diags: list[Diagnostic], secrets: Sequence[str]) -> list[Diagnostic]:
    out = []
    for d in diags:
        message, hint = d.message, d.hint
        for s in secrets:
            if s:
                message = message.replace(s, "[redacted]")
                hint = hint.replace(s, "[redacted]") if hint else hint
        out.append(dataclasses.replace(d, message=message, hint=hint))
    return out


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
        hint = (suggest.missing_file_hint(value, full, folder)
                if info.code == "image-missing" else None)
        shown = value if len(value) <= 120 else f"{value[:60]}... ({len(value):,} characters)"
        ctx.add(GROUP_FILES, f"{shown}: {info.message}", path, info.code, hint=hint)
        return None
    return ImageRef(kind="file", value=str(full), display=value, sha256=info.sha256,
                    size=info.size, format=info.format)


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def check_references(ctx: Collector, data: dict, model: str, folder: Path) -> dict[str, InputPair]:
    """Checks across sections: templates, combination keys and values, inputs and images."""
    fields = field_validators(model)
    inputs, prompts = _dict(data.get("inputs")), _dict(data.get("prompts"))
    spec_vars = set(_dict(data.get("vars")))
    input_vars = {k: set(_dict(_dict(v).get("vars"))) for k, v in inputs.items()}
    max_prompt = models.prompt_length(model)[1]

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
                   set(BUILTIN_KEYS))]
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


def _template(ctx: Collector, text: str, path: str, what: str) -> templates.Template | None:
    """Parse a template; report a syntax error at its column when the source allows it."""
    parsed = templates.parse(text)
    if isinstance(parsed, templates.Template):
        return parsed
    loc = ctx.column(path, text, parsed.offset)
    where = "" if loc else f" (at character {parsed.offset + 1})"
    ctx.add(GROUP_REFS, f"{what}: {parsed.message}{where}", path, "template-syntax", loc=loc)
    return None


def _check_output_name(ctx: Collector, output: dict) -> list[str] | None:
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


# key, value, path of the value, path of the key, and whether the value only selects
# combinations (an exclude entry, or an include entry's axis key) rather than being sent.
Entry = tuple[str, Any, str, str, bool]


def loosely_in(value: Any, choices: Iterable[Any]) -> bool:
    """Whether `value` equals one of the text `choices` under GitHub's matrix `==`: text
    compares case-insensitively; a non-text value never equals text that is not a number,
    which enum values and input/prompt names are not."""
    return isinstance(value, str) and any(
        isinstance(c, str) and c.casefold() == value.casefold() for c in choices)


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
        axes: dict[str, list] = {k: v for k, v in matrix.items()
                                 if k not in ("include", "exclude") and isinstance(v, list)}
        for k, v in matrix.items():
            if k in ("include", "exclude") and isinstance(v, list):
                for i, entry in enumerate(v):
                    if isinstance(entry, dict):
                        base = f"$.matrix.{k}[{i}]"
                        entries += [(ek, ev, f"{base}.{ek}", f"{base}.{ek}",
                                     k == "exclude" or ek in axes)
                                    for ek, ev in entry.items()]
                        if k == "include":
                            keys |= set(entry)
                            groups.append(entry)
            elif isinstance(v, list):
                keys.add(k)
                entries += [(k, item, f"$.matrix.{k}[{i}]", f"$.matrix.{k}", False)
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
            entries += [(k, v, f"$.variants[{i}].{k}", f"$.variants[{i}].{k}", False)
                        for k, v in entry.items() if k != "id"]
            inp, prm = entry.get("input", sole_in), entry.get("prompt", sole_pr)
            contexts.append((f"variants[{i}]", inp, prm, set(entry) - {"id"}))
    return entries, contexts


def _check_keys(ctx: Collector, entries: list[Entry], fields: dict, used: set[str],
                inputs: dict, prompts: dict) -> None:
    aliases = [a for a in fields if "." not in a]
    seen_keys: set[str] = set()
    for key, value, vpath, kpath, selects in entries:
        # A value that only selects combinations matches as GitHub compares (`BAKERY` selects
        # `bakery`); the value sent is still the axis's own.
        if key in BUILTIN_KEYS:
            names = inputs if key == "input" else prompts
            if not (isinstance(value, str) and value in names) and not (
                    selects and loosely_in(value, names)):
                ctx.add(GROUP_REFS, f"unknown {key} `{value}`", vpath, f"unknown-{key}",
                        hint=did_you_mean(str(value), names) or
                        f"declared: {', '.join(names) or 'none'}")
        elif key in fields:
            errors = list(fields[key].iter_errors(value))
            if errors and not (selects and loosely_in(value, fields[key].schema.get("enum", ()))):
                schema_error(ctx, jsonschema.exceptions.best_match(errors), vpath, GROUP_REFS)
        elif key not in used and kpath not in seen_keys:
            seen_keys.add(kpath)
            hint = RUNNER_SET.get(key) or (f"specrunner sets `{key}` itself"
                                           if key in RUNNER_FIELDS else None)
            ctx.add(GROUP_REFS, f"unknown key `{key}`: not a request field, and no template "
                    f"uses {{{key}}}", kpath, "unknown-key", key=True,
                    hint=hint or did_you_mean(key, aliases + sorted(used) + list(BUILTIN_KEYS)))


def _check_implied(ctx: Collector, data: dict, inputs: dict, prompts: dict) -> None:
    matrix, variants = data.get("matrix"), data.get("variants")
    for key, names in (("input", inputs), ("prompt", prompts)):
        if len(names) <= 1:
            continue
        if isinstance(matrix, dict):
            include = matrix.get("include")
            includes = include if isinstance(include, list) else []
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


def check_reference_images(ctx: Collector, data: dict, model: str,
                           folder: Path) -> dict[str, ImageRef]:
    """The images of `defaults` fields that hold image lists (styleReferenceImages), checked
    like a seed (exists, PNG/JPEG/WEBP, size caps; no mask checks), keyed by request path
    with the list index: `providerSettings.ideogram.styleReferenceImages[0]`."""
    cache: dict[Path, images.ImageInfo | images.ImageProblem] = {}
    refs: dict[str, ImageRef] = {}
    for path in image_list_fields(model):
        node: Any = data.get("defaults")
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, list):
            continue  # absent, or the schema error says what is wrong
        dotted = ".".join(path)
        for i, value in enumerate(node):
            if isinstance(value, str) and value:
                ref = image_ref(ctx, value, f"$.defaults.{dotted}[{i}]", folder, cache)
                if ref is not None:
                    refs[f"{dotted}[{i}]"] = ref
    return refs


def _check_inputs(ctx: Collector, inputs: dict, folder: Path) -> dict[str, InputPair]:
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
