"""Output paths of tasks: is a rendered output name safe and portable? Pure.

A stem is relative and '/'-separated. It must stay inside the output folder (no absolute
path, no `..`, `.` or empty segment, no backslash) and be portable to Windows and macOS (no
reserved device names such as CON or LPT1, no `<>:"|?*` or control characters, no segment
ending in '.' or ' ', segments at most 240 bytes). `fold` is how case-insensitive file
systems compare names, so two tasks cannot write the same file there either.
"""

from __future__ import annotations

import re
import unicodedata

_WIN_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                 *(f"LPT{i}" for i in range(1, 10))}
_WIN_BAD = re.compile(r'[<>:"|?*\x00-\x1f]')
# A segment the full walk accepts, by construction: not a reserved device name (alone or
# before a '.'), ASCII letters, digits and `._ -`, not ending in '.' or ' ' (so never "",
# "." or ".."), at most 240 bytes.
_NOT_RESERVED = r"(?!(?i:CON|PRN|AUX|NUL|COM[1-9]|LPT[1-9])(?:\.|/|$))"
_SEGMENT = _NOT_RESERVED + r"[A-Za-z0-9._ -]{0,239}[A-Za-z0-9_-]"
_SAFE_STEM = re.compile(f"{_SEGMENT}(?:/{_SEGMENT})*")


def path_problem(stem: str) -> str | None:
    """Why an output stem (relative, '/'-separated) is unsafe or unportable, or None."""
    if _SAFE_STEM.fullmatch(stem):
        return None  # the common case, decided without the per-segment walk below
    return _path_problem(stem)


def _path_problem(stem: str) -> str | None:
    if not stem:
        return "is empty"
    if "\0" in stem:
        return "contains a NUL character"
    if "\\" in stem:
        return "contains a backslash (a folder separator on Windows); use /"
    if stem.startswith("/") or re.match(r"^[A-Za-z]:", stem):
        return "is an absolute path"
    for seg in stem.split("/"):
        if seg in ("", ".", ".."):
            return "escapes the output folder (..)" if seg == ".." else \
                f"has an empty or '.' folder name ({stem!r})"
        if seg.split(".")[0].upper() in _WIN_RESERVED:
            return f"uses the reserved Windows device name {seg.split('.')[0]!r}"
        if _WIN_BAD.search(seg) or seg[-1] in ". ":
            return f"has a character that is not portable in file names in {seg!r}"
        if len(seg.encode()) > 240:
            return "has a file or folder name longer than 240 bytes"
    return None


def fold(path: str) -> str:
    """A path as case-insensitive file systems (macOS, Windows) compare it."""
    return unicodedata.normalize("NFC", path).casefold()
