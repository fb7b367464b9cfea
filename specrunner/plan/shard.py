"""Slices of a plan for running one campaign on several machines (`--shard K/N`). Pure.

A task belongs to shard `int(task_key[:16], 16) % N + 1`: its key is the sha256 of exactly
what it generates, so a task keeps its shard whatever other tasks are added to or removed from
the spec, and the N shards partition the plan exactly (each task in one shard, every shard
decided by the task alone, with no coordinator and no shared state).

A shard's budget is the campaign's `max_usd` times the shard's share of the plan's estimated
cost, rounded DOWN to the budget unit (`budget_unit`: a cent, or the finest unit the budget or
a task's price is written in). Rounding down keeps every shard's budget at or above its own
estimate whenever the whole plan fits `max_usd` (estimates are whole numbers of that unit), and
the N budgets never add up to more than `max_usd` (they fall short of it by less than N units).
An explicit budget for the shard (`--max-usd`) replaces the share.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from specrunner.errors import PlanLimitError, UsageError
from specrunner.money import money
from specrunner.plan.build import Plan

MAX_SHARDS = 100_000  # a Kubernetes Indexed Job allows at most 100,000 completions
_SHARD = re.compile(r"([0-9]+)/([0-9]+)")
_CENT = Decimal("0.01")


@dataclass(frozen=True)
class Shard:
    """Shard `k` of `n` (1-based); `str()` is its canonical "K/N" form, as recorded."""

    k: int
    n: int

    def __str__(self) -> str:
        return f"{self.k}/{self.n}"

    @classmethod
    def parse(cls, text: str) -> Shard:
        """"2/3" -> Shard(2, 3); UsageError saying what is wrong otherwise."""
        m = _SHARD.fullmatch(text) if len(text) <= 13 else None
        if m is None:
            raise UsageError(f"bad shard {text!r}: write K/N with whole numbers, K from 1 to N "
                             "(e.g. 2/3: the second of three shards)")
        k, n = int(m.group(1)), int(m.group(2))
        if n < 1:
            raise UsageError(f"bad shard {text!r}: N, the number of shards, must be at least 1")
        if n > MAX_SHARDS:
            raise UsageError(f"bad shard {text!r}: at most {MAX_SHARDS:,} shards")
        if not 1 <= k <= n:
            raise UsageError(f"bad shard {text!r}: K counts from 1 to N (the shards of {n} are "
                             f"1/{n} to {n}/{n})")
        return cls(k, n)

    def holds(self, task_key: str) -> bool:
        """Whether the task with `task_key` belongs to this shard."""
        return shard_of(task_key, self.n) == self.k


def shard_of(task_key: str, n: int) -> int:
    """The shard (1..n) of the task whose key (sha256 hex) is `task_key`."""
    return int(task_key[:16], 16) % n + 1


def budget_unit(values: Iterable[Decimal]) -> Decimal:
    """The unit shard budgets are rounded to: a cent, or the finest unit any of `values` (the
    budget and the task estimates) is written in (0.0125 -> 0.0001)."""
    exponent = min([-2, *(int(v.as_tuple().exponent) for v in values if v.is_finite())])
    return Decimal(1).scaleb(exponent)


def budget_share(max_usd: Decimal, part: Decimal, total: Decimal, unit: Decimal,
                 shards: int) -> Decimal:
    """`max_usd * part / total` rounded down to `unit`, in exact integer arithmetic (a 28-digit
    Decimal context could round the quotient up first). `total` 0 (nothing priced): an equal
    split of `max_usd` among `shards`, rounded down too."""
    whole, ok = divmod(max_usd, unit)
    assert ok == 0, (max_usd, unit)  # `unit` is never coarser than max_usd's own
    if total == 0:
        return unit * (int(whole) // shards)
    return unit * (int(whole) * int(part / unit) // int(total / unit))


def shard_plan(plan: Plan, shard: Shard, max_usd: Decimal | None = None) -> Plan:
    """The tasks of `shard` (in plan order, plan indexes kept) as a Plan of their own: totals and
    breakdown recomputed, budget = the shard's share of `plan`'s budget, or `max_usd` when
    given. PlanLimitError if the shard's estimate exceeds an explicit `max_usd`."""
    tasks = tuple(t for t in plan.tasks if shard.holds(t.task_key))
    cost = sum((t.est_cost for t in tasks), Decimal(0))
    images = sum(t.number_results for t in tasks)
    if max_usd is None:
        full = plan.spec.budget.max_usd
        unit = budget_unit([full, *{t.est_cost for t in plan.tasks}])
        budget = budget_share(full, cost, plan.total_cost, unit, shard.n)
    else:
        budget = max_usd
        if cost > budget:
            raise PlanLimitError(f"shard {shard} needs {money(cost)} for {images:,} images; "
                                 f"its budget (--max-usd) is {money(budget)}", limit="max_usd",
                                 needed=cost, allowed=budget)
    spec = plan.spec.with_limits(max_usd=budget)
    return Plan(spec, tasks, cost, images, plan.expansion, whole=plan)


def describe(plan: Plan, part: Plan, shard: Shard, explicit_budget: bool = False) -> str:
    """One line on what `part` (shard `shard` of `plan`) holds and why its budget is what it
    is, for `plan` and `run` to show."""
    why = ("set by --max-usd" if explicit_budget else
           f"{money(plan.spec.budget.max_usd)} x {money(part.total_cost)}/"
           f"{money(plan.total_cost)}, rounded down")
    return (f"shard {shard}: {len(part.tasks):,} of {len(plan.tasks):,} tasks, est. "
            f"{money(part.total_cost)} of {money(plan.total_cost)}; budget "
            f"{money(part.spec.budget.max_usd)} ({why})")
