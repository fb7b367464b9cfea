"""Spec -> Plan: the exact requests, their identity and their estimated cost. Pure, no I/O.

`build_plan(spec)` expands the matrix (GitHub's rules, `matrix.py`) or the variants, each
combination once per repeat index, and builds every task as DESIGN.md "Plan and task
identity" states. Every problem found while expanding is collected and raised at once as
`SpecError` (located with `spec.loc`); a plan over `budget.max_tasks` or `budget.max_usd`
raises `PlanLimitError` with the numbers (`limit` "max_tasks" or "max_usd", `needed` and
`allowed` as int task counts or Decimal dollars); a matrix product over MAX_PRODUCT, a cap
of specrunner's own rather than of the spec, raises it with `limit` None.

Requests are validated against the model's request schema once per distinct combination of
field settings (the part of a request that jsonschema can find fault with); the parts that
vary per task (`positivePrompt`, `inputs`, `taskUUID`) are checked directly against the same
schema's limits, which tests/test_plan.py proves equivalent to validating every request.
Nested request mappings are shared between tasks: copy before changing one.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from hashlib import sha256
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Any

from specrunner import models, runware
from specrunner.errors import Diagnostic, PlanLimitError, SpecError
from specrunner.money import money
from specrunner.plan import matrix
from specrunner.plan.identity import (  # noqa: F401 (framed_key, task_key: public API)
    base_id,
    canonical_json,
    framed_key,
    key_head,
    key_of,
    key_tail,
    prompt_frame,
    slug_text,
    task_key,
    text_of,
)
from specrunner.plan.outpaths import fold, path_problem
from specrunner.plan.task import LocalImage, PlannedRequest, Task, local_input_path, planned_task
from specrunner.runware import RUNNER_OWNED
from specrunner.spec import templates
from specrunner.spec.suggest import did_you_mean
from specrunner.spec.types import BUILTIN_KEYS, InputPair, Scalar, Spec

MAX_PRODUCT = 1_000_000  # a matrix product above this is refused before expansion
_EXT = {"JPG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class AxisValue:
    """One value of one axis in the breakdown: how many tasks, images and dollars."""

    value: Scalar
    tasks: int
    images: int
    cost: Decimal


@dataclass(frozen=True)
class Plan:
    """The tasks a spec expands to, in run order, with totals and provenance for explain.

    `breakdown` holds (axis key, values) for `input`, `prompt` and every combination key;
    `expansion` is the matrix provenance (None for `variants:`). Task i belongs to
    combination i // spec.repeat, except in a shard's plan (`whole`: the plan it is a slice
    of; its tasks keep their indexes in `whole`).
    """

    spec: Spec
    tasks: tuple[Task, ...]
    total_cost: Decimal
    total_images: int
    expansion: matrix.Expansion | None
    whole: Plan | None = field(default=None, repr=False, compare=False)

    @cached_property
    def breakdown(self) -> tuple[tuple[str, tuple[AxisValue, ...]], ...]:
        """Tasks, images and cost per value of each axis (computed when first asked: a run
        never does). A shard's plan has the same axes and value order as its whole plan,
        without the values none of its tasks has."""
        fields = models.field_paths(self.spec.model)
        if self.whole is not None:
            return _slice_breakdown(self.whole.breakdown, self.tasks, fields)
        price = self.spec.prices.get(self.spec.model) or Decimal(0)
        return _breakdown(self.tasks, max(self.spec.repeat, 1), fields, price)

    def combination_source(self, ci: int) -> str:
        """The JSON path that declared combination `ci`."""
        return _source(self.expansion, ci)

    def value_source(self, ci: int, key: str) -> str:
        """The JSON path that gave combination `ci` its value of `key` (an axis, an include
        entry or a variant)."""
        return _key_path(self.combination_source(ci), key, self.spec, self.expansion, ci)


def _source(expansion: matrix.Expansion | None, ci: int) -> str:
    """The JSON path that declared combination `ci`: its variant, the matrix (a product
    combination) or the include entry that created it."""
    if expansion is None:
        return f"$.variants[{ci}]"
    c = expansion.combinations[ci]
    return "$.matrix" if c.created_by is None else f"$.matrix.include[{c.created_by}]"


class _Diags:
    """Diagnostics collected while planning, at most `cap` per (code, path)."""

    def __init__(self, spec: Spec, cap: int = 5) -> None:
        self.spec, self.cap, self.items = spec, cap, []  # type: ignore[var-annotated]
        self.counts: dict[tuple[str, str], int] = {}

    def add(self, message: str, path: str, code: str, hint: str | None = None) -> None:
        n = self.counts.get((code, path), 0)
        self.counts[(code, path)] = n + 1
        if n < self.cap:
            self.items.append(Diagnostic(message, path, self.spec.loc(path), code, hint))

    def raise_if_any(self) -> None:
        if self.items:
            extra = sum(max(0, n - self.cap) for n in self.counts.values())
            if extra:
                self.items.append(Diagnostic(f"... and {extra} more problems of the kinds "
                                             "above", "$", self.spec.loc("$"), "more"))
            raise SpecError(self.items)




def _combinations(spec: Spec, repeat: int
                  ) -> tuple[Sequence[Mapping[str, Scalar]], Sequence[str | None], Any]:
    """The values and the explicit id (None: none) of each combination, plus the matrix
    Expansion (`_source` says where a combination was declared)."""
    if spec.matrix is None:
        variants = spec.variants or ()
        return [v.values for v in variants], [v.id for v in variants], None
    m = spec.matrix
    cap = max(spec.budget.max_tasks // max(repeat, 1), 0)
    try:
        exp = matrix.expand(m.axes, m.include, m.exclude, max_product=MAX_PRODUCT,
                            max_combinations=cap)
    except matrix.MatrixTooLarge as exc:
        if exc.what == "product":
            raise PlanLimitError(f"matrix product has {exc.size:,} combinations; specrunner "
                                 f"refuses to expand more than {MAX_PRODUCT:,}",
                                 limit=None, needed=exc.size, allowed=MAX_PRODUCT) from None
        more = "at least " if exc.at_least else ""
        raise PlanLimitError(f"plan has {more}{exc.size * repeat:,} tasks ({more}{exc.size:,} "
                             f"combinations x repeat {repeat}); budget max_tasks is "
                             f"{spec.budget.max_tasks:,}", limit="max_tasks",
                             needed=exc.size * repeat, allowed=spec.budget.max_tasks) from None
    combos = exp.combinations
    values = (combos.values if isinstance(combos, matrix.ProductCombinations)
              else list(map(attrgetter("values"), combos)))
    return values, [None] * len(combos), exp


def _declared_values(spec: Spec) -> Iterable[Scalar]:
    """Every value a combination can take: the axes' and include entries', or the variants'."""
    if spec.matrix is not None:
        for _, values in spec.matrix.axes:
            yield from values
        for entry in spec.matrix.include:
            yield from entry.values()
    for variant in spec.variants or ():
        yield from variant.values.values()


def _reference_images(spec: Spec) -> tuple[Mapping[str, Any], dict[str, LocalImage]]:
    """spec.defaults with "local:<sha256>" in place of each local file of its image lists
    (styleReferenceImages), and those files by local input key; unchanged without any."""
    local = {key: LocalImage(Path(ref.value), ref.sha256 or "")
             for key, ref in spec.images.items() if ref.kind == "file"}
    if not local:
        return spec.defaults, {}
    defaults = copy.deepcopy(dict(spec.defaults))
    for key, img in local.items():
        path = local_input_path(key)
        node: Any = defaults
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = f"local:{img.sha256}"
    return defaults, local


def _set_path(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        nxt = target.get(key)
        target[key] = nxt = dict(nxt) if isinstance(nxt, dict) else {}
        target = nxt
    target[path[-1]] = value


def _key_path(src: str, key: str, spec: Spec, exp: Any, ci: int) -> str:
    """The JSON path that gave combination `ci` its `key`."""
    if src.startswith("$.variants") or src.startswith("$.matrix.include"):
        return f"{src}.{key}"
    axis_keys = [k for k, _ in spec.matrix.axes] if spec.matrix else []
    if key in axis_keys:
        return f"$.matrix.{key}"
    c = exp.combinations[ci]
    for j in reversed(c.touched_by):
        if key in spec.matrix.include[j]:  # type: ignore[union-attr]
            return f"$.matrix.include[{j}].{key}"
    return src


def _resolve(kind: str, values: Mapping[str, Scalar], names: Mapping[str, Any], src: str,
             diags: _Diags) -> str | None:
    if kind in values:
        name = values[kind]
        if isinstance(name, str) and name in names:
            return name
    pool = list(names)
    if kind in values:
        diags.add(f"unknown {kind} `{text_of(name)}`", f"{src}.{kind}" if "[" in src else src,
                  f"unknown-{kind}", did_you_mean(text_of(name), pool) or
                  "declared: " + ", ".join(pool))
        return None
    if len(pool) == 1:
        return pool[0]
    diags.add(f"no `{kind}` for this combination and the spec declares {len(pool)} {kind}s",
              src, f"missing-{kind}", f"add `{kind}:` (one of: {', '.join(pool)})")
    return None


def build_plan(spec: Spec) -> Plan:
    """Expand `spec` into its Plan; SpecError lists every problem, PlanLimitError the limits."""
    diags = _Diags(spec)
    try:
        model = models.get_model(spec.model)
    except KeyError:
        diags.add(f"unknown model `{spec.model}`", "$.model", "unknown-model")
        diags.raise_if_any()
        raise
    price = spec.prices.get(spec.model)
    if price is None:
        diags.add(f"no price known for {spec.model}; set prices: {{\"{spec.model}\": ...}}",
                  "$.prices", "unknown-price")
    fields = models.field_paths(spec.model)
    min_len, max_len = models.prompt_length(spec.model)
    validator = models.request_validator(spec.model)
    repeat = spec.repeat

    for key in spec.defaults:
        if key in RUNNER_OWNED:
            diags.add(f"`{key}` is set by specrunner, not by a spec", f"$.defaults.{key}",
                      "runner-field", "deliveryMethod comes from execution.delivery"
                      if key == "deliveryMethod" else None)
    prompts: dict[str, templates.Template] = {}
    for name, text in spec.prompts.items():
        parsed = templates.parse(text)
        if isinstance(parsed, templates.Template):
            prompts[name] = parsed
        else:
            diags.add(f"prompt `{name}`: {parsed} (at character {parsed.offset + 1})",
                      f"$.prompts.{name}", "template-syntax")
    out_tpl = templates.parse(spec.output.name)
    if isinstance(out_tpl, templates.TemplateError):
        diags.add(f"output name: {out_tpl} (at character {out_tpl.offset + 1})",
                  "$.output.name", "template-syntax")
    used_vars = {n for t in prompts.values() for n in t.names}
    used_vars |= set(out_tpl.names) if isinstance(out_tpl, templates.Template) else set()
    if spec.matrix is not None:
        axis_keys = [k for k, _ in spec.matrix.axes]
        for j, entry in enumerate(spec.matrix.exclude):
            for k in entry:
                if k not in axis_keys:
                    diags.add(f"exclude key `{k}` is not an axis of the matrix; excludes "
                              "filter the product only (as in GitHub Actions)",
                              f"$.matrix.exclude[{j}].{k}", "exclude-key",
                              "axes: " + ", ".join(axis_keys))
    diags.raise_if_any()
    assert isinstance(out_tpl, templates.Template)

    combos, explicit_ids, exp = _combinations(spec, repeat)
    if len(combos) * repeat > spec.budget.max_tasks:
        raise PlanLimitError(f"plan has {len(combos) * repeat:,} tasks; budget max_tasks is "
                             f"{spec.budget.max_tasks:,}", limit="max_tasks",
                             needed=len(combos) * repeat, allowed=spec.budget.max_tasks)
    delivery = spec.execution.delivery
    defaults, reference_local = _reference_images(spec)
    ext_default = "jpg"
    # field settings -> (merged fields, numberResults, extension, per input name: the request
    # shape, its key frame and the body a key hashes)
    sig_cache: dict[tuple, tuple[dict[str, Any], int, str, dict[str, Any], Decimal]] = {}
    input_cache: dict[str, tuple[dict[str, str], dict[str, LocalImage]]] = {}
    prompt_cache: dict[tuple, tuple[str, bytes]] = {}
    heads = {p.polarity: [key_head(json.dumps(p.polarity).encode(), r) for r in range(repeat)]
             for p in spec.inputs.values()}
    repeat_text = [str(r + 1) for r in range(repeat)]
    render_stem = out_tpl.render
    cost_cache: dict[int, Decimal] = {}
    tasks: list[Task] = []
    ids: dict[str, int] = {}
    # Task ids: a repeat's id `vid-rN` can only clash with a variant id that itself ends in
    # -r<number> (two repeat ids never clash, nor two variant ids that `ids` let through).
    # So only those variant ids are registered, and a later one is checked
    # against the repeat ids made before it by reading it as `vid-rN`. Equivalent to a
    # registry of every task id, without a million-entry dict.
    suffixed: dict[str, tuple[str, int]] = {}
    broke: dict[str, int] = {}  # variant id -> the repeat whose output name failed
    keys: dict[str, int] = {}
    name_path = "$.output.name" if "$.output.name" in spec.locs else None
    # Output names as file systems compare them, each held by the first task writing it:
    # by hash (a million names were ~100 MB of lower-cased copies), checked on a match.
    outputs: dict[int, int] = {}
    more: dict[str, int] = {}  # names whose hash an earlier task's different name holds
    known_keys: set[str] = set()
    inputs, spec_prompts = spec.inputs, spec.prompts
    only_input = next(iter(inputs)) if len(inputs) == 1 else None
    only_prompt = next(iter(spec_prompts)) if len(spec_prompts) == 1 else None
    base_ns: dict[str, dict[str, str]] = {}  # input name -> the variables every task has
    # combination keys -> (the request paths they set, a getter of their values)
    settings_of: dict[tuple[str, ...], tuple[tuple[tuple[str, ...], ...],
                                             Callable[[Mapping[str, Any]], tuple[Any, ...]]]] = {}
    # Text values read as themselves in templates and ids (text_of): when every value is
    # text, a combination's variables and id are made without a call per value.
    all_text = all(type(v) is str for v in _declared_values(spec))
    # (A combination per task when repeat is 1: what follows runs up to a million times, so
    # it takes fast paths first and keeps to comprehensions and C-level calls.)
    for ci, (values, explicit_id) in enumerate(zip(combos, explicit_ids, strict=True)):
        if not known_keys.issuperset(values):
            for key in values:
                if key in known_keys:
                    continue
                if key in BUILTIN_KEYS or key in fields or key in used_vars:
                    known_keys.add(key)
                    continue
                diags.add(f"unknown key `{key}`: not a request field, and no template uses it",
                          _key_path(_source(exp, ci), key, spec, exp, ci), "unknown-key",
                          did_you_mean(key, [*fields, *used_vars]))
        in_name = values.get("input", only_input)
        if type(in_name) is not str or in_name not in inputs:
            in_name = _resolve("input", values, inputs, _source(exp, ci), diags)
        pr_name = values.get("prompt", only_prompt)
        if type(pr_name) is not str or pr_name not in spec_prompts:
            pr_name = _resolve("prompt", values, spec_prompts, _source(exp, ci), diags)
        if in_name is None or pr_name is None or pr_name not in prompts:
            continue
        pair: InputPair = inputs[in_name]
        # Field settings: validated once per distinct signature, the request paths the
        # combination sets and their values (with their types, which tell 1 from true).
        names = tuple(values)
        setting = settings_of.get(names)
        if setting is None:
            fk = tuple([k for k in names if k in fields])
            setting = settings_of[names] = (tuple([fields[k] for k in fk]), _values_of(fk))
        paths, values_of = setting
        got = values_of(values)
        sig = (paths, got) if all_text else (paths, got, tuple(map(type, got)))
        cached = sig_cache.get(sig)
        if cached is None:
            merged: dict[str, Any] = {k: v for k, v in defaults.items()}
            for path, v in zip(paths, got, strict=True):
                _set_path(merged, path, v)
            nres = merged.get("numberResults", 1)
            nres = nres if isinstance(nres, int) and not isinstance(nres, bool) and nres > 0 else 1
            fmt = merged.get("outputFormat")
            cost = cost_cache.get(nres)
            if cost is None:
                cost = cost_cache[nres] = (price or Decimal(0)) * nres
            cached = (merged, nres, _EXT.get(fmt, ext_default) if isinstance(fmt, str) else "jpg",
                      {}, cost)
            sig_cache[sig] = cached
            probe = {"taskType": "imageInference", "taskUUID": runware.task_uuid("probe"),
                     "model": model.id, "positivePrompt": "x", **merged,
                     "inputs": {"seedImage": "x", "maskImage": "x"}, "includeCost": True,
                     "deliveryMethod": delivery}
            for err in validator.iter_errors(probe):
                where = tuple(str(p) for p in err.absolute_path)
                origin = next((k for k in values if k in fields and
                               fields[k] == where[:len(fields[k])]), None)
                jpath = (_key_path(_source(exp, ci), origin, spec, exp, ci) if origin else
                         "$.defaults" + "".join(f".{p}" for p in where))
                created = _source(exp, ci).startswith("$.matrix.include") and origin is not None
                diags.add(f"request field {'.'.join(where) or '(root)'}: {err.message}",
                          jpath, "request-schema",
                          "this include entry matches no combination of the axes, so it "
                          "makes a new one and its values are sent as written" if created
                          else None)
        merged, nres, ext, shapes, cost = cached
        inp = input_cache.get(in_name)
        if inp is None:
            ins, local = {}, {}
            for fieldname, ref in (("seedImage", pair.seed), ("maskImage", pair.mask)):
                if ref.kind == "file":
                    ins[fieldname] = f"local:{ref.sha256}"
                    local[fieldname] = LocalImage(
                        path=Path(ref.value), sha256=ref.sha256 or "",
                        invert=fieldname == "maskImage" and pair.polarity == "black-edits")
                else:
                    ins[fieldname] = ref.value
                if not ins[fieldname]:
                    diags.add(f"input `{in_name}`: {fieldname} is empty",
                              f"$.inputs.{in_name}", "request-schema")
            input_cache[in_name] = inp = (ins, {**local, **reference_local})
        ins, local = inp
        ns = base_ns.get(in_name)
        if ns is None:
            ns = base_ns[in_name] = {**spec.vars, **pair.vars}
        ns = ns.copy()
        # all_text: every value is already its text (no cast: this runs once per task)
        ns.update(values if all_text  # type: ignore[arg-type]
                  else zip(values, map(text_of, values.values()), strict=True))
        ns["input"], ns["prompt"] = in_name, pr_name
        tpl = prompts[pr_name]
        pkey = (pr_name, *map(ns.get, tpl.names))
        cached_text = prompt_cache.get(pkey)
        if cached_text is None:
            missing = [n for n in tpl.names if n not in ns]
            for n in missing:
                diags.add(f"prompt `{pr_name}` uses {{{n}}}, which is not defined for "
                          f"input `{in_name}`", f"$.prompts.{pr_name}", "undefined-variable",
                          "define it in vars, the input's vars, or the combination")
            if missing:
                continue
            text = tpl.render(ns)
            cached_text = prompt_cache[pkey] = (text, canonical_json(text))
            if not min_len <= len(text) <= max_len:
                diags.add(f"prompt `{pr_name}` renders to {len(text)} characters for input "
                          f"`{in_name}`; Runware accepts {min_len}-{max_len}",
                          f"$.prompts.{pr_name}", "prompt-length")
        text, prompt_json = cached_text
        vid = explicit_id or (("-".join(map(slug_text, values.values())) or f"variant{ci + 1}")
                              if all_text else base_id(values, ci))
        if vid in ids:
            diags.add(f"variant id `{vid}` is used twice (combinations #{ids[vid] + 1} and "
                      f"#{ci + 1})", _source(exp, ci), "duplicate-id",
                      "give explicit ids" if exp is None else "values differ only in "
                      "characters an id cannot hold, or an include duplicates a combination")
            continue
        ids[vid] = ci
        shaped = shapes.get(in_name)
        if shaped is None:
            # What every task of these field settings and this input sends, but its UUID and
            # prompt (PlannedRequest); and the body its key hashes, framed around the prompt.
            body = {"taskType": "imageInference", "model": model.id, **merged, "inputs": ins}
            shape = {"taskType": "imageInference", "taskUUID": "", "model": model.id,
                     "positivePrompt": "", **merged, "inputs": ins, "includeCost": True,
                     "deliveryMethod": delivery}
            shaped = shapes[in_name] = (shape, body, prompt_frame(body))
        shape, body, halves = shaped
        tail = key_tail(halves, prompt_json) if halves else None
        head = heads[pair.polarity]
        for r in range(repeat):
            if r == 0:
                tid = vid
                held = _repeat_holding(vid, ids, broke, repeat) if repeat > 1 else None
            else:
                tid = f"{vid}-r{r + 1}"
                held = suffixed.get(tid) if suffixed else None
            if held is not None:
                diags.add(f"task id `{tid}` is used twice: {_which(*held)} and "
                          f"{_which(vid, r)}", _source(exp, ci), "duplicate-id",
                          "give explicit ids that do not end in -r<number>")
                continue
            if r == 0 and repeat > 1 and _SUFFIXED.fullmatch(vid):
                suffixed[vid] = (vid, 0)
            ns["variant"], ns["repeat"] = tid, repeat_text[r]
            try:
                stem = render_stem(ns)
            except KeyError as exc:
                diags.add(f"output name uses {{{exc.args[0]}}}, which is not defined for "
                          f"variant `{tid}`", "$.output.name", "undefined-variable")
                broke[vid] = r
                break
            idx = len(tasks)
            if stem == tid:
                stem = tid  # the default name is the task id: keep one string, not two
            problem = path_problem(stem)
            if problem:
                diags.add(f"output name for variant `{tid}` renders to {stem!r}, which "
                          f"{problem}", name_path or _source(exp, ci), "output-path")
            if tail is not None:
                key = sha256(head[r] + tail).hexdigest()
            else:  # the placeholder occurs in a field value: take the plain road
                key = key_of({**body, "positivePrompt": text}, pair.polarity, r)
            held_by = keys.setdefault(key, idx)  # one lookup of a million-entry dict
            if held_by != idx:
                diags.add(f"variants `{tasks[held_by].variant_id}` and `{tid}` send identical "
                          "requests (same task key, so the same taskUUID)", _source(exp, ci),
                          "duplicate-request",
                          "a value only used in output names does not change the request")
                keys[key] = idx
            task = planned_task(idx, tid, key, PlannedRequest(shape, key, text), in_name,
                                pr_name, values, r, nres, cost, stem, ext, local)
            for p in (f"{stem}.{ext}",) if nres == 1 else task.output_paths():
                folded = p.lower() if p.isascii() else fold(p)
                first = outputs.setdefault(_name_hash(folded), idx)
                # the same hash as an earlier task's name: the same name, or (rarely) not
                writer = None if first == idx else _writer(folded, idx, tasks[first], more)
                if writer is not None:
                    other = tasks[writer]
                    diags.add(f"variants `{other.variant_id}` and `{tid}` both write {p!r}"
                              + ("" if p in other.output_paths() else
                                 " (names differ only in case)"),
                              name_path or _source(exp, ci), "output-collision",
                              "put {variant} in output.name")
            tasks.append(task)
    if not tasks and not diags.items:
        why = ("exclude removes every combination of the matrix" if exp and exp.excluded
               else "the matrix makes no combinations")
        diags.add(f"the plan has no tasks: {why}", "$.matrix", "empty-plan")
    diags.raise_if_any()
    assert price is not None
    total_images = sum(map(attrgetter("number_results"), tasks))
    total_cost = price * total_images
    if total_cost > spec.budget.max_usd:
        raise PlanLimitError(f"plan needs {money(total_cost)} for {total_images:,} images; "
                             f"budget max_usd is {money(spec.budget.max_usd)}", limit="max_usd",
                             needed=total_cost, allowed=spec.budget.max_usd)
    return Plan(spec, tuple(tasks), total_cost, total_images, exp)


def _values_of(keys: tuple[str, ...]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function giving the values at `keys` of a mapping, as a tuple, in C."""
    if not keys:
        return lambda _values: ()
    if len(keys) == 1:
        get = itemgetter(keys[0])
        return lambda values: (get(values),)
    return itemgetter(*keys)


_SUFFIXED = re.compile(r"(.*)-r([1-9][0-9]*)")  # a task id as `vid-rN`, N as planned


def _repeat_holding(vid: str, ids: Mapping[str, int], broke: Mapping[str, int],
                    repeat: int) -> tuple[str, int] | None:
    """(variant id, repeat) of the earlier task whose id is `vid`, read as `other-rN`, or None.
    `ids` holds the variant ids planned so far (not `vid`); `broke` the repeat where a
    variant's output name failed (its later repeats were never made)."""
    m = _SUFFIXED.fullmatch(vid)
    if m is None:
        return None
    other, r = m.group(1), int(m.group(2)) - 1
    if other in ids and 1 <= r < repeat and broke.get(other, repeat) >= r:
        return other, r
    return None


_name_hash = hash  # (a test makes every name collide)


def _writer(folded: str, idx: int, holder: Task, more: dict[str, int]) -> int | None:
    """The index of the earlier task writing the file named `folded` (as file systems
    compare names), given `holder`, the first task writing a name of the same hash; None
    when task `idx` is the first."""
    if any((p.lower() if p.isascii() else fold(p)) == folded for p in holder.output_paths()):
        return holder.index
    held_by = more.setdefault(folded, idx)
    return None if held_by == idx else held_by


def _which(variant_id: str, repeat: int) -> str:
    return f"variant `{variant_id}`" if repeat == 0 else \
        f"repeat {repeat + 1} of variant `{variant_id}`"


def axis_value(task: Task, key: str, fields: Mapping[str, tuple[str, ...]]) -> Any:
    """The value of axis `key` for `task`: its input or prompt name, its combination value,
    else the value its request carries for a field (`fields`: models.field_paths), else None.
    """
    if key == "input":
        return task.input_name
    if key == "prompt":
        return task.prompt_name
    if key in task.axes:
        return task.axes[key]
    val: Any = task.request if key in fields else None
    for part in fields.get(key, ()):
        val = val.get(part) if isinstance(val, Mapping) else None
    return val


def _breakdown(tasks: Sequence[Task], repeat: int, fields: Mapping[str, tuple[str, ...]],
               price: Decimal) -> tuple[tuple[str, tuple[AxisValue, ...]], ...]:
    """Tasks, images and cost per value of `input`, `prompt` and every combination key.

    A field a combination does not set shows the value its request carries (from
    `defaults`), or None when the request does not send it.
    """
    firsts = tasks[::repeat]
    keys = ["input", "prompt"]
    seen = set(keys)
    for t in firsts:
        for k in t.axes:
            if k not in seen:
                seen.add(k)
                keys.append(k)
    out = []
    for key in keys:
        counts: dict[tuple[type, Scalar], list[Any]] = {}
        for t in firsts:
            val = axis_value(t, key, fields)
            slot = counts.setdefault((type(val), val), [val, 0, 0])
            slot[1] += repeat
            slot[2] += repeat * t.number_results
        out.append((key, tuple(AxisValue(v, n, i, price * i) for v, n, i in counts.values())))
    return tuple(out)


def _slice_breakdown(whole: tuple[tuple[str, tuple[AxisValue, ...]], ...],
                     tasks: Sequence[Task], fields: Mapping[str, tuple[str, ...]]
                     ) -> tuple[tuple[str, tuple[AxisValue, ...]], ...]:
    """The breakdown `whole` (of a whole plan) over `tasks` only: same axes and value order,
    values no task of `tasks` has left out."""
    out = []
    for key, values in whole:
        counts: dict[tuple[type, object], list[Any]] = {
            (type(av.value), av.value): [av.value, 0, 0, Decimal(0)] for av in values}
        for t in tasks:
            val = axis_value(t, key, fields)
            slot = counts.setdefault((type(val), val), [val, 0, 0, Decimal(0)])
            slot[1] += 1
            slot[2] += t.number_results
            slot[3] += t.est_cost
        out.append((key, tuple(AxisValue(v, n, i, c) for v, n, i, c in counts.values() if n)))
    return tuple(out)
