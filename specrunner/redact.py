"""One redaction for every text specrunner writes from somewhere else: the record's error
messages, reports and log lines.

A server may quote the request back in an error message (the Authorization header included);
the key must still never reach a file, a report or a terminal. `Redactor([key])` replaces
the key itself, any `Bearer <token>`, and the value of anything named like a credential
(`apiKey=...`, `"token": "..."`, `Authorization: ...`) with `[redacted]`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MARK = "[redacted]"
_VALUE = r"(?!\[redacted\])[^\s\"',;&)\]}]+"  # a credential's characters, not our mark
_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+" + _VALUE)
_NAMED = re.compile(
    r"(?i)\b(api[_-]?key|x-api-key|access[_-]?token|token|secret|password|authorization)"
    r"(\"?'?\s*[:=]\s*\"?'?)(?!(?:bearer|basic)\s)" + _VALUE)


class Redactor:
    """Replaces secrets in text (see the module docstring); `redact(text)`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret containing another is replaced whole; very short
        # values would blank ordinary words, and no real key is that short.
        self.secrets = sorted({s for s in secrets if s and len(s) >= 8}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MARK)
        text = _SCHEME.sub(lambda m: f"{m.group(1)} {MARK}", text)
        return _NAMED.sub(lambda m: f"{m.group(1)}{m.group(2)}{MARK}", text)
