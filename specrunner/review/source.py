"""What the review page shows, read afresh from the run folder and the review file.

`Source.state()` re-reads the run (through `load_run`, via the loader it was given) when the
record changed, the review file when it changed, and hashes result files only when their
(size, mtime, inode) changed, so the page can poll every few seconds, also while a run is
writing. `Source.decide()` applies one decision to the review file (review.update).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specrunner.errors import RecordError
from specrunner.money import usd
from specrunner.record import record_path
from specrunner.report.review import (
    Conflict,
    Decision,
    Key,
    Reviewed,
    ShaCache,
    count,
    load,
    review_images,
    update,
)
from specrunner.report.summary import RunData, TaskInfo

MAX_AGE_S = 10.0  # re-read the record at least this often even if its files look unchanged


@dataclass(frozen=True)
class State:
    """One snapshot: the run, the decisions, the review state of every current image."""

    data: RunData
    decisions: Mapping[Key, Decision]
    images: tuple[Reviewed, ...]
    body: bytes  # the JSON the page gets
    etag: str
    index: Mapping[Key, Reviewed]
    tasks: Mapping[str, TaskInfo]  # variant id -> its last recorded task


def _stat_sig(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class Source:
    """The run folder and review file behind one review page (thread-safe)."""

    def __init__(self, run_dir: Path, load_data: Callable[[], RunData], review_file: Path,
                 spec: Path | None) -> None:
        self.run_dir, self.review_file, self.spec = Path(run_dir), Path(review_file), spec
        self._load_data = load_data
        self.sha_of = ShaCache()
        self._lock = threading.Lock()
        self._data: tuple[Any, float, RunData] | None = None
        self._decisions: tuple[Any, dict[Key, Decision]] | None = None
        self._state: State | None = None

    # -- reading ---------------------------------------------------------------------------
    def _record_sig(self) -> Any:
        db = record_path(self.run_dir)
        return (_stat_sig(db), _stat_sig(db.with_name(db.name + "-wal")))

    def data(self) -> RunData:
        """The run, re-read when the record's files changed (or every MAX_AGE_S).

        A read that fails while an earlier one succeeded (a run creating or migrating its
        record at that moment) keeps the earlier snapshot; the next call tries again.
        """
        sig = self._record_sig()
        now = time.monotonic()
        if self._data is None or self._data[0] != sig or now - self._data[1] > MAX_AGE_S:
            try:
                self._data = (sig, now, self._load_data())
            except RecordError:
                if self._data is None:
                    raise
                self._data = (None, self._data[1], self._data[2])
        return self._data[2]

    def decisions(self) -> dict[Key, Decision]:
        """The review file's entries, re-read when the file changed."""
        sig = _stat_sig(self.review_file)
        if self._decisions is None or self._decisions[0] != sig:
            self._decisions = (sig, load(self.review_file))
        return self._decisions[1]

    def state(self) -> State:
        """A fresh snapshot (cheap when nothing changed: stats only)."""
        with self._lock:
            data, decisions = self.data(), self.decisions()
            images = review_images(data.tasks, self.run_dir, decisions, self.sha_of,
                                   hash_all=True)
            doc = page_json(data, decisions, images, self)
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            self._state = State(data, decisions, tuple(images), body, etag,
                                {r.key: r for r in images},
                                {t.variant_id: t for t in data.tasks})
            return self._state

    def last(self) -> State:
        """The latest snapshot (taking one if there is none yet)."""
        return self._state or self.state()

    def image(self, variant: str, index: int) -> Reviewed | None:
        """A current result image of the latest snapshot."""
        return self.last().index.get((variant, index))

    def task(self, variant: str) -> TaskInfo | None:
        """The last recorded task of a variant in the latest snapshot."""
        return self.last().tasks.get(variant)

    # -- writing ---------------------------------------------------------------------------
    def decide(self, variant: str, index: int, entry: Mapping[str, Any] | None,
               expect: Mapping[str, Any] | None, restore: bool = False
               ) -> tuple[Decision | None, Decision | None]:
        """Apply one decision (None: clear) if the file still holds `expect`.

        Unless `restore` (undo puts back an entry exactly as it was), the entry's sha256 must
        be the image's bytes on disk now. Raises Conflict or ValueError.
        """
        reviewed = self.image(variant, index)
        if reviewed is None:
            self.state()
            reviewed = self.image(variant, index)
        if reviewed is None or reviewed.path is None:
            raise ValueError(f"{variant} has no result image {index} in this run")
        new = _decision(variant, index, entry)
        old = _decision(variant, index, expect)
        path = reviewed.path

        def same_bytes() -> None:
            if new is not None and not restore and self.sha_of(path) != new.sha256:
                raise Conflict("the image changed on disk since the page showed it", old)

        return update(self.review_file, (variant, index), new, old, check=same_bytes)


def _decision(variant: str, index: int, entry: Mapping[str, Any] | None) -> Decision | None:
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise ValueError("an entry is an object {sha256, verdict, note}")
    note = entry.get("note")
    return Decision(variant, index, entry.get("sha256"), entry.get("verdict"),  # type: ignore[arg-type]
                    note if note else None)


def _entry(d: Decision | None) -> dict[str, Any] | None:
    return None if d is None else d.to_json()


def tile_json(t: TaskInfo, r: Reviewed | None) -> dict[str, Any]:
    """One grid tile: a result image, or a task that has none (failed, pending...)."""
    img = r.image if r is not None else None
    return {
        "v": t.variant_id, "i": img.index if img is not None else None, "status": t.status,
        "input": t.input_name, "sha": r.sha256 if r is not None else None,
        "state": r.state if r is not None else "none",
        "d": _entry(r.decision) if r is not None else None,
        "cost": usd(img.cost if img is not None and img.cost is not None
                    else (t.cost if t.cost is not None else t.est_cost)),
        "seed": img.seed if img is not None else None,
        "n": t.number_results,
        "err": t.error_code, "msg": t.error_message,
    }


def page_json(data: RunData, decisions: Mapping[Key, Decision], images: list[Reviewed],
              source: Source) -> dict[str, Any]:
    """The document GET /api/state answers (see review.js)."""
    by_task: dict[int, list[Reviewed]] = {}
    for r in images:
        by_task.setdefault(id(r.task), []).append(r)
    tiles: list[dict[str, Any]] = []
    values: dict[str, dict[str, None]] = {a: {} for a in data.axes}  # ordered sets
    for t in data.tasks:
        own = by_task.get(id(t))
        axes = [t.axis(a) for a in data.axes]
        for a, v in zip(data.axes, axes, strict=True):
            values[a][v] = None
        if own:
            tiles += [{**tile_json(t, r), "axes": axes} for r in own]
        elif not t.images:
            tiles.append({**tile_json(t, None), "axes": axes})
        # else: a superseded task whose images a later task of its variant replaced
    known = {r.key for r in images}
    c = count(images)
    return {
        "run": {"name": data.name, "status": data.status, "dir": str(source.run_dir),
                "spec": str(source.spec) if source.spec else None,
                "review_file": str(source.review_file),
                "review_exists": source.review_file.exists(), "notes": list(data.warnings),
                "orphans": sum(k not in known for k in decisions)},
        "axes": list(data.axes), "values": {a: list(v) for a, v in values.items()},
        "counts": {"approved": c.approved, "rejected": c.rejected, "pending": c.pending,
                   "stale": c.stale, "missing": sum(r.state == "missing" for r in images)},
        "tiles": tiles,
    }


def _leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, Mapping):
        out: list[tuple[str, Any]] = []
        for k, v in node.items():
            out += _leaves(v, f"{prefix}{k}.")
        return out
    return [(prefix[:-1], node)]


def task_json(t: TaskInfo) -> dict[str, Any]:
    """GET /api/task: what the large view shows beyond the tile: prompt, request fields."""
    request = {k: v for k, v in t.request.items() if k != "positivePrompt"}
    local = {f"local:{i.sha256}": f"{Path(i.value).name} (local file, sha256 {i.sha256})"
             for i in t.inputs if i.kind == "file" and i.sha256}
    return {
        "v": t.variant_id, "status": t.status, "input": t.input_name,
        "prompt_name": t.prompt_name, "prompt": t.prompt,
        "request": [[k, local.get(v, v) if isinstance(v, str) else v]
                    for k, v in _leaves(request)],
        "inputs": [{"field": i.field, "kind": i.kind,
                    "value": Path(i.value).name if i.kind == "file" else i.value,
                    "polarity": i.polarity} for i in t.inputs],
        "axes": [list(a) for a in t.axes],
        "estimated_usd": usd(t.est_cost), "actual_usd": usd(t.cost),
        "error": {"code": t.error_code, "message": t.error_message} if t.error_code else None,
        "images": [{"i": i.index, "path": i.path, "seed": i.seed, "sha256": i.sha256,
                    "cost": usd(i.cost), "uuid": i.image_uuid} for i in t.images],
    }
