"""Money as specrunner shows it, in one place: decimal strings with at least cents.

`usd(Decimal("0.08"))` is "0.08", `usd(Decimal("1"))` "1.00", `usd(Decimal("0.0125"))`
"0.0125" (never rounded away: a price below a cent must stay visible); `money()` adds "$".
"""

from __future__ import annotations

from decimal import Decimal
from typing import overload

_CENT = Decimal("0.01")


@overload
def usd(d: Decimal) -> str: ...
@overload
def usd(d: None) -> None: ...
def usd(d: Decimal | None) -> str | None:
    """Dollars as a decimal string with at least cents: 0.08, 1.00, 0.0125 (None: None)."""
    if d is None:
        return None
    cents = d.quantize(_CENT)
    return str(cents) if d == cents else str(d.normalize())


def money(d: Decimal) -> str:
    """Dollars with a "$" and at least cents: $0.08, $12.80, $0.0125."""
    return "$" + usd(d)
