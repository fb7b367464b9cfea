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

from collections.abc import Iterable
from decimal import Decimal


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
