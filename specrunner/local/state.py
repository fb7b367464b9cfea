"""The local server's memory: the billing ledger (the test oracle), tasks, and stored images.

All mutation happens on the event loop between awaits, so check-then-charge is atomic.
With a state directory (journal.py) the ledger's charges, duplicates and failures, the
accepted tasks and the uploads are replayed at start-up; the traffic counters (requests by
type, HTTP requests, WebSocket connections and messages, peak concurrency) are per process.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from PIL import Image


class DoubleCharge(AssertionError):
    """The server tried to charge a taskUUID twice: a bug in the server, never a client fault."""


@dataclass(frozen=True)
class Stats:
    """A snapshot of the accounting; `to_json()` is what GET /admin/stats answers."""

    charges: Mapping[str, Decimal]  # taskUUID -> USD charged (once)
    images_billed: int
    total_billed_usd: Decimal
    duplicate_attempts: Mapping[str, int]  # taskUUID -> re-sends refused with conflictTaskUUID
    requests_by_type: Mapping[str, int]  # taskType -> tasks received (plus "http" totals)
    http_requests: int
    in_flight: int
    peak_concurrency: int
    faults_injected: Mapping[str, int]
    tasks_failed: Mapping[str, str]  # taskUUID -> error code, for accepted tasks that failed
    websocket_connections: int = 0  # WebSocket connections accepted (authenticated or not)
    websocket_messages: int = 0  # task arrays received over WebSocket (authentication included)
    sessions_resumed: int = 0  # authentications that resumed a connectionSessionUUID

    @property
    def duplicate_attempts_total(self) -> int:
        return sum(self.duplicate_attempts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "simulator": "specrunner local simulator",
            "charges": {k: float(v) for k, v in self.charges.items()},
            "tasksCharged": len(self.charges),
            "imagesBilled": self.images_billed,
            "totalBilledUSD": float(self.total_billed_usd),
            "duplicateAttempts": dict(self.duplicate_attempts),
            "duplicateAttemptsTotal": self.duplicate_attempts_total,
            "requestsByType": dict(self.requests_by_type),
            "httpRequests": self.http_requests,
            "inFlight": self.in_flight,
            "peakConcurrency": self.peak_concurrency,
            "faultsInjected": dict(self.faults_injected),
            "tasksFailed": dict(self.tasks_failed),
            "websocketConnections": self.websocket_connections,
            "websocketMessages": self.websocket_messages,
            "sessionsResumed": self.sessions_resumed,
        }


class Ledger:
    """Charges per taskUUID (at most one each), duplicate attempts, request counters."""

    def __init__(self) -> None:
        self.charges: dict[str, Decimal] = {}
        self.images: dict[str, int] = {}
        self.duplicates: dict[str, int] = {}
        self.by_type: dict[str, int] = {}
        self.failed: dict[str, str] = {}
        self.http_requests = 0
        self.ws_connections = 0
        self.ws_messages = 0
        self.sessions_resumed = 0
        self.in_flight = 0
        self.peak = 0

    def charge(self, task_uuid: str, images: int, price: Decimal) -> Decimal:
        """Bill `images` x `price` to `task_uuid`; DoubleCharge if it was billed before."""
        if task_uuid in self.charges:
            raise DoubleCharge(task_uuid)
        amount = price * images
        self.charges[task_uuid] = amount
        self.images[task_uuid] = images
        return amount

    def duplicate(self, task_uuid: str) -> None:
        self.duplicates[task_uuid] = self.duplicates.get(task_uuid, 0) + 1

    def count(self, kind: str) -> None:
        self.by_type[kind] = self.by_type.get(kind, 0) + 1

    def enter(self) -> None:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    @property
    def total(self) -> Decimal:
        return sum(self.charges.values(), Decimal(0))

    def snapshot(self, faults: Mapping[str, int]) -> Stats:
        return Stats(
            charges=dict(self.charges),
            images_billed=sum(self.images.values()),
            total_billed_usd=self.total,
            duplicate_attempts=dict(self.duplicates),
            requests_by_type=dict(self.by_type),
            http_requests=self.http_requests,
            in_flight=self.in_flight,
            peak_concurrency=self.peak,
            faults_injected=dict(faults),
            tasks_failed=dict(self.failed),
            websocket_connections=self.ws_connections,
            websocket_messages=self.ws_messages,
            sessions_resumed=self.sessions_resumed,
        )


@dataclass
class Result:
    """One result slot of a task: an image (once rendered) or an error."""

    index: int
    image_uuid: str
    seed: int
    image_bytes: bytes | None = None
    error: dict[str, Any] | None = None


@dataclass
class TaskRecord:
    """An accepted task: its request, when it is ready, and its results."""

    task_uuid: str
    task_type: str
    request: dict[str, Any]
    ready_at: float
    results: list[Result] = field(default_factory=list)
    error: dict[str, Any] | None = None  # a whole-task failure (provider timeout)
    placeholder: bool = False
    inputs: tuple[Image.Image, Image.Image] | None = None  # kept until rendered
    # Restored from a state directory: loads the inputs from their stored copies on demand.
    load_inputs: Callable[[], tuple[Image.Image, Image.Image]] | None = None
    rendered: bool = False
    price: Decimal | None = None  # billed and reported per image (None: not reported)

    @property
    def done(self) -> bool:
        return self.rendered or self.error is not None


@dataclass
class StoredImage:
    data: bytes
    content_type: str
    expires_at: float


class ImageStore:
    """Output images served by GET /image/<uuid>.<ext>, with expiry and a byte budget."""

    def __init__(self, clock: Callable[[], float], max_bytes: int) -> None:
        self._clock = clock
        self._max_bytes = max_bytes
        self._items: OrderedDict[str, StoredImage] = OrderedDict()
        self._bytes = 0

    def put(self, image_uuid: str, data: bytes, content_type: str, ttl_s: float) -> None:
        old = self._items.pop(image_uuid, None)
        if old is not None:
            self._bytes -= len(old.data)
        self._items[image_uuid] = StoredImage(data, content_type, self._clock() + ttl_s)
        self._bytes += len(data)
        while self._bytes > self._max_bytes and len(self._items) > 1:
            _, dropped = self._items.popitem(last=False)  # oldest first
            self._bytes -= len(dropped.data)

    def get(self, image_uuid: str) -> StoredImage | None:
        """The image, or None if unknown, evicted or past its ttl."""
        item = self._items.get(image_uuid)
        if item is None or self._clock() >= item.expires_at:
            return None
        return item
