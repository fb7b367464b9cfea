"""Settings of a plan that defeat reproduction, as located diagnostics. Pure.

Two facts a reviewer of a campaign needs, both read from the model's request schema:

- `magicPrompt` ON or AUTO (AUTO is Runware's default when the field is not sent) lets the
  provider rewrite the prompt before generating, so the image follows a prompt that neither
  the spec nor the plan shows. One warning per place the value comes from (the `defaults`
  entry, the matrix value, the include entry or the variant), with how many tasks it covers.
- A model whose request has no `seed` cannot regenerate an image: every generation is a new
  one. One note per plan; identical requests are answered from the run record instead.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from specrunner import models
from specrunner.errors import Diagnostic
from specrunner.plan.build import Plan
from specrunner.plan.identity import text_of

MAGIC_PROMPT = "magicPrompt"
REWRITES = ("ON", "AUTO")  # the values that let the provider change the prompt
CODE_MAGIC = "magic-prompt"
CODE_NO_SEED = "no-seed"


def reproducibility_diagnostics(plan: Plan) -> list[Diagnostic]:
    """The magicPrompt warnings of `plan` (in file order), then the no-seed note."""
    return [*magic_prompt_warnings(plan), *no_seed_notes(plan)]


@functools.cache  # a report asks it once per task, of one model
def _magic_path(model_id: str) -> tuple[tuple[str, ...], Any] | None:
    """(request path, schema default) of the model's magicPrompt field, if it has one."""
    provider = models.get_model(model_id).provider
    node: Any = models.load_schema(models.get_model(model_id).request_schema)
    path = ("providerSettings", provider, MAGIC_PROMPT)
    for part in path:
        node = node.get("properties", {}).get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    return path, node.get("default")


def magic_prompt_of(request: Mapping[str, Any]) -> str | None:
    """The magicPrompt a request runs with (the schema's default when it sends none), or None
    for a model without one."""
    model = request.get("model")
    if not isinstance(model, str) or model not in models.MODELS:
        return None
    found = _magic_path(model)
    if found is None:
        return None
    value = _get(request, found[0])
    return str(value if value is not None else found[1])


def _get(request: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = request
    for part in path:
        node = node.get(part) if isinstance(node, Mapping) else None
    return node


def magic_prompt_warnings(plan: Plan) -> list[Diagnostic]:
    """One warning per place that makes tasks send magicPrompt ON or AUTO (or leave it to
    Runware's default AUTO), with the number of tasks it covers."""
    found = _magic_path(plan.spec.model)
    if found is None:
        return []
    path, default = found
    repeat = max(plan.spec.repeat, 1)
    fields = models.field_paths(plan.spec.model)
    names = {k for k, p in fields.items() if p == path}  # the keys that set magicPrompt
    groups: dict[str | None, list[Any]] = {}  # source -> [value, task count]
    places: dict[tuple[Any, ...], str] = {}
    last, slot = None, None
    for task in plan.tasks:
        # Every task of a combination sends the same fields: look once per combination
        # (its tasks are adjacent in plan order, in a shard's plan too).
        ci = task.index // repeat
        if ci != last:
            last = ci
            value = _get(task.request, path)
            effective = default if value is None else value
            if effective not in REWRITES:
                slot = None
                continue
            src = _source(plan, ci, task.axes, path, names, places) if value is not None \
                else None
            slot = groups.setdefault(src, [value, 0])
        if slot is not None:
            slot[1] += 1
    total = len(plan.tasks)
    dotted = ".".join(path)
    out = []
    for src, (value, count) in groups.items():
        share = f"{count:,} of {total:,} task{'' if total == 1 else 's'}"
        if src is None:
            where = "$.defaults." + ".".join(path[:-1])
            message = (f"{MAGIC_PROMPT} is not set for {share}, so Runware's default "
                       f"\"{text_of(default)}\" applies: the provider may rewrite each prompt")
            hint = f"set {dotted}: \"OFF\" in defaults to send prompts as written"
        else:
            where = src
            message = (f"{MAGIC_PROMPT} is \"{text_of(value)}\" for {share}: the provider "
                       + ("rewrites each prompt" if value == "ON" else
                          "may rewrite each prompt (it decides per prompt)"))
            hint = "set it to \"OFF\" to send prompts as written"
        out.append(Diagnostic(f"{message} before generating, so the image follows a prompt "
                              "the plan does not show", where, plan.spec.loc(where), CODE_MAGIC,
                              hint, "warning"))
    return sorted(out, key=lambda d: (d.loc.line, d.loc.col) if d.loc else (0, 0))


def _source(plan: Plan, ci: int, axes: Mapping[str, Any], path: tuple[str, ...],
            names: set[str], places: dict[tuple[Any, ...], str]) -> str | None:
    """The JSON path that set the magicPrompt (at `path`; `names`: the keys that address it)
    of combination `ci`, or None when its request omits it. `places` memoises the answer by
    what decides it, so a million combinations cost a few lookups each."""
    key = next((k for k in axes if k in names), None)
    if key is None:
        if _get(plan.spec.defaults, path) is not None:
            return "$.defaults." + ".".join(path)
        return None
    declared = plan.combination_source(ci)
    value = axes[key]
    touched = plan.expansion.combinations[ci].touched_by \
        if plan.expansion is not None and declared == "$.matrix" else ()
    memo = (declared, key, touched, type(value), value)
    where = places.get(memo)
    if where is None:
        where = plan.value_source(ci, key)
        matrix = plan.spec.matrix
        if matrix is not None and where == f"$.matrix.{key}":
            values = dict(matrix.axes)[key]
            j = next((i for i, v in enumerate(values) if type(v) is type(value) and v == value),
                     None)
            if j is not None:  # point at the very list item
                where = f"{where}[{j}]"
        places[memo] = where
    return where


def no_seed_notes(plan: Plan) -> list[Diagnostic]:
    """A note when the model's request takes no seed (every generation is a new image)."""
    model = models.get_model(plan.spec.model)
    if "seed" in models.load_schema(model.request_schema).get("properties", {}):
        return []
    return [Diagnostic(
        f"{model.id} takes no seed: every generation is a new image and none can be "
        "regenerated; an identical request is answered from the run record, not generated "
        "again", "$.model", plan.spec.loc("$.model"), CODE_NO_SEED,
        "`repeat: N` asks for N different images of each variant", "note")]
