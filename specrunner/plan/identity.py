"""Task identity: readable variant ids and the content-addressed task key. Pure.

A variant id is a combination's values in key order, slugified (`base_id`). A task key is the
sha256 of canonical JSON (sorted keys, no spaces, UTF-8) of `{"maskPolarity", "repeat",
"request"}`, the request without `taskUUID`, `deliveryMethod` and `includeCost` (how the
answer travels is not what is generated; switching delivery between a crash and a resume must
not mint new UUIDs and pay again). Local files appear in the request as `local:<sha256>`, so
their bytes are part of the key.

`task_key` is the definition. The planner takes a fast path with the same bytes:
`prompt_frame` serialises a request once with a placeholder where the prompt goes, and
`framed_key` hashes frame + prompt + frame for each task (tests/test_plan.py checks that both
give the same key).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from specrunner.runware import NOT_IN_KEY
from specrunner.spec.types import Scalar

_SLUG = re.compile(r"[^A-Za-z0-9._-]")
_CANON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_SENTINEL = "\ue000specrunner-prompt\ue000"


def text_of(value: Scalar) -> str:
    """How a combination value reads inside a template or an id (true/false, 12, 1.5)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


def slug(value: Scalar) -> str:
    """A value as an id segment: characters other than [A-Za-z0-9._-] become '_'."""
    return slug_text(value if type(value) is str else text_of(value))


@lru_cache(maxsize=1 << 16)
def slug_text(text: str) -> str:
    """`slug` of a text value. Memoised on the text, which is all a slug depends on: a plan
    slugs the same few axis values for every combination."""
    return _SLUG.sub("_", text)


def base_id(values: Mapping[str, Scalar], index: int) -> str:
    """The default variant id of a combination: its values in key order, slugified."""
    return "-".join(map(slug, values.values())) or f"variant{index + 1}"


def canonical_json(obj: Any) -> bytes:
    """JSON with sorted keys and no spaces, UTF-8: the bytes task keys hash."""
    return _CANON.encode(obj).encode()


def task_key(request: Mapping[str, Any], polarity: str, repeat: int) -> str:
    """sha256 of the request minus taskUUID, the mask polarity and the 0-based repeat index.

    The fields that only say how the answer travels (`deliveryMethod`, `includeCost`) are left
    out: switching delivery between a crash and a resume must not mint new UUIDs and pay again.
    """
    return key_of({k: v for k, v in request.items() if k not in NOT_IN_KEY}, polarity, repeat)


def key_of(body: Mapping[str, Any], polarity: str, repeat: int) -> str:
    """The task key of a request body that already leaves out the fields outside the key."""
    return hashlib.sha256(canonical_json(
        {"request": body, "maskPolarity": polarity, "repeat": repeat})).hexdigest()


def prompt_frame(body: Mapping[str, Any]) -> tuple[bytes, bytes] | None:
    """canonical_json(body + positivePrompt) split where the prompt goes; None if ambiguous
    (the placeholder occurs in a field value: use `key_of`)."""
    parts = canonical_json({**body, "positivePrompt": _SENTINEL}).split(
        canonical_json(_SENTINEL))
    return (parts[0], parts[1]) if len(parts) == 2 else None


def framed_key(frame: tuple[bytes, bytes], prompt_json: bytes, polarity_json: bytes,
               repeat: int) -> str:
    """key_of(body + positivePrompt, ...) from a `prompt_frame` of body and the canonical JSON
    of the prompt and of the polarity, without serialising the request again."""
    return hashlib.sha256(key_head(polarity_json, repeat)
                          + key_tail(frame, prompt_json)).hexdigest()


def key_head(polarity_json: bytes, repeat: int) -> bytes:
    """The bytes a task key hashes before its request: polarity and repeat index."""
    return b'{"maskPolarity":' + polarity_json + b',"repeat":' + str(repeat).encode() \
        + b',"request":'


def key_tail(frame: tuple[bytes, bytes], prompt_json: bytes) -> bytes:
    """The bytes a task key hashes from its request on: the same for every repeat of a
    combination, so the planner joins them once (`framed_key` = head + tail)."""
    return frame[0] + prompt_json + frame[1] + b"}"
