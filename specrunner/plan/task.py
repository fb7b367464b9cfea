"""A planned task: one imageInference request and everything needed to run and report it."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping

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
    out: dict[str, Any] = dict(request)
    for key, value in values.items():
        path = local_input_path(key)
        node: Any = out
        for step, nxt in zip(path, path[1:]):
            child = node[step]
            node[step] = child = list(child) if isinstance(child, list) else dict(child)
            node = child
        node[path[-1]] = value
    return out


@dataclass(frozen=True)
class Task:
    """One planned imageInference request and everything needed to run and report it.

    `request` is the exact body item sent to Runware, except that every local file it sends
    (seed, mask, style reference images) is the placeholder "local:<sha256>" until the runner
    substitutes an imageUUID or data URI: `local_inputs` maps each placeholder's key (see
    `local_input_path`) to its file, and `request_with` puts the values in.
    """

    index: int
    variant_id: str
    task_key: str  # sha256 hex of the normalized request, input bytes and repeat index
    task_uuid: str  # runware.task_uuid(task_key)
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

    def request_with(self, values: Mapping[str, str]) -> dict[str, Any]:
        """The request to send: `values` (local input key -> image UUID or data URI) in
        place of the placeholders (`with_local_inputs`)."""
        return with_local_inputs(self.request, values)

    def output_paths(self) -> list[str]:
        """Relative output file paths, one per result: stem.ext, or stem-1.ext... when N>1."""
        if self.number_results == 1:
            return [f"{self.output_stem}.{self.output_ext}"]
        return [f"{self.output_stem}-{i}.{self.output_ext}" for i in range(1, self.number_results + 1)]
