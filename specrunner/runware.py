"""Runware's wire format: task UUIDs, response envelopes, and error classification.

Shared by the client (which sends) and the local server (which answers), so both speak
exactly one protocol. Pure: no I/O. See shared/reference/RUNWARE.md for the contract.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any, TypeGuard

API_URL = "https://api.runware.ai/v1"

UUID4_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}$"
)


# Request fields specrunner fills in itself (README "Fields the runner adds"): a spec may
# not set them.
RUNNER_FIELDS = frozenset({"taskType", "taskUUID", "model", "positivePrompt", "inputs"})
# ... and the ones it sets from other settings, with what to write instead.
RUNNER_SET = {
    "deliveryMethod": "set `execution.delivery` instead",
    "includeCost": "specrunner always asks for the cost",
}
RUNNER_OWNED = RUNNER_FIELDS | frozenset(RUNNER_SET)
# Fields outside a task's identity: how the answer travels, not what is generated (switching
# delivery between a crash and a resume must not mint new UUIDs and pay again).
NOT_IN_KEY = frozenset({"taskUUID", "deliveryMethod", "includeCost"})


def is_uuid4(value: object) -> TypeGuard[str]:
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
    RUNNER = "runner"  # not the API's: specrunner's own reason (RunnerCode)


class RunnerCode(str, enum.Enum):
    """The error codes specrunner itself records, beside the API's (category `runner`)."""

    ATTEMPTS_EXHAUSTED = "attemptsExhausted"  # the task's sends in this run are used up
    RETRY_BUDGET_EXHAUSTED = "retryBudgetExhausted"  # the run-wide retry budget is used up
    DEADLINE = "deadline"  # execution.task_deadline_s passed
    INPUT_CHANGED = "inputChanged"  # a local input's bytes changed since planning
    UPLOAD_FAILED = "uploadFailed"  # an input upload kept failing
    NO_OUTPUT = "noOutput"  # a result item carries no image
    OUTPUT_WRITE_FAILED = "outputWriteFailed"  # an output file could not be written
    NOT_AN_IMAGE = "notAnImage"  # downloaded bytes are not a complete image
    TOO_LARGE = "tooLarge"  # an output over execution.max_download_bytes
    BAD_BASE64 = "badBase64"  # an inline output that is not base64
    DOWNLOAD_FAILED = "downloadFailed"  # the image GET failed (transport)
    DOWNLOAD_TIMEOUT = "downloadTimeout"
    REQUEST_TIMEOUT = "requestTimeout"  # no answer within execution.request_timeout_s
    CONNECT_ERROR = "connectError"  # the connection could not be made (nothing was sent)
    CONNECT_TIMEOUT = "connectTimeout"
    CONNECTION_LOST = "connectionLost"  # the connection failed after the request was sent
    UNREADABLE_BODY = "unreadableBody"  # an answer that is not a Runware envelope


_CODES: dict[str, Category] = {c.value: Category.RUNNER for c in RunnerCode}
for _cat, _codes in {
    Category.AUTH: "invalidApiKey missingApiKey unauthorized forbidden accountSuspended",
    Category.QUOTA: "insufficientCredits paymentRequired quotaExceeded",
    Category.RATE_LIMIT: "rateLimitExceeded inferenceRateLimitExceeded providerRateLimitExceeded",
    Category.SAFETY: "contentPolicyViolation nsfwContentDetected promptBlocked imageBlocked",
    Category.PROVIDER: "providerError providerUnavailable inferenceError taskFailed "
                       "noAvailableServer",
    Category.TIMEOUT: "timeoutProvider providerTimeout timeout",
    Category.NOT_FOUND: "modelNotFound taskNotFound taskExpired taskFailedOrNotFound",
    Category.SERVER: "internalServerError serviceUnavailable unknownError",
    Category.CONFLICT: "conflictTaskUUID",
}.items():
    for _c in _codes.split():
        _CODES[_c] = _cat
# the runner's name for an HTTP status without an envelope
_HTTP_CODE = re.compile(r"^http[0-9]{3}$")


def classify(code: str | None, http_status: int | None = None) -> Category:
    """Classify an error by its code, falling back to the HTTP status for unknown codes."""
    if code in _CODES:
        return _CODES[code]
    if code and _HTTP_CODE.match(code):
        return Category.RUNNER
    if code and re.match(r"^(invalid|missing|unsupported|unknown[A-Z]|valueToo)", code):
        return Category.VALIDATION
    if code and re.search(r"(?i)internal|server|unexpected", code):
        return Category.SERVER  # (internalError and the like: it may have run; never final)
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


class Action(str, enum.Enum):
    """What the runner does with a task after an error of a category (docs/DESIGN.md has the
    rule table with the reasons)."""

    FINAL = "final"  # the task failed in this run; the error is documented as not charged
    FETCH = "fetch"  # the server already has this UUID: poll it, never send it again
    STOP = "stop"  # auth or quota: the whole run stops
    RETRY = "retry"  # transient: send the SAME UUID again after a backoff
    NEW_UUID = "new_uuid"  # the provider failed this UUID (not charged): a fresh one


ACTIONS: dict[Category, Action] = {
    Category.VALIDATION: Action.FINAL, Category.SAFETY: Action.FINAL,
    Category.NOT_FOUND: Action.FINAL, Category.RUNNER: Action.FINAL,
    Category.CONFLICT: Action.FETCH,
    Category.AUTH: Action.STOP, Category.QUOTA: Action.STOP,
    Category.RATE_LIMIT: Action.RETRY, Category.SERVER: Action.RETRY,
    Category.UNKNOWN: Action.RETRY,
    Category.PROVIDER: Action.NEW_UUID, Category.TIMEOUT: Action.NEW_UUID,
}
# Errors that may come after the task ran and was billed: a task that ends on one is left in
# doubt (the next run asks the server about its UUID), never failed (which would mint a new
# UUID without asking).
MAY_FOLLOW_BILLING = frozenset({Category.SERVER, Category.UNKNOWN})
# The runner's own codes for a task that never left (nothing can have been billed).
_NOT_SENT = frozenset({RunnerCode.INPUT_CHANGED.value, RunnerCode.UPLOAD_FAILED.value})


def documented_not_charged(code: str | None) -> bool:
    """Whether a task that failed with `code` is known not to have been charged, so it may
    be tried again under a fresh UUID without first asking the server about the old one."""
    if code is None:
        return False
    cat = classify(code)
    if cat is Category.RUNNER:
        return code in _NOT_SENT
    return cat not in MAY_FOLLOW_BILLING and ACTIONS[cat] is not Action.FETCH


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
            error = item.get("error")
            nested = error if isinstance(error, dict) else {}
            env.errors.append({**nested, "taskUUID": item.get("taskUUID"),
                               "taskType": item.get("taskType")})
        else:
            kept.append(item)
    env.data = kept
    return env


def errors_for(env: Envelope, task_uuid: str) -> list[dict[str, Any]]:
    """Errors addressed to `task_uuid` (or to nobody in particular: a one-task request)."""
    return [e for e in env.errors if e.get("taskUUID") in (task_uuid, None, "")]


def items_for(env: Envelope, task_uuid: str) -> list[dict[str, Any]]:
    """Data items addressed to `task_uuid`."""
    return [d for d in env.data if d.get("taskUUID") == task_uuid]


def category(err: dict[str, Any], status: int | None) -> Category:
    """The category of one error object of an envelope answered with HTTP `status`."""
    code = err.get("code")
    return classify(code if isinstance(code, str) else None, status)


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


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1): where the key may go
    over plain http, and where the local servers may listen."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
