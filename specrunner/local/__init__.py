"""The built-in Runware-compatible server: ASGI app, edit engine, fault injection, ledger.

In-process (what `specrunner run --local` uses)::

    server = create_app(LocalConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server),
                                 base_url="http://local.runware") as client:
        r = await client.post("/v1", json=[task], headers={"Authorization": "Bearer k"})
    server.stats().total_billed_usd

On a socket: `specrunner serve` or `specrunner.local.server.running(server)` (tests), where
the same address also speaks Runware's WebSocket API (`ws://HOST:PORT/v1`, ws.py).
`LocalConfig(state_dir=DIR)` keeps uploads, accepted tasks and the ledger across restarts
(journal.py); close such a server (`server.close()` or `with create_app(...) as server`) to
hand DIR to the next one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from specrunner.local.app import ConnectionDropped, LocalConfig, LocalServer, create_app
    from specrunner.local.engine import PLACEHOLDER_SIZE, UPLOAD_MAX_SIDE
    from specrunner.local.faults import ALL_FAULTS, FaultConfig, Latency
    from specrunner.local.state import DoubleCharge, Ledger, Stats
    from specrunner.local.tasks import SIMULATOR

__all__ = [
    "ALL_FAULTS", "PLACEHOLDER_SIZE", "SIMULATOR", "UPLOAD_MAX_SIDE", "ConnectionDropped",
    "DoubleCharge", "FaultConfig", "Latency", "Ledger", "LocalConfig", "LocalServer", "Stats",
    "create_app",
]

# The re-exports load their submodule on first use (PEP 562), so importing one submodule,
# e.g. specrunner.local.faults, does not pull in the ASGI app and with it httpx and anyio.
_WHERE = {
    "ConnectionDropped": "app", "LocalConfig": "app", "LocalServer": "app", "create_app": "app",
    "PLACEHOLDER_SIZE": "engine", "UPLOAD_MAX_SIDE": "engine",
    "ALL_FAULTS": "faults", "FaultConfig": "faults", "Latency": "faults",
    "DoubleCharge": "state", "Ledger": "state", "Stats": "state",
    "SIMULATOR": "tasks",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
