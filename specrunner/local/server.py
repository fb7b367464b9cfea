"""Running the local server on a real socket with uvicorn (what `specrunner serve` does).

`bind()` opens the listening socket first, so port 0 yields a real ephemeral port before
uvicorn starts; `running()` / `serving()` serve in a background thread for tests and
benchmarks. Accepted connections get TCP_NODELAY and stay alive between requests.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from specrunner.errors import UsageError
from specrunner.local.app import ConnectionDropped, LocalServer
from specrunner.runware import is_loopback


def bind(host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False) -> socket.socket:
    """A listening TCP socket; UsageError for a non-loopback host without `allow_remote`."""
    if not allow_remote and not is_loopback(host):
        raise UsageError(f"refusing to listen on {host}: not a loopback address "
                         "(pass --allow-remote to expose the simulator)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on an accepted socket only when its
    # proto says TCP, and accepted sockets inherit it from this one. Without NODELAY each
    # response (uvicorn writes headers and body separately) waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    return sock


class _QuietDrops(logging.Filter):
    """Hide uvicorn's traceback for injected connection drops (they are on purpose)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


_QUIET_DROPS = _QuietDrops()  # one instance: addFilter skips a filter already attached


# Idle keep-alive connections stay open longer than clients keep them (httpx: 5 s, aiohttp:
# 15 s), so the client is the one that closes an idle connection. When the server closes
# first, a request the client sends at that moment dies with the connection: an ambiguous
# outcome (was it billed?) made by the test server itself.
KEEP_ALIVE_S = 75


def uvicorn_server(app: LocalServer, log_level: str = "warning", **options: Any
                   ) -> uvicorn.Server:
    """A uvicorn.Server for `app` (h11, WebSockets through the `websockets` library's sans-I/O
    protocol, no access log unless log_level is info/debug)."""
    logging.getLogger("uvicorn.error").addFilter(_QUIET_DROPS)
    options.setdefault("timeout_keep_alive", KEEP_ALIVE_S)
    options.setdefault("ws_max_size", app.config.max_body_bytes)  # a message is a POST body
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                            lifespan="on", http="h11", ws="websockets-sansio",
                            timeout_graceful_shutdown=2, **options)
    return uvicorn.Server(config)


@contextlib.contextmanager
def serving(app: LocalServer, host: str = "127.0.0.1", port: int = 0,
            start_timeout_s: float = 10.0) -> Iterator[tuple[str, uvicorn.Server]]:
    """Serve `app` with uvicorn in a thread; yields (base URL, the uvicorn.Server, whose
    `server_state.connections` tests inspect); stops it on exit."""
    sock = bind(host, port)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="specrunner-local-server")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the local server did not start")
        time.sleep(0.01)
    try:
        bound_host, bound_port = sock.getsockname()[:2]
        yield f"http://{bound_host}:{bound_port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def running(app: LocalServer, host: str = "127.0.0.1", port: int = 0,
            start_timeout_s: float = 10.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a thread; yields the base URL (HTTP; the WebSocket API is
    the same address with ws:// and /v1); stops it on exit."""
    with serving(app, host, port, start_timeout_s) as (url, _):
        yield url
