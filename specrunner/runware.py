"""Runware's wire format: task UUIDs, response envelopes, and error classification.

Shared by the client (which sends) and the local server (which answers), so both speak
exactly one protocol. Pure: no I/O. See shared/reference/RUNWARE.md for the contract.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

API_URL = "https://api.runware.ai/v1"

UUID4_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)


def is_uuid4(value: object) -> bool:
    """True if `value` is a string in UUID version 4 form."""
    return isinstance(value, str) and bool(UUID4_RE.match(value))


def task_uuid(task_key: str, generation: int = 0) -> str:
    """Derive the taskUUID sent to Runware from a task's content key.

    Deterministic, so a re-send after a crash carries the same UUID and the server answers
    `conflictTaskUUID` instead of charging again. `generation` > 0 gives the fresh UUIDs a
    provider-side failure requires (each recorded before it is sent).
    """
    digest = bytearray(
        hashlib.sha256(f"specrunner.taskUUID.v1\0{task_key}\0{generation}".encode()).digest()[:16]
    )
    digest[6] = (digest[6] & 0x0F) | 0x40  # version 4
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[0:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


class Category(str, enum.Enum):
    """What an API error means for the task and the run (RUNWARE.md section 6)."""

    VALIDATION = "validation"  # final for the task
    CONFLICT = "conflict"  # conflictTaskUUID: already accepted, fetch it
    AUTH = "auth"  # stop the run
    QUOTA = "quota"  # stop the run
    RATE_LIMIT = "rateLimit"  # retry same UUID, back off
    SAFETY = "safety"  # final for the result
    PROVIDER = "provider"  # retry with a new UUID
    TIMEOUT = "timeout"  # provider timeout: retry with a new UUID
    NOT_FOUND = "notFound"  # final
    SERVER = "serverError"  # retry same UUID
    UNKNOWN = "unknown"


_CODES: dict[str, Category] = {}
for _cat, _codes in {
    Category.AUTH: "invalidApiKey missingApiKey unauthorized forbidden accountSuspended",
    Category.QUOTA: "insufficientCredits paymentRequired quotaExceeded",
    Category.RATE_LIMIT: "rateLimitExceeded inferenceRateLimitExceeded providerRateLimitExceeded",
    Category.SAFETY: "contentPolicyViolation nsfwContentDetected promptBlocked imageBlocked",
    Category.PROVIDER: "providerError providerUnavailable inferenceError taskFailed noAvailableServer",
    Category.TIMEOUT: "timeoutProvider providerTimeout timeout",
    Category.NOT_FOUND: "modelNotFound taskNotFound taskExpired taskFailedOrNotFound",
    Category.SERVER: "internalServerError serviceUnavailable unknownError",
    Category.CONFLICT: "conflictTaskUUID",
}.items():
    for _c in _codes.split():
        _CODES[_c] = _cat


def classify(code: str | None, http_status: int | None = None) -> Category:
    """Classify an error by its code, falling back to the HTTP status for unknown codes."""
    if code in _CODES:
        return _CODES[code]
    if code and re.match(r"^(invalid|missing|unsupported|unknown[A-Z]|valueToo)", code):
        return Category.VALIDATION
    if http_status in (401,):
        return Category.AUTH
    if http_status in (402,):
        return Category.QUOTA
    if http_status in (408, 429):
        return Category.RATE_LIMIT
    if http_status is not None and http_status >= 500:
        return Category.SERVER
    if http_status == 404:
        return Category.NOT_FOUND
    if http_status is not None and 400 <= http_status < 500:
        return Category.VALIDATION
    return Category.UNKNOWN


RETRY_SAME_UUID = frozenset({Category.RATE_LIMIT, Category.SERVER, Category.UNKNOWN})
RETRY_NEW_UUID = frozenset({Category.PROVIDER, Category.TIMEOUT})
STOP_RUN = frozenset({Category.AUTH, Category.QUOTA})


class UnreadableBody(Exception):
    """The response body is not a Runware envelope (not JSON, truncated...): transient."""


@dataclass
class Envelope:
    """A parsed response: `data` items and `errors`, both always lists of dicts."""

    data: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


def parse_envelope(body: bytes | str) -> Envelope:
    """Parse a Runware response leniently (RUNWARE.md section 2); UnreadableBody if not JSON."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableBody(f"response is not JSON: {exc.__class__.__name__}") from None
    env = Envelope()
    if isinstance(doc, list):
        env.data = [x for x in doc if isinstance(x, dict)]
        return env
    if not isinstance(doc, dict):
        raise UnreadableBody("response is neither a JSON object nor a list")
    data = doc.get("data")
    if isinstance(data, dict):
        data = [data]
    if isinstance(data, list):
        env.data = [x for x in data if isinstance(x, dict)]
    errors = doc.get("errors")
    if isinstance(errors, dict):
        errors = [errors]
    if isinstance(errors, list):
        env.errors = [x for x in errors if isinstance(x, dict)]
    single = doc.get("error")
    if isinstance(single, dict):
        env.errors.append(single)
    if data is None and errors is None and single is None:
        raise UnreadableBody("response has neither 'data' nor 'errors'")
    # A data item that reports its own failure is an error for that item.
    kept = []
    for item in env.data:
        if item.get("status") == "error":
            nested = item.get("error") if isinstance(item.get("error"), dict) else {}
            env.errors.append({**nested, "taskUUID": item.get("taskUUID"),
                               "taskType": item.get("taskType")})
        else:
            kept.append(item)
    env.data = kept
    return env


def error_object(
    code: str,
    message: str,
    *,
    parameter: str | None = None,
    task_type: str | None = None,
    task_uuid: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One entry of an `errors` array, in Runware's shape."""
    obj: dict[str, Any] = {"code": code, "message": message}
    if parameter is not None:
        obj["parameter"] = parameter
    if task_type is not None:
        obj["taskType"] = task_type
    if task_uuid is not None:
        obj["taskUUID"] = task_uuid
    obj["documentation"] = "https://runware.ai/docs/platform/errors"
    obj.update(extra)
    return obj
