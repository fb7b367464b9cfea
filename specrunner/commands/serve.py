"""`specrunner serve`: the local Runware-compatible server on a real socket (uvicorn).

REST (POST /v1) and WebSocket (ws://HOST:PORT/v1) on one port. Loopback only unless
--allow-remote. The accepted API key comes from --api-key, else RUNWARE_API_KEY, else any
non-empty key is accepted (GET /admin/stats then wants some Bearer key); it is never printed.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from specrunner.errors import UsageError

if TYPE_CHECKING:
    from specrunner.local import LocalConfig

# specrunner.local (the ASGI app, httpx, Pillow, jsonschema) and uvicorn are imported in the
# functions that use them: cli imports every command module, so `--help`, `report` and `diff`
# would pay for them otherwise.


class _FaultNames:
    """The known fault names, looked up only when `serve --help` is formatted (the
    `%(fault_names)s` of --fault's help)."""

    def __str__(self) -> str:
        from specrunner.local.faults import ALL_FAULTS

        return ", ".join(ALL_FAULTS)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a non-loopback --host")
    parser.add_argument("--api-key", help="the accepted key (default: RUNWARE_API_KEY, "
                        "else any non-empty key)")
    parser.add_argument("--faults", metavar="FILE", help="fault settings (JSON or YAML)")
    parser.add_argument("--seed", type=int, help="seed of the fault sequence")
    parser.add_argument("--latency", help="per request: S | fixed:S | uniform:LO,HI | "
                        "exponential:MEAN[,CAP]")
    parser.add_argument("--processing", help="per imageInference task, same forms as --latency")
    parser.add_argument("--capacity", type=int, help="max concurrent requests (more get 429)")
    fault = parser.add_argument("--fault", action="append", default=[], metavar="NAME=RATE",
                                help="a fault rate in 0..1; names: %(fault_names)s")
    fault.fault_names = _FaultNames()  # type: ignore[attr-defined]
    parser.add_argument("--hang-s", type=float, help="how long a 'hang' fault holds a response")
    parser.add_argument("--ttl", type=float, default=3600.0,
                        help="default lifetime of output image URLs, seconds")
    parser.add_argument("--state-dir", metavar="DIR",
                        help="keep uploads, accepted tasks and the ledger in DIR, so a "
                        "restart (even after kill -9) remembers them (default: memory only)")
    parser.add_argument("--no-render", action="store_true",
                        help="skip the edit engine; answer a tiny fixed image (benchmarks)")
    parser.add_argument("--log-level", default="warning",
                        choices=["critical", "error", "warning", "info", "debug"],
                        help="what the server logs (default: warning)")


def build_config(args: argparse.Namespace, env: Mapping[str, str]) -> LocalConfig:
    """The LocalConfig the flags describe (file first, flags override); UsageError if bad."""
    from specrunner.local import LocalConfig
    from specrunner.local.faults import FaultConfig, Latency, parse_rate

    faults = FaultConfig.load(args.faults) if args.faults else FaultConfig()
    rates = dict(faults.rates)
    for text in args.fault:
        name, rate = parse_rate(text)
        rates[name] = rate
    # An option given on the command line overrides the file's value (re-validated by
    # __post_init__).
    faults = replace(
        faults, rates=rates,
        seed=faults.seed if args.seed is None else args.seed,
        latency=faults.latency if args.latency is None else Latency.parse(args.latency),
        processing=(faults.processing if args.processing is None
                    else Latency.parse(args.processing)),
        capacity=faults.capacity if args.capacity is None else args.capacity,
        hang_s=faults.hang_s if args.hang_s is None else args.hang_s)
    if args.ttl < 1:
        raise UsageError("--ttl must be at least 1 second")
    key = args.api_key if args.api_key is not None else env.get("RUNWARE_API_KEY") or None
    if args.api_key is not None and not args.api_key:
        raise UsageError("--api-key must not be empty")
    return LocalConfig(api_key=key, faults=faults, render=not args.no_render,
                       default_ttl_s=args.ttl,
                       state_dir=Path(args.state_dir) if args.state_dir else None)


def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from specrunner.local import create_app
    from specrunner.local.server import bind, uvicorn_server

    config = build_config(args, os.environ)
    sock = bind(args.host, args.port, allow_remote=args.allow_remote)
    try:
        app = create_app(config)  # opens (and locks) the state directory, if any
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    auth = "the configured key" if config.api_key else "any non-empty key"
    active = {k: v for k, v in config.faults.rates.items() if v}
    state = f"; state: {config.state_dir}" if config.state_dir else ""
    print(f"specrunner local simulator on http://{where}  (POST /v1, WebSocket "
          f"ws://{where}/v1, GET /admin/stats; accepts {auth}; "
          f"faults: {active or 'none'}{state})", file=out, flush=True)
    server = uvicorn_server(app, log_level=args.log_level)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        app.close()
    return 0
