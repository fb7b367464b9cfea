"""Review decisions: `<stem>.review.yaml` beside the spec, and what they say about a run.

The file (hand-editable, kept in git, one entry per result image, sorted by variant then
index so diffs stay small):

    version: 1
    images:
      bakery-artdeco-DESIGN:
        - {index: 0, sha256: 3f2a..., verdict: approved, note: "keep"}

An entry holds for the image whose bytes hash to its `sha256`. When the file at that image's
path no longer does (the task was regenerated, the file replaced), the entry is *stale*: shown
as such, never applied to the new image, kept in the file until a new decision replaces it.

Writes are read-modify-write under a lock (a thread lock plus `flock` on the spec's folder,
so two review servers on one file serialise too), with the change given as one entry and the
entry the writer believes is there (`expect`): a change made meanwhile by another tab or
process is never overwritten silently (`Conflict`). The file is replaced atomically (temp
file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from specrunner.errors import SpecError, SpecrunnerError
from specrunner.spec.images import sha256_file

VERSION = 1
VERDICTS = ("approved", "rejected")
STATES = ("approved", "rejected", "pending", "stale")
MAX_NOTE = 2000
SUFFIX = ".review.yaml"
_SHA = re.compile(r"[0-9a-f]{64}\Z")

Key = tuple[str, int]  # (variant id, image index)


class ReviewFileError(SpecrunnerError):
    """The review file cannot be read (syntax, shape) or written; exit 2."""


class Conflict(SpecrunnerError):
    """The entry changed since the writer looked (`current`), or the image did."""

    def __init__(self, message: str, current: Decision | None) -> None:
        super().__init__(message)
        self.current = current


@dataclass(frozen=True)
class Decision:
    """One reviewer decision about the image `index` of `variant` with bytes `sha256`."""

    variant: str
    index: int
    sha256: str
    verdict: str  # approved | rejected
    note: str | None = None

    @property
    def key(self) -> Key:
        """(variant, index): what the file holds one entry for."""
        return (self.variant, self.index)

    def to_json(self) -> dict[str, Any]:
        """The entry as the page and `report --format json` see it."""
        return {"sha256": self.sha256, "verdict": self.verdict, "note": self.note}


def check_decision(d: Decision) -> None:
    """ValueError with a short reason if `d` cannot be written to the file."""
    if not d.variant or not isinstance(d.variant, str):
        raise ValueError("variant must be a non-empty string")
    if isinstance(d.index, bool) or not isinstance(d.index, int) or d.index < 0:
        raise ValueError("index must be an integer >= 0")
    if not isinstance(d.sha256, str) or not _SHA.match(d.sha256):
        raise ValueError("sha256 must be 64 lowercase hex digits")
    if d.verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
    for name, text in (("variant", d.variant), ("note", d.note)):
        if text is None:
            continue
        if not isinstance(text, str):
            raise ValueError(f"{name} must be text")
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            raise ValueError(f"{name} holds an unpaired surrogate")
    if d.note is not None and len(d.note) > MAX_NOTE:
        raise ValueError(f"note is longer than {MAX_NOTE} characters")


def review_path(spec_path: Path) -> Path:
    """The review file of a spec: `<stem>.review.yaml` in the spec's folder."""
    return spec_path.with_name(spec_path.stem + SUFFIX)


def shown(path: Path) -> str:
    """A path as a person reads it: relative to the current folder when inside it."""
    rel = os.path.relpath(path)
    return str(path) if rel.startswith("..") else rel


def recorded_spec(run_dir: Path, recorded: str | None) -> Path | None:
    """The spec file a run record names (relative paths are relative to the run folder)."""
    if not recorded:
        return None
    path = Path(recorded)
    # resolve(): "run/../spec.yaml" becomes the spec's own path (symlinks followed first)
    return path if path.is_absolute() else (Path(run_dir) / path).resolve()


def find_spec(target: str, run_dir: Path, plan: Any, recorded: str | None) -> Path | None:
    """The spec whose review file belongs to a run: a SPEC target, else the spec the record
    names (as `locate` planned it, else the recorded path, relative to the run folder)."""
    if Path(target).is_file():
        return Path(target)
    if plan is not None:
        return Path(plan.spec.path)
    return recorded_spec(run_dir, recorded)


# -- reading -------------------------------------------------------------------------------
def load(path: Path) -> dict[Key, Decision]:
    """The decisions in `path` ({} when it does not exist); ReviewFileError if unreadable."""
    from specrunner.spec import yamlload

    path = Path(path)
    if not path.exists():
        return {}
    try:
        loaded = yamlload.load(path)
    except SpecError as exc:
        raise ReviewFileError(_one_line(exc)) from None
    errors = [n for n in loaded.notes if n.severity == "error"]
    if errors:
        raise ReviewFileError(_one_line(SpecError(errors)))
    return _parse(loaded.data, loaded.locs, str(path))


def _one_line(exc: SpecError) -> str:
    d = exc.diagnostics[0]
    where = f"{d.loc}: " if d.loc else ""
    return f"{where}{d.message} [{d.path}]" + (f" ({d.hint})" if d.hint else "")


def _parse(data: Any, locs: Mapping[str, Any], file: str) -> dict[Key, Decision]:
    def fail(path: str, message: str) -> ReviewFileError:
        loc = locs.get(path)
        return ReviewFileError(f"{loc or file}: {message} [{path}]")

    if not isinstance(data, dict):
        raise fail("$", "a review file is a mapping with `version` and `images`")
    unknown = sorted(set(data) - {"version", "images"})
    if unknown:
        raise fail(f"$.{unknown[0]}", f"unknown key `{unknown[0]}` (expected version, images)")
    if data.get("version") != VERSION or isinstance(data.get("version"), bool):
        raise fail("$.version", f"`version` must be {VERSION}")
    images = data.get("images") or {}
    if not isinstance(images, dict):
        raise fail("$.images", "`images` maps variant ids to lists of entries")
    out: dict[Key, Decision] = {}
    for variant, entries in images.items():
        vpath = f"$.images.{variant}"
        if not isinstance(entries, list):
            raise fail(vpath, "expected a list of {index, sha256, verdict, note} entries")
        for i, entry in enumerate(entries):
            epath = f"{vpath}[{i}]"
            if not isinstance(entry, dict):
                raise fail(epath, "expected {index, sha256, verdict, note}")
            extra = sorted(set(entry) - {"index", "sha256", "verdict", "note"})
            if extra:
                raise fail(f"{epath}.{extra[0]}", f"unknown key `{extra[0]}`")
            missing = [k for k in ("index", "sha256", "verdict") if k not in entry]
            if missing:
                raise fail(epath, f"missing `{missing[0]}`")
            note = entry.get("note")
            d = Decision(variant, entry["index"], entry["sha256"], entry["verdict"],
                         None if note is None else note)
            try:
                check_decision(d)
            except ValueError as exc:
                field_ = str(exc).split()[0]
                raise fail(f"{epath}.{field_}" if field_ in entry else epath, str(exc)) from None
            if d.key in out:
                raise fail(epath, f"a second entry for image {d.index} of `{variant}`")
            out[d.key] = d
    return out


# -- writing -------------------------------------------------------------------------------
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*\Z")
# Plain words that YAML 1.1 or 1.2 readers turn into booleans or null.
_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})
# Characters YAML does not allow raw, or folds as line breaks inside a quoted scalar.
_ESCAPE = re.compile("[\x7f-\x9f\u2028\u2029\ufeff\ufffe\uffff]")


def _scalar(text: str) -> str:
    """`text` plain where every YAML reader reads it back as that text, else quoted."""
    if _PLAIN.match(text) and text.lower() not in _WORDS:
        return text
    if _SHA.match(text) and not re.fullmatch(r"[0-9]+(e[0-9]+)?", text):
        return text
    return _quoted(text)


def _quoted(text: str) -> str:
    """A double-quoted YAML scalar (JSON's escapes are YAML's, plus the characters YAML
    would refuse raw or fold as line breaks)."""
    return _ESCAPE.sub(lambda m: f"\\u{ord(m.group()):04x}",
                       json.dumps(text, ensure_ascii=False))


def dumps(decisions: Iterable[Decision]) -> str:
    """The file's text: entries sorted by variant id, then index; notes always quoted."""
    by_variant: dict[str, list[Decision]] = {}
    for d in sorted(decisions, key=lambda d: (d.variant, d.index)):
        by_variant.setdefault(d.variant, []).append(d)
    lines = [f"version: {VERSION}", "images:" + ("" if by_variant else " {}")]
    for variant, entries in by_variant.items():
        lines.append(f"  {_scalar(variant)}:")
        for d in entries:
            note = "" if d.note is None else f", note: {_quoted(d.note)}"
            lines.append(f"    - {{index: {d.index}, sha256: {_scalar(d.sha256)}, "
                         f"verdict: {d.verdict}{note}}}")
    return "\n".join(lines) + "\n"


def save(path: Path, decisions: Iterable[Decision]) -> None:
    """Replace `path` atomically with `decisions`; ReviewFileError if it cannot be written."""
    path = Path(path)
    try:
        atomic_write(path, dumps(decisions).encode("utf-8"))
    except OSError as exc:
        raise ReviewFileError(f"cannot write {path}: {exc.strerror or exc}") from None


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: temp file beside it, fsync, rename, fsync of the folder.
    A reader sees the old file or the new one, never a part; OSError on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open a folder
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the review file's lock: a thread lock, and `flock` on its folder where there is
    one (other processes: a second review server, an export)."""
    key = Path(path).resolve()
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        try:
            import fcntl
        except ImportError:  # Windows: the thread lock alone
            yield
            return
        fd = os.open(key.parent, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def _same(a: Decision | None, b: Decision | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.sha256, a.verdict, a.note or None) == (b.sha256, b.verdict, b.note or None)


def update(path: Path, key: Key, new: Decision | None, expect: Decision | None,
           *, check: Callable[[], None] | None = None) -> tuple[Decision | None, Decision | None]:
    """Set (or, with `new` None, remove) the entry `key`, if it is still `expect`.

    Reads the file afresh under the lock, so changes made by others to other entries are
    kept. `check` runs under the lock before writing (e.g. "the image still has this
    sha256") and may raise Conflict. Returns (entry before, entry after). Raises Conflict
    (with the current entry) when the entry is not `expect`.
    """
    if new is not None:
        check_decision(new)
        if new.key != key:
            raise ValueError("the decision is for another image")
    with locked(path):
        decisions = load(path)
        before = decisions.get(key)
        if not _same(before, expect):
            raise Conflict("the decision changed meanwhile (another tab or reviewer)", before)
        if check is not None:
            check()
        if _same(before, new):
            return before, before
        if new is None:
            decisions.pop(key, None)
        else:
            decisions[key] = new
        save(path, decisions.values())
        return before, new


# -- images on disk --------------------------------------------------------------------------
file_sha256 = sha256_file  # the sha256 hex of a file's bytes; OSError if it cannot be read


@dataclass
class ShaCache:
    """sha256 of files, recomputed only when (size, mtime, inode) changes; None if missing."""

    known: dict[str, tuple[tuple[int, int, int], str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, path: Path) -> str | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        sig = (st.st_size, st.st_mtime_ns, st.st_ino)
        key = str(path)
        with self.lock:
            hit = self.known.get(key)
        if hit is not None and hit[0] == sig:
            return hit[1]
        try:
            digest = file_sha256(path)
        except OSError:
            return None
        with self.lock:
            self.known[key] = (sig, digest)
        return digest


# -- the review state of a run -------------------------------------------------------------
@dataclass(frozen=True)
class Reviewed:
    """One result image of a run with its review state.

    `state`: approved | rejected | pending | stale | missing (no file on disk; only known
    where the file was looked at). `sha256` is the file's hash when it was read (always for
    decided images), else the recorded one.
    """

    task: Any  # summary.TaskInfo
    image: Any  # summary.Image
    run_dir: Path
    sha256: str | None
    state: str
    decision: Decision | None

    @property
    def key(self) -> Key:
        """(variant, index) of the image."""
        return (self.task.variant_id, self.image.index)

    @property
    def path(self) -> Path | None:
        """The image file (None: the record has no path for it)."""
        return Path(self.run_dir, self.image.path) if self.image.path else None


def current_images(tasks: Sequence[Any]) -> list[tuple[Any, Any]]:
    """(task, image) pairs, one per (variant, index): a variant recorded twice (an older
    task superseded by a changed spec) keeps its last recorded task's image."""
    chosen: dict[Key, tuple[Any, Any]] = {}
    for t in tasks:
        for img in t.images:
            chosen[(t.variant_id, img.index)] = (t, img)
    return list(chosen.values())


def review_images(tasks: Sequence[Any], run_dir: Path, decisions: Mapping[Key, Decision],
                  sha_of: Callable[[Path], str | None], *, hash_all: bool = False
                  ) -> list[Reviewed]:
    """The review state of every current result image of `tasks`.

    Decided images are always hashed on disk (a decision holds only for the bytes it names);
    undecided ones only with `hash_all` (the review page, which must send the hash it shows):
    without it they are pending, unread (a report over 10,000 images touches no file then).
    """
    out = []
    for t, img in current_images(tasks):
        d = decisions.get((t.variant_id, img.index))
        sha = img.sha256
        if not img.path:
            state, sha = "missing", None
        elif d is not None or hash_all:
            sha = sha_of(Path(run_dir, img.path))
            if sha is None:
                state = "missing"
            elif d is None:
                state = "pending"
            else:
                state = d.verdict if d.sha256 == sha else "stale"
        else:
            state = "pending"
        out.append(Reviewed(t, img, run_dir, sha, state, d))
    return out


@dataclass(frozen=True)
class Counts:
    """Images per review state, and the approval rate among decided ones."""

    approved: int = 0
    rejected: int = 0
    pending: int = 0
    stale: int = 0

    @property
    def rate(self) -> float | None:
        """approved / (approved + rejected); None before any decision."""
        decided = self.approved + self.rejected
        return self.approved / decided if decided else None

    def as_dict(self) -> dict[str, Any]:
        """Counts and rate (rounded to 4 places) for JSON."""
        return {"approved": self.approved, "rejected": self.rejected, "pending": self.pending,
                "stale": self.stale,
                "approval_rate": None if self.rate is None else round(self.rate, 4)}


def count(items: Iterable[Reviewed]) -> Counts:
    """The Counts of `items` (missing files are not counted)."""
    n = dict.fromkeys(STATES, 0)
    for r in items:
        if r.state in n:
            n[r.state] += 1
    return Counts(**n)


@dataclass(frozen=True)
class ReviewSummary:
    """What `report` shows about a run's review: totals, per axis value, the file."""

    file: Path
    exists: bool
    images: tuple[Reviewed, ...]
    totals: Counts
    by: tuple[tuple[str, tuple[tuple[str, Counts], ...]], ...]
    missing: int  # current images whose file is gone
    orphans: int  # entries for images this run does not have

    def of(self, variant: str, index: int) -> Reviewed | None:
        """The review state of one image (None: not a current image of the run)."""
        return self._index.get((variant, index))

    @cached_property
    def _index(self) -> dict[Key, Reviewed]:
        # Not a field: cached in the instance __dict__, which a frozen dataclass allows.
        return {r.key: r for r in self.images}


def summarize_review(file: Path, decisions: Mapping[Key, Decision], images: Sequence[Reviewed],
                     axes: Sequence[str]) -> ReviewSummary:
    """Totals and per-axis-value counts of `images` (axes in the order given)."""
    by = []
    for axis in axes:
        groups: dict[str, list[Reviewed]] = {}
        for r in images:
            groups.setdefault(r.task.axis(axis), []).append(r)
        by.append((axis, tuple((v, count(rs)) for v, rs in groups.items())))
    known = {r.key for r in images}
    return ReviewSummary(Path(file), Path(file).exists(), tuple(images), count(images),
                         tuple(by), sum(r.state == "missing" for r in images),
                         sum(k not in known for k in decisions))


def review_of(run_dir: Path, tasks: Sequence[Any], axes: Sequence[str], spec: Path | None,
              sha_of: Callable[[Path], str | None] | None = None) -> ReviewSummary | None:
    """Load the review file of `spec` and summarise it over `tasks` (None without a spec).

    Raises ReviewFileError when the file exists but cannot be read.
    """
    if spec is None:
        return None
    file = review_path(spec)
    decisions = load(file)
    images = review_images(tasks, run_dir, decisions, sha_of or ShaCache())
    return summarize_review(file, decisions, images, axes)
