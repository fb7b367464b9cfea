"""A planned task: one imageInference request and everything needed to run and report it."""

from __future__ import annotations

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


@dataclass(frozen=True)
class Task:
    """One planned imageInference request and everything needed to run and report it.

    `request` is the exact body item sent to Runware, except that inputs naming local files
    hold the placeholder "local:<sha256>" until the runner substitutes an imageUUID or data
    URI (`local_inputs` says which file each placeholder stands for).
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

    def output_paths(self) -> list[str]:
        """Relative output file paths, one per result: stem.ext, or stem-1.ext... when N>1."""
        if self.number_results == 1:
            return [f"{self.output_stem}.{self.output_ext}"]
        return [f"{self.output_stem}-{i}.{self.output_ext}" for i in range(1, self.number_results + 1)]
