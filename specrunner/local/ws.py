"""Runware's WebSocket API on the local server: `ws://HOST:PORT/v1`, an ASGI websocket scope.

The protocol, as Runware documents it and its SDKs (runware-sdk, runware) speak it:

- Every message is JSON. The client sends task arrays; the server sends objects,
  `{"data": [...]}` or `{"errors": [...]}`, one per task, each pushed as soon as that task
  is answered (a sync imageInference when rendered, an async one at acceptance).
- The first message starts with `{"taskType": "authentication", "apiKey": ...}`; the answer
  is `{"data": [{"taskType": "authentication", "connectionSessionUUID": ...}]}`. A missing or
  wrong key gets `{"errors": [{"code": "invalidApiKey", "taskType": "authentication", ...}]}`
  and the connection is closed (1008). Any other first message: `missingApiKey`, closed.
- `[{"taskType": "ping", "ping": true}]` is answered `{"data": [{"taskType": "ping",
  "pong": true}]}`. A connection silent for `idle_s` (Runware: 120 s) is closed (1000).
- Session resumption: answers that could not be delivered because the connection went away
  wait in their session for `session_s` (Runware: 120 s). Authenticating with the same key
  and `connectionSessionUUID` gets the same session back and its waiting answers, in order,
  right after the authentication answer. An unknown or expired UUID starts a new session.

The tasks are the REST tasks: the same Simulator, ledger, conflictTaskUUID rule, uploads,
getResponse and getTaskDetails, so a task sent over one transport is known to the other.
Faults (one draw per message, as per POST on REST, from the same FaultConfig):
http_429 / http_500 / http_503 answer every task of the message with rateLimitExceeded /
internalServerError / serviceUnavailable, unbilled; http_502 / http_504 close the connection
(1014, a gateway failing) before the message is read, unbilled; drop closes it (1011) once
the message's tasks are billed, their answers waiting in the session; hang holds the answers
back for hang_s (or until the connection goes); non_json and truncated_body replace each
answer with an HTML page or the JSON cut in half (those answers are lost; getResponse has
them). capacity counts messages in flight, as it counts POSTs.
"""

from __future__ import annotations

import hashlib
import json
import uuid as uuidlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from specrunner.local.faults import BEFORE_BILLING, FaultConfig, FaultInjector
from specrunner.local.state import Ledger
from specrunner.local.tasks import SIMULATOR, Simulator
from specrunner.runware import error_object

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

GATEWAY_PAGE = ("<html><head><title>{0}</title></head><body><center><h1>{0}</h1></center>"
                "<hr><center>specrunner local simulator (injected fault)</center></body></html>")
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR, CLOSE_BAD_GATEWAY = 1000, 1008, 1011, 1014
MAX_SESSIONS = 10_000
_STATUS_ERRORS = {429: "rateLimitExceeded", 500: "internalServerError",
                  503: "serviceUnavailable"}


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


class _Socket:
    """One accepted connection: sends text frames until it is closed (by either side)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = anyio.Lock()
        self.open = True
        self.closed = anyio.Event()

    def gone(self) -> None:
        self.open = False
        self.closed.set()

    async def text(self, frame: str) -> bool:
        """Send one frame; False if the connection is closed (then nothing was sent)."""
        async with self._lock:
            if not self.open:
                return False
            try:
                await self._send({"type": "websocket.send", "text": frame})
            except OSError:  # uvicorn's ClientDisconnected: the peer is gone
                self.gone()
                return False
            return True

    async def close(self, code: int, reason: str = "") -> None:
        async with self._lock:
            if self.open:
                self.gone()
                try:
                    await self._send({"type": "websocket.close", "code": code,
                                      "reason": reason})
                except OSError:
                    pass


@dataclass
class Session:
    """A connectionSessionUUID: the connection it is attached to, and the answers waiting."""

    uuid: str
    key_digest: bytes
    socket: _Socket | None = None
    waiting: list[str] = field(default_factory=list)
    detached_at: float | None = None
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def deliver(self, frame: str) -> None:
        """Send on the attached connection, or keep the frame for a resumption."""
        async with self.lock:
            if self.socket is None or not await self.socket.text(frame):
                self.waiting.append(frame)

    async def attach(self, socket: _Socket, greeting: str) -> None:
        """Send `greeting`, then the waiting frames in order (those the socket cannot take
        keep waiting)."""
        async with self.lock:
            self.socket, self.detached_at = socket, None
            if await socket.text(greeting):
                while self.waiting and await socket.text(self.waiting[0]):
                    self.waiting.pop(0)

    def detach(self, socket: _Socket, now: float) -> None:
        if self.socket is socket:
            self.socket, self.detached_at = None, now


class WebSocketAPI:
    """The `/v1` WebSocket endpoint of a LocalServer (its simulator, ledger and faults)."""

    def __init__(self, *, sim: Simulator, ledger: Ledger, injector: FaultInjector,
                 faults: FaultConfig, key_ok: Callable[[object], bool],
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]],
                 idle_s: float, session_s: float) -> None:
        self.sim, self.ledger, self.injector, self.faults = sim, ledger, injector, faults
        self.key_ok, self.clock, self.sleep = key_ok, clock, sleep
        self.idle_s, self.session_s = idle_s, session_s
        self.sessions: OrderedDict[str, Session] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send, base_url: str
                       ) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        self.ledger.ws_connections += 1
        socket = _Socket(send)
        session: Session | None = None
        async with anyio.create_task_group() as tg:
            while socket.open:
                event = None
                with anyio.move_on_after(self.idle_s):  # wall time, like Runware's timeout
                    event = await receive()
                if event is None:
                    await socket.close(CLOSE_NORMAL, f"no message for {self.idle_s:g} s")
                    break
                if event["type"] != "websocket.receive":
                    break  # websocket.disconnect
                self.ledger.ws_messages += 1
                tasks = _parse(event)
                if session is None:
                    session = await self._authenticate(socket, tasks)
                    if session is None:
                        break
                    tasks = tasks[1:]  # type: ignore[index]
                    if not tasks:
                        continue
                if not isinstance(tasks, list) or not tasks:
                    await session.deliver(_dumps({"errors": [error_object(
                        "invalidPayload", "a message must be a non-empty JSON array of tasks")]}))
                    continue
                rest = []
                for task in tasks:
                    kind = task.get("taskType") if isinstance(task, dict) else None
                    if kind == "ping":
                        self.ledger.count("ping")
                        await session.deliver(_dumps({"data": [{"taskType": "ping",
                                                                "pong": True}]}))
                    elif kind == "authentication":  # already authenticated: say so again
                        await session.deliver(_dumps({"data": [self._auth_item(session)]}))
                    else:
                        rest.append(task)
                if rest:
                    tg.start_soon(self._message, session, socket, rest, base_url)
            socket.gone()
            if session is not None:
                session.detach(socket, self.clock())
            # the task group now waits for this connection's tasks: their answers are kept
            # in the session for a resumption

    # ---- authentication and sessions --------------------------------------------------------
    async def _authenticate(self, socket: _Socket, tasks: object) -> Session | None:
        first = tasks[0] if isinstance(tasks, list) and tasks else None
        if not isinstance(first, dict) or first.get("taskType") != "authentication":
            await self._refuse(socket, "missingApiKey", "the first message must be "
                               '[{"taskType": "authentication", "apiKey": ...}]')
            return None
        self.ledger.count("authentication")
        key = first.get("apiKey")
        if not self.key_ok(key):
            await self._refuse(socket, "invalidApiKey", "missing or invalid API key")
            return None
        digest = hashlib.sha256(str(key).encode()).digest()
        self._expire()
        wanted = first.get("connectionSessionUUID")
        session = self.sessions.get(wanted) if isinstance(wanted, str) else None
        if session is not None and session.key_digest == digest:
            self.ledger.sessions_resumed += 1
            old = session.socket
            if old is not None:  # the client gave up on a connection we still hold
                session.detach(old, self.clock())
                await old.close(CLOSE_NORMAL, "session resumed on another connection")
        else:
            session = Session(str(uuidlib.uuid4()), digest)
            self.sessions[session.uuid] = session
        self.sessions.move_to_end(session.uuid)
        resumed = len(session.waiting)
        item = self._auth_item(session)
        item["simulator"]["resumedAnswers"] = resumed
        await session.attach(socket, _dumps({"data": [item]}))
        return session

    @staticmethod
    def _auth_item(session: Session) -> dict[str, Any]:
        return {"taskType": "authentication", "connectionSessionUUID": session.uuid,
                "simulator": {"name": SIMULATOR}}

    async def _refuse(self, socket: _Socket, code: str, message: str) -> None:
        await socket.text(_dumps({"errors": [error_object(code, message,
                                                          task_type="authentication")]}))
        await socket.close(CLOSE_POLICY, code)

    def _expire(self) -> None:
        """Forget detached sessions older than session_s (and the oldest beyond a cap)."""
        now = self.clock()
        for sid in [s.uuid for s in self.sessions.values()
                    if s.detached_at is not None and now - s.detached_at > self.session_s]:
            del self.sessions[sid]
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)

    # ---- one message of tasks --------------------------------------------------------------
    async def _message(self, session: Session, socket: _Socket, tasks: list[Any],
                       base_url: str) -> None:
        cap = self.faults.capacity
        if cap is not None and self.ledger.in_flight >= cap:
            self.injector.count("capacity")
            return await self._refuse_tasks(session, tasks, "rateLimitExceeded",
                                            f"more than {cap} concurrent requests")
        self.ledger.enter()
        try:
            fault, latency = self.injector.next_request()
            if fault in BEFORE_BILLING:
                status = int(fault.removeprefix("http_"))
                if status in (502, 504):
                    return await socket.close(CLOSE_BAD_GATEWAY, f"injected HTTP {status} "
                                              "at the gateway")
                return await self._refuse_tasks(session, tasks, _STATUS_ERRORS[status],
                                                f"injected HTTP {status} from the {SIMULATOR}")
            if latency > 0:
                await self.sleep(latency)
            held: list[str] = []

            async def one(task: Any) -> None:
                _, doc = (await self.sim.run_tasks([task], base_url)).envelope()
                frame = _dumps(doc)
                if fault in ("drop", "hang"):
                    held.append(frame)
                elif fault == "non_json":
                    await session.deliver(GATEWAY_PAGE.format("upstream error"))
                elif fault == "truncated_body":
                    await session.deliver(frame[: len(frame) // 2])
                else:
                    await session.deliver(frame)

            async with anyio.create_task_group() as tg:
                for task in tasks:
                    tg.start_soon(one, task)
            if fault == "drop":
                await socket.close(CLOSE_ERROR, "injected: connection dropped after billing")
            elif fault == "hang":
                await self._hold(socket)
            for frame in held:
                await session.deliver(frame)
        finally:
            self.ledger.leave()

    async def _refuse_tasks(self, session: Session, tasks: list[Any], code: str, message: str
                            ) -> None:
        errors = []
        for task in tasks:
            task = task if isinstance(task, dict) else {}
            uuid, kind = task.get("taskUUID"), task.get("taskType")
            errors.append(error_object(code, message,
                                       task_type=kind if isinstance(kind, str) else None,
                                       task_uuid=uuid if isinstance(uuid, str) else None))
        await session.deliver(_dumps({"errors": errors}))

    async def _hold(self, socket: _Socket) -> None:
        """Wait hang_s, or until the connection goes away."""
        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                await socket.closed.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self.sleep(self.faults.hang_s)
            tg.cancel_scope.cancel()


def _parse(event: MutableMapping[str, Any]) -> object:
    """A received message as JSON (a lone task object counts as a one-task array); None if
    it is not JSON."""
    raw = event.get("text")
    if raw is None:
        raw = (event.get("bytes") or b"").decode("utf-8", errors="replace")
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return [doc] if isinstance(doc, dict) else doc
