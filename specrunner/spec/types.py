"""The typed values of a validated campaign spec (what `load_spec` returns). Frozen, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from specrunner.errors import Loc, nearest_loc

Scalar = str | int | float | bool | None

# Keys of a matrix combination or variant that are not request fields or variables.
BUILTIN_KEYS = ("input", "prompt")


@dataclass(frozen=True)
class ImageRef:
    """A seed, mask or reference image: a local file, an https URL, or a Runware image UUID."""

    kind: str  # "file" | "url" | "uuid"
    value: str  # absolute path for files; the URL or UUID otherwise
    display: str  # as written in the spec (relative path, URL, UUID)
    sha256: str | None = None  # hex digest of the file's bytes (files only)
    size: tuple[int, int] | None = None  # (width, height) in pixels (files only)
    format: str | None = None  # "PNG" | "JPEG" | "WEBP" (files only)


@dataclass(frozen=True)
class InputPair:
    """A named seed/mask pair with its own template variables."""

    name: str
    seed: ImageRef
    mask: ImageRef
    polarity: str = "white-edits"  # "white-edits" (Runware's convention) | "black-edits"
    vars: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Matrix:
    """A GitHub-Actions-style matrix: ordered axes plus include and exclude entries."""

    axes: tuple[tuple[str, tuple[Scalar, ...]], ...]
    include: tuple[Mapping[str, Scalar], ...] = ()
    exclude: tuple[Mapping[str, Scalar], ...] = ()


@dataclass(frozen=True)
class VariantDecl:
    """One explicit variant: `input`, `prompt`, field aliases and variables, plus optional id."""

    values: Mapping[str, Scalar]
    id: str | None = None


@dataclass(frozen=True)
class OutputSettings:
    dir: Path  # absolute
    name: str = "{variant}"  # template of the file stem, relative to dir


@dataclass(frozen=True)
class Budget:
    max_usd: Decimal
    max_tasks: int = 10_000


@dataclass(frozen=True)
class Execution:
    concurrency: int = 8
    delivery: str = "async"  # "async" | "sync"
    upload: str = "upload"  # "upload" (imageUpload once per content hash) | "inline"
    request_timeout_s: float = 60.0
    task_deadline_s: float = 900.0
    max_attempts: int = 3
    retry_budget_ratio: float = 0.2
    poll_interval_s: float = 1.0
    poll_max_interval_s: float = 10.0
    max_download_bytes: int = 50 * 1024 * 1024


@dataclass(frozen=True)
class Spec:
    """A validated campaign. `locs` maps JSON paths ("$.prompts.neon") to source positions."""

    path: Path  # absolute path of the spec file
    source_sha256: str
    name: str
    model: str
    defaults: Mapping[str, Any]  # request fields, nested as in the request
    vars: Mapping[str, str]
    inputs: Mapping[str, InputPair]  # declaration order
    prompts: Mapping[str, str]  # declaration order
    matrix: Matrix | None
    variants: tuple[VariantDecl, ...] | None
    repeat: int
    output: OutputSettings
    budget: Budget
    execution: Execution
    prices: Mapping[str, Decimal]  # model id -> USD per image (package table + overrides)
    locs: Mapping[str, Loc] = field(default_factory=dict, compare=False, repr=False)
    description: str = ""
    # Images in `defaults` list fields (styleReferenceImages), by request path with the list
    # index ("providerSettings.ideogram.styleReferenceImages[0]"); `defaults` keeps the
    # values as written, the plan puts "local:<sha256>" where a local file goes.
    images: Mapping[str, ImageRef] = field(default_factory=dict)

    def loc(self, path: str) -> Loc | None:
        """The source position of `path`, or of its nearest ancestor that has one."""
        return nearest_loc(self.locs, path) or Loc(str(self.path), 1, 1)

    def with_limits(self, *, max_usd: Decimal | None = None,
                    concurrency: int | None = None) -> Spec:
        """This spec with its budget or concurrency overridden (the CLI's --max-usd and
        --concurrency); None keeps the spec's own."""
        spec = self
        if max_usd is not None:
            spec = replace(spec, budget=replace(spec.budget, max_usd=max_usd))
        if concurrency is not None:
            spec = replace(spec, execution=replace(spec.execution, concurrency=concurrency))
        return spec
