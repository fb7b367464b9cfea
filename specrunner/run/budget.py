"""A campaign's money during a run: the cap, what was spent, what the tasks in flight may
cost, and the price per image as the provider turns out to bill it.

The rules (README "Promises"):
- `max_usd` caps everything the campaign's output folder spent, across runs
  (`spent_before` is what the record says earlier runs spent, or may have spent).
- The price per image starts at the table's (or the highest cost the record holds) and rises
  to the highest cost the provider reports. Until a first answer says what a task costs, one
  task at a time is in flight (`may_dispatch`): a price above the table cannot be paid by a
  whole wave before it is seen. A provider that reports no cost at all leaves the table
  price in force, and the run says so (`source` "unreported").
- A task reserves the learned price times the images it may return (its numberResults
  times the most images per image asked that any task returned). Before every dispatch,
  spent + reserved (both at the learned price) + the task's reservation must fit; a task's
  cost is settled before its slot is freed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from decimal import Decimal, Inexact, getcontext, localcontext
from typing import TYPE_CHECKING

from specrunner import runware
from specrunner.record import IN_DOUBT_STATES

if TYPE_CHECKING:
    from specrunner.plan.task import Task
    from specrunner.record import Record, Standing, TaskState


class Budget:
    """The money of one run of a campaign (see the module docstring)."""

    def __init__(self, max_usd: Decimal, table_price: Decimal, *,
                 spent_before: Decimal = Decimal(0), reported: Iterable[Decimal] = ()) -> None:
        self.max_usd = max_usd
        self.table_price = table_price
        self.spent_before = spent_before
        self.spent = Decimal(0)  # by this run (reported costs; the price where none was)
        seen = list(reported)
        self.price = max([table_price, *seen])
        # table: nothing known yet; reported: the provider said what an image costs;
        # unreported: answers came back without a cost (the table price stands)
        self.source = "reported" if seen else "table"
        self.ratio = Decimal(1)  # the most images returned per image asked
        self.reserved_images = 0  # images asked by the tasks in flight, not yet settled
        self.unsettled = 0  # tasks dispatched whose cost is not known yet

    def cost_of(self, images: int) -> Decimal:
        """What `images` asked for may cost at the learned price."""
        return self.price * self.ratio * images

    @property
    def reserved(self) -> Decimal:
        """What the tasks in flight may still cost."""
        return self.cost_of(self.reserved_images)

    @property
    def campaign_spent(self) -> Decimal:
        """Everything the campaign spent: earlier runs and this one."""
        return self.spent_before + self.spent

    def fits(self, images: int) -> bool:
        """Whether `images` more can be asked for without passing the cap."""
        return self.campaign_spent + self.reserved + self.cost_of(images) <= self.max_usd

    def may_dispatch(self) -> bool:
        """Slow start: one task at a time until a first answer tells the price."""
        return self.source != "table" or self.unsettled == 0

    def reserve(self, images: int) -> bool:
        """Reserve for a task asking `images`; False (nothing reserved) if it does not fit."""
        if not self.fits(images):
            return False
        self.reserved_images += images
        self.unsettled += 1
        return True

    def settle(self, asked: int, charged: Decimal | None, returned: int) -> None:
        """A task that asked `asked` images got `returned`, costing `charged` (None: the
        provider said nothing; the learned price counts)."""
        self.reserved_images -= asked
        self.unsettled -= 1
        if asked and returned > asked:
            self.ratio = max(self.ratio, Decimal(returned) / asked)
        if charged is not None and returned:
            self.price = max(self.price, charged / returned)
            self.source = "reported"
        elif returned and self.source == "table":
            self.source = "unreported"
        self.spent += charged if charged is not None else self.price * returned

    def release(self, asked: int, maybe_charged: bool) -> None:
        """A task ended without a known cost: it may have been charged (counted at the
        learned price) or certainly not."""
        self.reserved_images -= asked
        self.unsettled -= 1
        if maybe_charged:
            self.spent += self.cost_of(asked)


def table_price_of(tasks: Sequence[Task]) -> Decimal:
    """The table price per image the plan used (its tasks' estimate per image)."""
    for t in tasks:
        if t.number_results:
            return t.est_cost / t.number_results
    return Decimal(0)


def campaign_budget(record: Record, standing: Standing, max_usd: Decimal,
                    table_price: Decimal, todo: Collection[str]) -> Budget:
    """A run's Budget: the price the record has seen, and what the campaign spent (or may
    have spent) on every task this run will not send again (`todo`: the keys it sends)."""
    budget = Budget(max_usd, table_price, reported=record.reported_prices())
    scale = budget.price / table_price if table_price else Decimal(1)

    def spent(st: TaskState) -> Decimal | None:
        """What a task not done may have cost (None: nothing)."""
        if st.results:
            return sum((r.cost if r.cost is not None else budget.price
                        for r in st.results), Decimal(0))
        if st.state in IN_DOUBT_STATES or (
                st.state == "failed" and not runware.documented_not_charged(st.error_code)):
            return st.est_cost * scale  # it may have run and been billed
        return None

    # (todo: their reservations cover whatever they may already have cost)
    terms = [(cost if cost is not None else est * scale, n) for cost, est, n in standing.done]
    terms += [(x, 1) for key, st in standing.open.items()
              if key not in todo and (x := spent(st)) is not None]
    before = _exact_sum(terms)
    if before is None:  # the sum rounds: add task by task, in record order, as it always has
        before = Decimal(0)
        for key, state, cost, est in record.task_costs():
            if key in todo:
                continue
            if state == "done":
                before += cost if cost is not None else est * scale
            elif (x := spent(standing.open[key])) is not None:
                before += x
    budget.spent_before = before
    return budget


def _exact_sum(terms: Sequence[tuple[Decimal, int]]) -> Decimal | None:
    """Decimal(0) + x + x + ... (n times each x) in the current context, computed as a sum of
    products: equal whenever no partial sum needs more digits than the context's precision
    (the terms are then added exactly, in any order). None when one might: add them one by
    one in their order instead."""
    if not all(x.is_finite() for x, _ in terms):
        return None
    with localcontext() as ctx:
        ctx.prec = 1000
        ctx.traps[Inexact] = True
        try:
            total = bound = Decimal(0)
            for x, n in terms:
                total += x * n
                bound += abs(x) * n
        except Inexact:
            return None
    exponent = min([0, *(int(x.as_tuple().exponent) for x, _ in terms)])
    # every partial sum is a multiple of 10**exponent no larger than `bound`
    if len(str(int(bound.scaleb(-exponent)))) > getcontext().prec:
        return None
    return total
