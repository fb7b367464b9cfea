"""Making many long-lived objects at once with the cyclic GC paused. Pure.

A plan of a million tasks, or a record snapshot and report of 50,000, make objects by the
hundred thousand, none of which is garbage: each young collection on the way would walk
them all again only to free nothing (a third of the time of a plan).

Used by the CLI only (cli.SHORT, and `run` while it plans): whether to pause the collector
is the program's choice, never the library's.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic GC off while the block makes its objects (reference counting still frees
    what is dropped), then as it was.

    On the way out, freeze + unfreeze moves what the block made to the oldest generation at
    once (a list splice), where surviving the next young and middle collections would have
    put it after walking it twice (~0.7 s each for a plan of a million tasks). Nothing
    stays frozen; garbage among those objects is found by the next full collection. Skipped
    when the caller has frozen objects of its own (unfreeze would release them too), and
    when the GC was already off (nested use, or a caller's choice): that state is kept."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        if gc.get_freeze_count() == 0:
            gc.freeze()
            gc.unfreeze()
        gc.enable()
