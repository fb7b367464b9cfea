"""A planned task: one imageInference request and everything needed to run and report it."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from typing import Any

from specrunner.runware import task_uuid
from specrunner.spec.types import Scalar


@dataclass(frozen=True)
class LocalImage:
    """A local file the runner must send (uploaded once per sha256, or inlined)."""

    path: Path
    sha256: str
    invert: bool = False  # black-edits masks are inverted before sending


_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
# Keys of local_inputs that name a field of the request's `inputs` object.
INPUT_KEYS = ("seedImage", "maskImage")


def local_input_path(key: str) -> tuple[str | int, ...]:
    """Where in the request the placeholder of local input `key` sits: `seedImage` and
    `maskImage` under `inputs`; any other key is a dotted path with list indexes, e.g.
    `providerSettings.ideogram.styleReferenceImages[0]`."""
    if key in INPUT_KEYS:
        return ("inputs", key)
    steps = tuple(m.group(1) if m.group(1) is not None else int(m.group(2))
                  for m in _STEP.finditer(key))
    if not steps or "".join(f"[{p}]" if isinstance(p, int) else f".{p}"
                            for p in steps).lstrip(".") != key:
        raise ValueError(f"not a request path: {key!r}")
    return steps


def with_local_inputs(request: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, Any]:
    """A copy of `request` with the value of each local input key (an image UUID or a data
    URI) at its path (`local_input_path`); the containers on the way are copied, so the
    planned request, whose nested mappings tasks share, is never changed."""
    out: dict[str, Any] = request_dict(request)
    for key, value in values.items():
        path = local_input_path(key)
        node: Any = out
        for step in path[:-1]:
            child = node[step]
            node[step] = child = list(child) if isinstance(child, list) else dict(child)
            node = child
        node[path[-1]] = value
    return out


class PlannedRequest(Mapping[str, Any]):
    """A planned request as a read-only mapping that stores only what is the task's own.

    `shape` is the request every task of one combination of field settings and input sends
    (shared, never changed), with any value at `taskUUID` and `positivePrompt`: the UUID
    derived from this task's key and its prompt stand there. A plan of a million tasks keeps
    a million of these instead of a million dicts of a dozen keys each (~650 bytes apiece).
    `dict(request)` makes the request as a dict, in the same key order.
    """

    __slots__ = ("key", "prompt", "shape")

    def __init__(self, shape: Mapping[str, Any], key: str, prompt: str) -> None:
        self.shape, self.key, self.prompt = shape, key, prompt

    def __getitem__(self, key: str) -> Any:
        if key == "taskUUID":
            return task_uuid(self.key)
        if key == "positivePrompt":
            return self.prompt
        return self.shape[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shape)

    def __len__(self) -> int:
        return len(self.shape)

    def __contains__(self, key: object) -> bool:
        return key in self.shape

    def get(self, key: str, default: Any = None) -> Any:
        """The value at `key`, else `default` (Mapping.get without the exception)."""
        if key == "taskUUID":
            return task_uuid(self.key)
        if key == "positivePrompt":
            return self.prompt
        return self.shape.get(key, default)

    def copy(self) -> dict[str, Any]:
        """The request as a new dict (shallow: nested mappings are shared)."""
        out = dict(self.shape)
        out["taskUUID"], out["positivePrompt"] = task_uuid(self.key), self.prompt
        return out

    def __repr__(self) -> str:
        return repr(self.copy())

    def __reduce__(self) -> tuple[Any, ...]:
        return (PlannedRequest, (self.shape, self.key, self.prompt))


def request_dict(request: Mapping[str, Any]) -> dict[str, Any]:
    """`request` as a new dict (shallow), fast for a PlannedRequest."""
    return request.copy() if isinstance(request, PlannedRequest) else dict(request)


@dataclass(frozen=True, slots=True)
class Task:
    """One planned imageInference request and everything needed to run and report it.

    `request` is the exact body item sent to Runware, except that every local file it sends
    (seed, mask, style reference images) is the placeholder "local:<sha256>" until the runner
    substitutes an imageUUID or data URI: `local_inputs` maps each placeholder's key (see
    `local_input_path`) to its file, and `request_with` puts the values in. It is a read-only
    Mapping (planned tasks carry a `PlannedRequest`); `dict(task.request)` for a dict.
    """

    index: int
    variant_id: str
    task_key: str  # sha256 hex of the normalized request, input bytes and repeat index
    request: Mapping[str, Any]
    input_name: str
    prompt_name: str | None
    axes: Mapping[str, Scalar]  # the combination that produced this task
    repeat: int  # 0-based repeat index
    number_results: int
    est_cost: Decimal
    output_stem: str  # relative to the output dir, no extension
    output_ext: str  # "jpg" | "png" | "webp"
    local_inputs: Mapping[str, LocalImage] = field(default_factory=dict)

    @property
    def task_uuid(self) -> str:
        """The taskUUID of the task's first send: `runware.task_uuid(task_key)`. Derived on
        each read, not stored: a plan of a million tasks need not hold a million UUIDs it
        may never send (`plan --format table` shows none)."""
        return task_uuid(self.task_key)

    def request_with(self, values: Mapping[str, str]) -> dict[str, Any]:
        """The request to send: `values` (local input key -> image UUID or data URI) in
        place of the placeholders (`with_local_inputs`)."""
        return with_local_inputs(self.request, values)

    def output_paths(self) -> list[str]:
        """Relative output file paths, one per result: stem.ext, or stem-1.ext... when N>1."""
        if self.number_results == 1:
            return [f"{self.output_stem}.{self.output_ext}"]
        return [f"{self.output_stem}-{i}.{self.output_ext}"
                for i in range(1, self.number_results + 1)]


_FIELDS = ("index", "variant_id", "task_key", "request", "input_name", "prompt_name", "axes",
           "repeat", "number_results", "est_cost", "output_stem", "output_ext", "local_inputs")
assert tuple(f.name for f in fields(Task)) == _FIELDS, "planned_task must set every field"
(_index, _variant_id, _task_key, _request, _input_name, _prompt_name, _axes, _repeat,
 _number_results, _est_cost, _output_stem, _output_ext, _local_inputs) = (
    Task.__dict__[name].__set__ for name in _FIELDS)  # the slots' own setters
_new = object.__new__


def planned_task(index: int, variant_id: str, task_key: str, request: Mapping[str, Any],
                 input_name: str, prompt_name: str | None, axes: Mapping[str, Scalar],
                 repeat: int, number_results: int, est_cost: Decimal, output_stem: str,
                 output_ext: str, local_inputs: Mapping[str, LocalImage]) -> Task:
    """`Task(...)` with the same arguments, made the planner's way: the frozen dataclass's
    __init__ sets each field through object.__setattr__, twice the cost of setting the slots
    directly, and a plan makes up to a million tasks (tests/test_plan.py checks both agree)."""
    t = _new(Task)
    _index(t, index)
    _variant_id(t, variant_id)
    _task_key(t, task_key)
    _request(t, request)
    _input_name(t, input_name)
    _prompt_name(t, prompt_name)
    _axes(t, axes)
    _repeat(t, repeat)
    _number_results(t, number_results)
    _est_cost(t, est_cost)
    _output_stem(t, output_stem)
    _output_ext(t, output_ext)
    _local_inputs(t, local_inputs)
    return t
