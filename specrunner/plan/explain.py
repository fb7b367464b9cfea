"""How a plan reads to people: where a variant came from (`explain`).

`explain(plan, variant_id)` names the matrix product combination or include entry that made a
variant, the include entries that changed it, its tasks, keys, outputs and request; for a
variant not in the plan it names the exclude entry that removed it, or suggests close ids.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

from specrunner.money import money
from specrunner.plan.identity import base_id, text_of
from specrunner.spec.types import Scalar, Spec

if TYPE_CHECKING:
    from specrunner.plan.build import Plan


def _where(spec: Spec, path: str) -> str:
    loc = spec.loc(path)
    return f"{path} at {loc}" if loc else path


def _pairs(values: Mapping[str, Scalar]) -> str:
    return ", ".join(f"{k}={text_of(v)}" for k, v in values.items()) or "(no values)"


def explain(plan: Plan, variant_id: str) -> tuple[str, str]:
    """Where `variant_id` came from, or which exclude entry removed it.

    Returns (status, text), status "found", "excluded" (the text names the exclude entry and
    its location) or "unknown" (the text suggests close ids).
    """
    spec, rep, exp = plan.spec, plan.spec.repeat, plan.expansion
    hit = next((t for t in plan.tasks if t.variant_id == variant_id), None)
    if hit is None:
        return _explain_missing(plan, variant_id)
    ci = hit.index // rep
    group = plan.tasks[ci * rep:(ci + 1) * rep]
    lines = [f"variant {variant_id}: combination #{ci + 1} of {len(plan.tasks) // rep}, "
             f"{len(group)} task(s) (repeat {rep})"]
    source = plan.combination_source(ci)
    if exp is None:
        lines.append(f"  declared by: variant #{ci + 1} ({_where(spec, source)})")
        lines.append(f"  values: {_pairs(hit.axes)}")
    else:
        c = exp.combinations[ci]
        if c.product_index is None:
            lines.append(f"  declared by: include #{c.created_by + 1} "  # type: ignore[operator]
                         f"({_where(spec, source)}), a new "
                         "combination: it joins no original combination without overwriting "
                         "an axis value")
            lines.append(f"  values: {_pairs(c.values)}")
        else:
            base = exp.combination_at(c.product_index)
            lines.append(f"  declared by: matrix product, combination #{c.product_index + 1} "
                         f"of {exp.product_size} ({_where(spec, source)})")
            lines.append(f"  axis values: {_pairs(base)}")
            current = dict(base)
            for j in c.touched_by:
                entry = spec.matrix.include[j]  # type: ignore[union-attr]
                changes = []
                for k, v in entry.items():
                    if k in base:
                        continue
                    if k not in current:
                        changes.append(f"added {k}={text_of(v)}")
                    elif current[k] != v or type(current[k]) is not type(v):
                        changes.append(f"changed {k}: {text_of(current[k])} -> {text_of(v)}")
                    else:
                        changes.append(f"kept {k}={text_of(v)}")
                    current[k] = v
                lines.append(f"  include #{j + 1} ({_where(spec, f'$.matrix.include[{j}]')}): "
                             + "; ".join(changes))
        if spec.matrix and spec.matrix.exclude:
            lines.append(f"  excludes: none of the {len(spec.matrix.exclude)} entries matches it")
    lines.append(f"  input: {hit.input_name}   prompt: {hit.prompt_name}")
    for t in group:
        outs = ", ".join(str(spec.output.dir / p) for p in t.output_paths())
        lines.append(f"  task #{t.index + 1} {t.variant_id}: key {t.task_key[:16]}... "
                     f"uuid {t.task_uuid} est. {money(t.est_cost)} -> {outs}")
    lines.append("  request:")
    body = json.dumps(dict(hit.request), indent=2, ensure_ascii=False)
    lines.extend("    " + line for line in body.splitlines())
    return "found", "\n".join(lines)


def _explain_missing(plan: Plan, variant_id: str) -> tuple[str, str]:
    spec, exp = plan.spec, plan.expansion
    stem = re.sub(r"-r[0-9]+$", "", variant_id)
    if exp is not None:
        for pidx, j in exp.excluded:
            values = exp.combination_at(pidx)
            if base_id(values, pidx) in (variant_id, stem):
                entry = spec.matrix.exclude[j]  # type: ignore[union-attr]
                return "excluded", (f"variant {variant_id} is not in the plan: matrix combination "
                        f"#{pidx + 1} ({_pairs(values)}) was removed by exclude #{j + 1} "
                        f"{{{_pairs(entry)}}} ({_where(spec, f'$.matrix.exclude[{j}]')})")
    close = difflib.get_close_matches(variant_id, [t.variant_id for t in plan.tasks], n=3)
    return "unknown", (f"no variant `{variant_id}` in the plan"
            + (f"; did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""))
