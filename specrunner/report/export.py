"""Copy the reviewed images of a run to a folder, with a manifest.csv: what `export` does.

Selection is by review state (approved, rejected, pending, stale; see report/review.py).
Each image keeps its path relative to the run folder. Before anything is written, every
target is checked: a file already there with other bytes (or a manifest.csv that differs)
is a conflict, and any conflict refuses the whole export (ExportConflict, exit 2) with
nothing written. Files already there with the same bytes are left alone, so an export is
idempotent. Each copy goes to a temporary name, is hashed while copied, fsynced and renamed:
no file is ever half-copied, and one whose source changed meanwhile is not kept. The manifest
is written last, so its presence means the export completed.

manifest.csv columns: variant, image_index, file (relative to DEST), one column per matrix
axis (`input`, `prompt` (its name), ...; prefixed `axis:` if an axis is named like a fixed
column), prompt_text (the prompt sent), cost_usd, seed, sha256, verdict, note.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from specrunner.errors import SpecrunnerError
from specrunner.money import usd
from specrunner.report.review import (
    Decision,
    Key,
    Reviewed,
    ShaCache,
    atomic_write,
    file_sha256,
    fsync_dir,
    review_images,
)
from specrunner.report.summary import RunData

MANIFEST = "manifest.csv"
FIXED = ("variant", "image_index", "file")
TAIL = ("prompt_text", "cost_usd", "seed", "sha256", "verdict", "note")


class ExportConflict(SpecrunnerError):
    """DEST holds files that differ from what the export would write; nothing was written."""


@dataclass(frozen=True)
class Exported:
    """What an export did: images selected, copied, already there; the manifest."""

    selected: int
    copied: int
    unchanged: int
    manifest: Path


def manifest_text(items: Sequence[Reviewed], axes: Sequence[str]) -> str:
    """The manifest.csv of `items` (in the order given)."""
    names = [a if a not in FIXED + TAIL else f"axis:{a}" for a in axes]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([*FIXED, *names, *TAIL])
    for r in items:
        t, img, d = r.task, r.image, r.decision
        note = d.note if d is not None and r.state in ("approved", "rejected") else None
        cost = img.cost if img.cost is not None else None
        w.writerow([t.variant_id, img.index, img.path, *(t.axis(a) for a in axes),
                    t.prompt or "", usd(cost) or "", img.seed or "", r.sha256 or "",
                    r.state, note or ""])
    return buf.getvalue()


def _safe(rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and rel not in ("", MANIFEST)


def export(data: RunData, run_dir: Path, decisions: Mapping[Key, Decision], dest: Path,
           states: Sequence[str]) -> Exported:
    """Copy the current images of `data` whose review state is in `states` to `dest`.

    Raises ExportConflict (nothing written) when `dest` holds different files, and
    SpecrunnerError when a source cannot be read or changes while copied.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    if dest.exists() and not dest.is_dir():
        raise ExportConflict(f"{dest} exists and is not a folder")
    # Decided images are always hashed (their state depends on it); undecided ones only when
    # pending ones are exported (the manifest lists every copy's sha256).
    items = [r for r in review_images(data.tasks, run_dir, decisions, ShaCache(),
                                      hash_all="pending" in states)
             if r.state in states]
    for r in items:
        if r.image.path is None or not _safe(r.image.path):
            raise SpecrunnerError(f"{r.task.variant_id}: recorded path {r.image.path!r} cannot "
                                  "be exported")
    manifest = manifest_text(items, data.axes).encode("utf-8")
    conflicts, todo, unchanged = [], [], 0
    for r in items:
        target = dest / r.image.path
        if target.is_dir():
            conflicts.append(f"{target} is a folder")
        elif target.exists():
            if _sha_or_none(target) == r.sha256:
                unchanged += 1
            else:
                conflicts.append(f"{target} exists with other bytes")
        else:
            todo.append(r)
    mpath = dest / MANIFEST
    if mpath.exists() and (mpath.is_dir() or mpath.read_bytes() != manifest):
        conflicts.append(f"{mpath} differs (another selection, or decisions changed since)")
    if conflicts:
        more = f" (and {len(conflicts) - 3} more)" if len(conflicts) > 3 else ""
        raise ExportConflict("refusing to overwrite: " + "; ".join(conflicts[:3]) + more
                             + "; nothing was written (export to a new folder, or remove them)")
    for r in todo:
        _copy(r.path, dest / r.image.path, r.sha256)  # type: ignore[arg-type]
    if todo or not mpath.exists():
        dest.mkdir(parents=True, exist_ok=True)
        try:
            atomic_write(mpath, manifest)
        except OSError as exc:
            raise SpecrunnerError(f"cannot write {mpath}: {exc.strerror or exc}") from None
    return Exported(len(items), len(todo), unchanged, mpath)


def _sha_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def _copy(source: Path, target: Path, sha256: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with open(source, "rb") as src, open(tmp, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != sha256:
            raise SpecrunnerError(f"{source} changed while it was exported; run export again")
        if target.exists():  # appeared since the check: never replace someone's file
            raise ExportConflict(f"{target} appeared during the export; nothing replaced")
        os.replace(tmp, target)
    except OSError as exc:
        raise SpecrunnerError(f"cannot copy {source} to {target}: {exc.strerror or exc}") \
            from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    fsync_dir(target.parent)
