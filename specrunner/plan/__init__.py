"""Stage 2: a Spec -> a `Plan`: the exact requests, their identity and estimated cost. Pure.

`build_plan(spec)` expands the matrix (GitHub Actions rules) or the variants into Tasks.
"""

from specrunner.plan.build import MAX_PRODUCT, AxisValue, Plan, axis_value, build_plan
from specrunner.plan.explain import explain
from specrunner.plan.identity import base_id, canonical_json, task_key
from specrunner.plan.outpaths import path_problem
from specrunner.plan.task import LocalImage, Task, local_input_path, with_local_inputs

__all__ = [
    "MAX_PRODUCT", "AxisValue", "LocalImage", "Plan", "Task", "axis_value", "base_id",
    "build_plan", "canonical_json", "explain", "local_input_path", "path_problem", "task_key",
    "with_local_inputs",
]
