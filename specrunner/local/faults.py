"""Fault injection for the local server: what can go wrong, how often, and when.

A `FaultConfig` is a frozen value built from a mapping (a JSON/YAML file) or from CLI-style
strings. A `FaultInjector` turns it into decisions:

- request faults (one uniform draw per POST /v1, from a RNG seeded by `seed` and the request's
  sequence number, so a given arrival order replays exactly):
    before billing: http_429, http_500, http_502, http_503, http_504 (nothing is charged);
    after billing:  drop (connection aborted), hang (answer held back for `hang_s`),
                    non_json (an HTML body), truncated_body (the JSON cut in half);
- task faults (a RNG seeded by `seed` and the taskUUID, so they do not depend on ordering):
    provider_timeout (the whole task fails with `timeoutProvider`, not charged),
    content_policy (each result independently fails with `contentPolicyViolation`, not charged),
    billed_then_error (the task is billed and its results exist, but the answer to the
    imageInference request is a 500 `internalError`; getResponse returns the results);
- money: `price_usd` (what is billed and reported per image, default the model's table
  price), `report_cost: false` (bill, but never put `cost` in a result), `extra_images: N`
  (every task returns, and bills, N images more than its numberResults), `echo_key: true`
  (error messages quote the request's Authorization header, as a careless server might);
- download faults (per image GET, by sequence): truncated_image, oversized_image;
- latency (every POST /v1) and processing time (every imageInference) from a distribution;
- capacity: at most N POST /v1 requests in flight; more answer 429 `rateLimitExceeded`.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from specrunner.errors import UsageError

REQUEST_FAULTS = (
    "http_429", "http_500", "http_502", "http_503", "http_504",
    "drop", "hang", "non_json", "truncated_body",
)
BEFORE_BILLING = frozenset({"http_429", "http_500", "http_502", "http_503", "http_504"})
TASK_FAULTS = ("provider_timeout", "content_policy", "billed_then_error")
DOWNLOAD_FAULTS = ("truncated_image", "oversized_image")
ALL_FAULTS = REQUEST_FAULTS + TASK_FAULTS + DOWNLOAD_FAULTS
# The keys of a fault file besides the fault names (and `rates:`, which may hold them).
SETTINGS = ("seed", "latency", "processing", "capacity", "hang_s", "oversize_bytes",
            "price_usd", "report_cost", "extra_images", "echo_key")


@dataclass(frozen=True)
class Latency:
    """A delay distribution: `fixed` (a), `uniform` (a..b) or `exponential` (mean a, cap b)."""

    dist: str = "fixed"
    a: float = 0.0
    b: float = 0.0

    def __post_init__(self) -> None:
        if self.dist not in ("fixed", "uniform", "exponential"):
            raise UsageError(f"unknown latency distribution {self.dist!r} "
                             "(fixed, uniform, exponential)")
        if not (math.isfinite(self.a) and math.isfinite(self.b)) or self.a < 0 or self.b < 0:
            raise UsageError("latency parameters must be finite and >= 0")
        if self.dist == "uniform" and self.b < self.a:
            raise UsageError("uniform latency needs low <= high")

    def sample(self, rng: random.Random) -> float:
        """One delay in seconds."""
        if self.dist == "fixed":
            return self.a
        if self.dist == "uniform":
            return rng.uniform(self.a, self.b)
        value = rng.expovariate(1.0 / self.a) if self.a > 0 else 0.0
        return min(value, self.b) if self.b > 0 else value

    @classmethod
    def parse(cls, text: str | Mapping[str, Any] | float | int) -> Latency:
        """From `0.2`, `fixed:0.2`, `uniform:0.1,0.5`, `exponential:0.3[,cap]` or a mapping."""
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls("fixed", float(text))
        if isinstance(text, Mapping):
            dist = str(text.get("dist", "fixed"))
            keys = {"fixed": ("s",), "uniform": ("low", "high"), "exponential": ("mean", "cap")}
            names = keys.get(dist, ())
            unknown = set(text) - {"dist", *names}
            if unknown:
                raise UsageError(f"unknown latency keys {sorted(unknown)} for {dist!r}")
            vals = [_number(text.get(n, 0.0), f"latency.{n}") for n in names]
            return cls(dist, *vals)
        if not isinstance(text, str):
            raise UsageError(f"latency must be a number, string or mapping, not {text!r}")
        dist, _, params = text.partition(":")
        if not params:
            dist, params = "fixed", dist
        dist = {"exp": "exponential"}.get(dist, dist)
        parts = [_number(p, "latency") for p in params.split(",") if p.strip()]
        if not 1 <= len(parts) <= 2:
            raise UsageError(f"cannot read latency {text!r}")
        return cls(dist, *parts)


def _number(value: Any, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{what}: {value!r} is not a number") from None


@dataclass(frozen=True)
class FaultConfig:
    """Everything the fault injector needs; the default injects nothing."""

    seed: int = 0
    latency: Latency = Latency()
    processing: Latency = Latency()
    capacity: int | None = None
    rates: Mapping[str, float] = field(default_factory=dict)
    hang_s: float = 3600.0
    oversize_bytes: int = 64 * 1024 * 1024
    price_usd: Decimal | None = None  # billed and reported per image; None: the table price
    report_cost: bool = True
    extra_images: int = 0
    echo_key: bool = False

    def __post_init__(self) -> None:
        for name, rate in self.rates.items():
            if name not in ALL_FAULTS:
                raise UsageError(f"unknown fault {name!r}; known: {', '.join(ALL_FAULTS)}")
            if not 0.0 <= rate <= 1.0:
                raise UsageError(f"fault rate {name}={rate} is not within 0..1")
        for group in (REQUEST_FAULTS, DOWNLOAD_FAULTS):
            if sum(self.rates.get(n, 0.0) for n in group) > 1.0 + 1e-9:
                raise UsageError(f"rates of {', '.join(group)} add up to more than 1")
        if self.capacity is not None and self.capacity < 1:
            raise UsageError("capacity must be >= 1")
        if self.hang_s < 0 or self.oversize_bytes < 0:
            raise UsageError("hang_s and oversize_bytes must be >= 0")
        if self.price_usd is not None and not (self.price_usd.is_finite()
                                               and self.price_usd >= 0):
            raise UsageError("price_usd must be a number >= 0")
        if not 0 <= self.extra_images <= 20:
            raise UsageError("extra_images must be between 0 and 20")

    def rate(self, name: str) -> float:
        return float(self.rates.get(name, 0.0))

    @classmethod
    def from_mapping(cls, doc: Mapping[str, Any]) -> FaultConfig:
        """Build from a parsed file (format in FAULT_FILE_KEYS). Fault names may sit at the top
        level (`drop: 0.02`) or under `rates:`. UsageError on unknown keys or bad values."""
        unknown = sorted(str(k) for k in doc if k not in SETTINGS and k not in ALL_FAULTS
                         and k != "rates")
        if unknown:
            raise UsageError(f"unknown fault setting(s) {', '.join(unknown)}; valid keys: "
                             f"{', '.join(SETTINGS)}, rates, and the fault names "
                             f"{', '.join(ALL_FAULTS)} (a rate in 0..1 each)")
        rates = doc.get("rates") or {}
        if not isinstance(rates, Mapping):
            raise UsageError("rates must be a mapping of fault name to rate")
        twice = sorted(str(k) for k in rates if k in doc)
        if twice:
            raise UsageError(f"fault rate(s) {', '.join(twice)} given both at the top level "
                             "and under rates: keep one")
        merged = {**rates, **{k: v for k, v in doc.items() if k in ALL_FAULTS}}
        cap = doc.get("capacity")
        return cls(
            seed=int(_number(doc.get("seed", 0), "seed")),
            latency=Latency.parse(doc.get("latency", 0.0)),
            processing=Latency.parse(doc.get("processing", 0.0)),
            capacity=None if cap is None else int(_number(cap, "capacity")),
            rates={str(k): _number(v, f"rate of {k}") for k, v in merged.items()},
            hang_s=_number(doc.get("hang_s", 3600.0), "hang_s"),
            oversize_bytes=int(_number(doc.get("oversize_bytes", 64 * 1024 * 1024),
                                       "oversize_bytes")),
            price_usd=(None if doc.get("price_usd") is None
                       else Decimal(str(_number(doc["price_usd"], "price_usd")))),
            report_cost=_flag(doc.get("report_cost", True), "report_cost"),
            extra_images=int(_number(doc.get("extra_images", 0), "extra_images")),
            echo_key=_flag(doc.get("echo_key", False), "echo_key"),
        )

    @classmethod
    def load(cls, path: str | Path) -> FaultConfig:
        """Read a JSON or YAML fault file (YAML is a superset; safe loader only)."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read fault file {path}: {exc.strerror}") from None
        try:
            doc = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise UsageError(f"fault file {path} is not valid JSON/YAML: {exc}") from None
        if not isinstance(doc, Mapping):
            raise UsageError(f"fault file {path} must hold a mapping")
        return cls.from_mapping(doc)


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{what} must be true or false, not {value!r}")
    return value


def parse_rate(text: str) -> tuple[str, float]:
    """`http_503=0.1` -> ("http_503", 0.1) for the --fault flag."""
    name, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"--fault wants NAME=RATE, got {text!r}")
    return name.strip(), _number(value, f"--fault {name}")


@dataclass(frozen=True)
class TaskFaults:
    """Faults decided for one accepted imageInference task."""

    provider_timeout: bool = False
    blocked: frozenset[int] = frozenset()  # result indexes rejected by content policy
    billed_then_error: bool = False  # billed, results made, but the answer is an error


class FaultInjector:
    """Deterministic decisions from a FaultConfig; keeps per-kind counters of what it injected."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._requests = 0
        self._downloads = 0
        self.injected: Counter[str] = Counter()  # kind -> times injected, first-seen order

    def count(self, kind: str, n: int = 1) -> None:
        """Record `n` injections of `kind` (the app counts capacity refusals here too)."""
        self.injected[kind] += n

    def _rng(self, *parts: object) -> random.Random:
        key = "\0".join(str(p) for p in (self.config.seed, *parts)).encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))

    def _pick(self, rng: random.Random, names: tuple[str, ...]) -> str | None:
        u = rng.random()
        acc = 0.0
        for name in names:
            acc += self.config.rate(name)
            if u < acc:
                self.count(name)
                return name
        return None

    def next_request(self) -> tuple[str | None, float]:
        """(fault or None, latency in seconds) for the next POST /v1 in arrival order."""
        self._requests += 1
        rng = self._rng("request", self._requests)
        return self._pick(rng, REQUEST_FAULTS), self.config.latency.sample(rng)

    def next_download(self) -> str | None:
        """The fault (or None) for the next image GET."""
        self._downloads += 1
        return self._pick(self._rng("download", self._downloads), DOWNLOAD_FAULTS)

    def for_task(self, task_uuid: str, number_results: int) -> tuple[TaskFaults, float]:
        """Faults and processing time for an accepted task (depends only on seed and UUID)."""
        rng = self._rng("task", task_uuid)
        processing = self.config.processing.sample(rng)
        if rng.random() < self.config.rate("provider_timeout"):
            self.count("provider_timeout")
            return TaskFaults(provider_timeout=True), processing
        p = self.config.rate("content_policy")
        blocked = frozenset(i for i in range(number_results) if rng.random() < p)
        if blocked:
            self.count("content_policy", len(blocked))
        erred = rng.random() < self.config.rate("billed_then_error")
        if erred:
            self.count("billed_then_error")
        return TaskFaults(blocked=blocked, billed_then_error=erred), processing
