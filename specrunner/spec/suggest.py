"""Did-you-mean hints: the one place that decides what a misspelled name was meant to be.

Used for field and key names, input and prompt names, enum values, and local files (a seed,
a mask, a style reference or the spec itself) that do not exist.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path

MAX_LISTED = 10_000  # entries of a folder looked at for a missing file's did-you-mean


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The choice `word` is most likely a misspelling of (case-insensitive), or None."""
    pool = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(pool), n=1, cutoff=0.6)
    return pool[close[0]] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A 'did you mean `x`?' hint for a misspelled name, or None."""
    close = closest(word, choices)
    return f"did you mean `{close}`?" if close else None


def closest_file(name: str, names: Iterable[str], cutoff: float = 0.7) -> str | None:
    """The file name `name` was most likely meant to be. Names are compared by their stems
    (the extension would make `gone.png` look like `notes.png`), then whole, ignoring case;
    an exact stem with another extension (`diner.png` for `diner.jpg`) counts as close."""
    stem = Path(name).stem.lower()
    best: tuple[float, float, str] | None = None
    for other in names:
        s = difflib.SequenceMatcher(None, stem, Path(other).stem.lower()).ratio()
        if s < cutoff:
            continue
        score = (s, difflib.SequenceMatcher(None, name.lower(), other.lower()).ratio(), other)
        if best is None or score[:2] > best[:2]:
            best = score
    return best[2] if best else None


def missing_file_hint(written: str, full: Path, base: Path | None = None) -> str | None:
    """For a path that does not exist (`written` as the user wrote it, `full` resolved): the
    closest name in its folder (`cabin_mask.png` -> `cabin-mask.png`), else, for a relative
    path, the folder it is relative to (`base`, when given)."""
    names: list[str] = []
    try:
        for i, entry in enumerate(full.parent.iterdir()):
            if i >= MAX_LISTED:
                break
            names.append(entry.name)
    except OSError:
        pass
    close = closest_file(full.name, names)
    if close is not None:
        return f"did you mean `{written[:len(written) - len(Path(written).name)]}{close}`?"
    if base is None or Path(written).is_absolute():
        return None
    return f"paths are relative to the spec's folder, {base}"
