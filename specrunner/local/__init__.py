"""The built-in Runware-compatible server: ASGI app, edit engine, fault injection, ledger.

In-process (what `specrunner run --local` uses)::

    server = create_app(LocalConfig())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=server),
                                 base_url="http://local.runware") as client:
        r = await client.post("/v1", json=[task], headers={"Authorization": "Bearer k"})
    server.stats().total_billed_usd

On a socket: `specrunner serve` or `specrunner.local.server.running(server)` (tests).
"""

from __future__ import annotations

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
