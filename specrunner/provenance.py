"""Where a run comes from: git commit, uncommitted changes, lock hash, tool version.

`provenance(spec_path, inputs)` asks git (through subprocess, read-only: status runs with
GIT_OPTIONAL_LOCKS=0 so it never rewrites the index) about the repository holding the spec:

- `commit`: HEAD's full hash; None outside a repository, before the first commit, or when
  git is missing or refuses (`note` says which).
- `changed`: tracked files whose content differs from HEAD, staged or not (repository-
  relative paths, sorted; both sides of a rename).
- `untracked`: those of the campaign's own files (the spec, its lock, its local inputs) that
  git does not track, so the commit alone cannot reproduce the run. Other untracked files
  (the output folder, scratch files) do not count: git does not count them either.
- `dirty`: True when either list is non-empty; None when not in a repository.
- `lock_sha256`: sha256 of the lock file beside the spec (None when there is none).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specrunner import __version__

GIT_TIMEOUT_S = 10
SHOWN = 5  # changed files named in summary(); all are in `changed`


@dataclass(frozen=True)
class Provenance:
    """The origin of a run, as recorded with it and shown by report and diff."""

    commit: str | None
    dirty: bool | None
    changed: tuple[str, ...]
    untracked: tuple[str, ...]
    lock_sha256: str | None
    tool_version: str
    note: str | None = None  # why there is no commit

    def summary(self) -> str:
        """One line for a report: commit, clean or what differs, lock."""
        if self.commit is None:
            where = f"no git commit ({self.note})" if self.note else "no git commit"
        elif not self.dirty:
            where = f"commit {self.commit[:12]} (clean)"
        else:
            parts = []
            if self.changed:
                parts.append(f"{len(self.changed)} tracked file(s) differ: "
                             + _some(self.changed))
            if self.untracked:
                parts.append(f"untracked: {_some(self.untracked)}")
            where = f"commit {self.commit[:12]} with uncommitted changes ({'; '.join(parts)})"
        lock = f"lock {self.lock_sha256[:12]}" if self.lock_sha256 else "no lock"
        return f"{where}; {lock}; specrunner {self.tool_version}"

    def short(self) -> str:
        """The summary in a few words (tables): commit, clean or how many files differ, lock."""
        if self.commit is None:
            where = "no git commit"
        elif not self.dirty:
            where = f"commit {self.commit[:12]} (clean)"
        else:
            counts = [f"{len(self.changed)} changed"] if self.changed else []
            counts += [f"{len(self.untracked)} untracked"] if self.untracked else []
            where = f"commit {self.commit[:12]}, dirty ({', '.join(counts)})"
        lock = f"lock {self.lock_sha256[:12]}" if self.lock_sha256 else "no lock"
        return f"{where}; {lock}; specrunner {self.tool_version}"

    def to_json(self) -> dict[str, Any]:
        """The fields as JSON values (what a record stores and report --format json shows)."""
        return {"commit": self.commit, "dirty": self.dirty, "changed": list(self.changed),
                "untracked": list(self.untracked), "lock_sha256": self.lock_sha256,
                "tool_version": self.tool_version, "note": self.note}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Provenance:
        """The value `to_json` gave (as read back from a record)."""
        return cls(doc.get("commit"), doc.get("dirty"), tuple(doc.get("changed") or ()),
                   tuple(doc.get("untracked") or ()), doc.get("lock_sha256"),
                   str(doc.get("tool_version") or "?"), doc.get("note"))


def _some(paths: tuple[str, ...]) -> str:
    shown = ", ".join(paths[:SHOWN])
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


class _GitError(Exception):
    pass


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=GIT_TIMEOUT_S,
                              env=env, stdin=subprocess.DEVNULL, check=False)
    except FileNotFoundError:
        raise _GitError("git is not installed") from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise _GitError(f"git failed: {type(exc).__name__}") from None
    if done.returncode != 0:
        first = (done.stderr.decode("utf-8", "replace").strip().splitlines() or [""])[0]
        raise _GitError(first.removeprefix("fatal: ") or f"git {args[0]} failed")
    return done.stdout.decode("utf-8", "surrogateescape")


def _lock_hash(spec_path: Path) -> str | None:
    try:
        return hashlib.sha256(spec_path.with_suffix(".lock").read_bytes()).hexdigest()
    except OSError:
        return None


def _status_paths(porcelain: str) -> tuple[str, ...]:
    """Paths of `git status --porcelain=v1 -z` entries (a rename names both sides)."""
    out: list[str] = []
    fields = porcelain.split("\0")
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        out.append(entry[3:])
        if entry[0] in "RC" or entry[1] in "RC":  # the next field is the original path
            out.append(fields[i])
            i += 1
    return tuple(sorted(set(out)))


def provenance(spec_path: str | Path, inputs: Iterable[str | Path] = ()) -> Provenance:
    """The provenance of a run of the spec at `spec_path`, whose local input files are
    `inputs` (for a Plan: every `task.local_inputs[...].path`). Never raises for git's sake:
    without a usable repository, commit and dirty are None and `note` says why."""
    spec = Path(spec_path).resolve()
    lock = _lock_hash(spec)
    folder = spec.parent
    try:
        root = Path(_git(folder, "rev-parse", "--show-toplevel").strip())
    except _GitError as exc:
        return Provenance(None, None, (), (), lock, __version__, str(exc))
    try:
        commit: str | None = _git(folder, "rev-parse", "--verify", "-q", "HEAD^{commit}").strip()
    except _GitError:
        commit = None  # a repository without commits: everything is uncommitted
    try:
        changed = _status_paths(_git(root, "status", "--porcelain=v1", "-z",
                                     "--untracked-files=no", "--no-renames"))
        untracked = _untracked(root, {spec, spec.with_suffix(".lock"),
                                      *(Path(p).resolve() for p in inputs)})
    except _GitError as exc:
        return Provenance(commit, None, (), (), lock, __version__, str(exc))
    if commit is None:
        return Provenance(None, True, changed, untracked, lock, __version__,
                          "the repository has no commit yet")
    return Provenance(commit, bool(changed or untracked), changed, untracked, lock,
                      __version__)


def _untracked(root: Path, files: set[Path]) -> tuple[str, ...]:
    """Those of `files` (absolute, existing ones only) that git does not track: relative to
    `root`, or absolute when outside the repository."""
    inside, outside = [], []
    for p in sorted(f for f in files if f.exists()):
        try:
            inside.append(p.relative_to(root).as_posix())
        except ValueError:
            outside.append(p.as_posix())
    tracked = set(_git(root, "ls-files", "-z", "--", *inside).split("\0")) if inside else set()
    return tuple([p for p in inside if p not in tracked] + outside)
