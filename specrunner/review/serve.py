"""The review page on a real socket: uvicorn on a loopback socket (what `review` does).

`local.server.bind` opens the socket (loopback only); this module configures uvicorn for
the review app (h11, no WebSockets, no access log) and serves it in a thread for tests and
benchmarks (`running`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from specrunner.local.server import bind


def uvicorn_server(app: Any, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn.Server for the review app."""
    config = uvicorn.Config(app, log_level=log_level, access_log=log_level in ("info", "debug"),
                            lifespan="on", http="h11", ws="none", timeout_graceful_shutdown=2)
    return uvicorn.Server(config)


@contextlib.contextmanager
def running(app: Any, start_timeout_s: float = 10.0) -> Iterator[str]:
    """Serve `app` on 127.0.0.1 (any free port) in a thread; yields the base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn_server(app)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name="specrunner-review-server")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the review server did not start")
        time.sleep(0.01)
    try:
        host, port = sock.getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
