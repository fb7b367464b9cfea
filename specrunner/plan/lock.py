"""The lock file beside a spec: what `specrunner run` will send and pay, reviewable in git.

`<stem>.lock` beside `<stem>.yaml` is TOML written by `render` (its own writer: fixed key
order, no timestamps, LF line endings, UTF-8), read back with the standard library's tomllib.
Header: lock-version, spec (file name), spec-sha256, specrunner (tool version), model,
model-name, request-schema and request-schema-sha256 (canonical JSON of the model's request
schema); then `[prices]` (USD per image of the model used), one `[[task]]` block per task in
plan order (variant, key, uuid, images, cost, and `inputs.<field>` for each input of the
request and any other local file it sends, keyed as Task.local_inputs keys it: "sha256:<hex>"
of a local file, with its path as a comment, or the URL / image UUID as written), and
`[totals]`.
docs/lock-file.md shows one.

`check_lock(plan)` compares the lock on disk with the plan (LockStatus):
- current: every task (variant id, key, uuid, images, cost, inputs), the prices and totals
  match. Header-only differences are notes, not staleness: a comment-only edit of the spec
  changes its sha256 but nothing sent or paid, a newer specrunner or a reformatted schema
  that plans the very same requests changes nothing either, so they do not fail CI (the
  note says `specrunner lock` refreshes the header).
- stale: tasks added, removed, changed (with the fields that changed) or renamed (same
  key, new variant id), or a price or a total changed.
- missing, or unreadable (not TOML, merge conflict markers, wrong shape, newer version).
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from specrunner import __version__, models
from specrunner.money import money, usd
from specrunner.plan.build import Plan
from specrunner.plan.identity import canonical_json

LOCK_VERSION = 1
SUFFIX = ".lock"
SHOWN = 20  # changes listed per kind in a message; the rest are counted
HEADER_NOTES = {  # header fields whose difference alone leaves the tasks current
    "spec": "the spec file was renamed",
    "spec-sha256": "the spec changed since it was locked, its tasks did not (comments, "
                   "formatting or settings that change nothing sent)",
    "specrunner": "the lock was written by specrunner {old} (this is {new})",
    "model-name": "the model's name changed ({old} -> {new})",
    "request-schema": "the model's request schema changed since locking; the tasks did not",
    "request-schema-sha256": "the model's request schema changed since locking; the tasks "
                             "did not",
}


class LockFormatError(ValueError):
    """A lock file that cannot be read as one (the message says why)."""


@dataclass(frozen=True)
class LockedTask:
    """One task as a lock records it. `inputs` maps a request input field to "sha256:<hex>"
    (a local file) or the URL / image UUID sent; `paths` are comments only."""

    variant: str
    key: str
    uuid: str
    images: int
    cost: Decimal
    inputs: Mapping[str, str]
    paths: Mapping[str, str] = field(default_factory=dict, compare=False)

    def differences(self, other: LockedTask) -> tuple[str, ...]:
        """Names of the fields that differ from `other` (variant id aside)."""
        out = [name for name in ("key", "uuid", "images", "cost")
               if getattr(self, name) != getattr(other, name)]
        for k in dict.fromkeys([*self.inputs, *other.inputs]):
            if self.inputs.get(k) != other.inputs.get(k):
                out.append(f"inputs.{k}")
        # the key and uuid follow from the request: name what the reader can act on first
        return tuple(sorted(out, key=lambda n: (n in ("key", "uuid"), n)))


@dataclass(frozen=True)
class Lock:
    """The content of a lock file (comments aside)."""

    header: Mapping[str, Any]  # lock-version, spec, spec-sha256, specrunner, model, ...
    prices: Mapping[str, Decimal]
    tasks: tuple[LockedTask, ...]
    total_tasks: int
    total_images: int
    total_cost: Decimal


def lock_path(spec_path: str | Path) -> Path:
    """The lock beside a spec: `storefront.yaml` -> `storefront.lock`."""
    path = Path(spec_path)
    if path.suffix == SUFFIX:
        raise ValueError(f"{path} is a lock file, not a spec")
    return path.with_suffix(SUFFIX)


def spec_for_lock(path: str | Path) -> Path:
    """The spec a `.lock` path belongs to (`x.yaml` or `x.yml` beside it); other paths as
    given. ValueError when there is none, or both."""
    path = Path(path)
    if path.suffix != SUFFIX:
        return path
    found = [p for p in (path.with_suffix(".yaml"), path.with_suffix(".yml")) if p.is_file()]
    if len(found) != 1:
        raise ValueError(f"{path}: no spec beside it ({path.with_suffix('.yaml').name})"
                         if not found else f"{path}: both {found[0].name} and {found[1].name}"
                         " are beside it; name the spec")
    return found[0]


def schema_sha256(model_id: str) -> str:
    """sha256 of the canonical JSON of the model's request schema (formatting aside)."""
    schema = models.load_schema(models.get_model(model_id).request_schema)
    return hashlib.sha256(canonical_json(schema)).hexdigest()


def lock_of(plan: Plan) -> Lock:
    """What the lock of `plan` holds."""
    spec = plan.spec
    model = models.get_model(spec.model)
    header = {
        "lock-version": LOCK_VERSION, "spec": spec.path.name, "spec-sha256": spec.source_sha256,
        "specrunner": __version__, "model": model.id, "model-name": model.title,
        "request-schema": model.request_schema, "request-schema-sha256": schema_sha256(model.id),
    }
    tasks = []
    shown: dict[Path, str] = {}  # a campaign has few input files and many tasks
    for t in plan.tasks:
        # the request's inputs in its order (local or not), then any other local file
        inputs = {name: str(ref) for name, ref in t.request.get("inputs", {}).items()}
        paths = {}
        for name, local in t.local_inputs.items():
            inputs[name] = "sha256:" + local.sha256
            if local.path not in shown:
                shown[local.path] = _relative(local.path, spec.path.parent)
            paths[name] = shown[local.path]
        tasks.append(LockedTask(t.variant_id, t.task_key, t.task_uuid, t.number_results,
                                t.est_cost, inputs, paths))
    return Lock(header, {model.id: spec.prices[model.id]}, tuple(tasks), len(plan.tasks),
                plan.total_images, plan.total_cost)


def _relative(path: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path, folder)).as_posix()
    except ValueError:  # another drive (Windows)
        return path.name


# -- writing ---------------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NEEDS_ESCAPE = re.compile(r'["\\\x00-\x1f\x7f]')


def _string(text: str) -> str:
    """A TOML basic string."""
    if not _NEEDS_ESCAPE.search(text):  # hashes, UUIDs, ids: nearly every string
        return f'"{text}"'
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(name: str) -> str:
    """A TOML key: bare when it can be, quoted otherwise."""
    bare = name and all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    return name if bare else _string(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal):
        return _string(usd(value))
    return _string(str(value))


def _comment(text: str) -> str:
    # a comment ends at the line's end: keep it on one line, control characters escaped
    return _string(text)[1:-1] if _CONTROL.search(text) else text


def render(lock: Lock) -> bytes:
    """The lock file's bytes: deterministic, LF line endings, UTF-8."""
    spec = lock.header["spec"]
    lines = [
        f"# Lock of {_comment(spec)}: the tasks `specrunner run` will send and what they cost.",
        "# Written by `specrunner lock`; `specrunner lock --check` compares it with the spec.",
    ]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in lock.header.items()]
    lines += ["", "[prices]  # USD per image"]
    lines += [f"{_key(k)} = {_value(v)}" for k, v in lock.prices.items()]
    for t in lock.tasks:
        lines += ["", "[[task]]", f"variant = {_string(t.variant)}", f"key = {_string(t.key)}",
                  f"uuid = {_string(t.uuid)}", f"images = {t.images}",
                  f"cost = {_value(t.cost)}"]
        for name, ref in t.inputs.items():
            path = t.paths.get(name)
            lines.append(f"inputs.{_key(name)} = {_string(ref)}"
                         + (f"  # {_comment(path)}" if path else ""))
    lines += ["", "[totals]", f"tasks = {lock.total_tasks}", f"images = {lock.total_images}",
              f"cost = {_value(lock.total_cost)}", ""]
    return "\n".join(lines).encode("utf-8")


# -- reading ---------------------------------------------------------------------------------

def parse(data: bytes) -> Lock:
    """A lock file's bytes -> Lock; LockFormatError says what is wrong."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise LockFormatError("not UTF-8 text") from None
    if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) or line == "=======" for line in
           text.splitlines()):
        raise LockFormatError("it holds merge conflict markers")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LockFormatError(f"not a TOML lock file ({exc})") from None
    version = doc.get("lock-version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise LockFormatError("no lock-version")
    if version > LOCK_VERSION:
        raise LockFormatError(f"lock-version {version} was written by a newer specrunner "
                              f"(this one reads {LOCK_VERSION})")
    header = {k: v for k, v in doc.items() if k not in ("prices", "task", "totals")}
    prices = {str(k): _decimal(v, f"prices.{k}") for k, v in _table(doc, "prices").items()}
    raw_tasks = doc.get("task", [])
    if not isinstance(raw_tasks, list):
        raise LockFormatError("`task` is not a list of [[task]] tables")
    tasks = tuple(_task(item, i) for i, item in enumerate(raw_tasks))
    seen: set[str] = set()
    for t in tasks:
        if t.variant in seen:
            raise LockFormatError(f"variant `{t.variant}` appears twice")
        seen.add(t.variant)
    totals = _table(doc, "totals")
    return Lock(header, prices, tasks, _int(totals.get("tasks"), "totals.tasks"),
                _int(totals.get("images"), "totals.images"),
                _decimal(totals.get("cost"), "totals.cost"))


def _table(doc: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = doc.get(name)
    if not isinstance(value, dict):
        raise LockFormatError(f"no [{name}] table")
    return value


def _int(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise LockFormatError(f"{where} is not a whole number")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise LockFormatError(f"{where} is not a string")
    return value


def _decimal(value: Any, where: str) -> Decimal:
    try:
        return Decimal(_str(value, where))
    except InvalidOperation:
        raise LockFormatError(f"{where} is not a decimal number") from None


def _task(item: Any, i: int) -> LockedTask:
    where = f"task #{i + 1}"
    if not isinstance(item, dict):
        raise LockFormatError(f"{where} is not a table")
    inputs = item.get("inputs", {})
    if not isinstance(inputs, dict):
        raise LockFormatError(f"{where}: inputs is not a table")
    return LockedTask(
        _str(item.get("variant"), f"{where}: variant"), _str(item.get("key"), f"{where}: key"),
        _str(item.get("uuid"), f"{where}: uuid"), _int(item.get("images"), f"{where}: images"),
        _decimal(item.get("cost"), f"{where}: cost"),
        {str(k): _str(v, f"{where}: inputs.{k}") for k, v in inputs.items()})


# -- comparing -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskChange:
    """A task in both the lock and the plan whose locked fields differ; `old_variant` is set
    when the same request (same key) now has another variant id."""

    variant: str
    fields: tuple[str, ...]
    old_variant: str | None = None


@dataclass(frozen=True)
class LockStatus:
    """How a lock file compares with the plan of its spec.

    `state` is "current", "stale", "missing" or "unreadable"; `ok` is what `run --locked`
    requires; `message()` says it all in lines of text; `exit_code` is what
    `lock --check` exits with (0 current, 1 stale, 2 missing or unreadable).
    """

    state: str
    lock_file: str  # as shown to the user
    spec_file: str
    added: tuple[LockedTask, ...] = ()
    removed: tuple[LockedTask, ...] = ()
    changed: tuple[TaskChange, ...] = ()
    prices: tuple[tuple[str, Decimal | None, Decimal | None], ...] = ()  # (model, old, new)
    totals: tuple[tuple[int, int, Decimal], tuple[int, int, Decimal]] | None = None
    notes: tuple[str, ...] = ()  # header differences that leave the tasks current
    problem: str | None = None  # why a lock is unreadable

    @property
    def ok(self) -> bool:
        """True when the lock matches the plan (what `run --locked` requires)."""
        return self.state == "current"

    @property
    def missing(self) -> bool:
        """True when there is no lock file."""
        return self.state == "missing"

    @property
    def stale(self) -> bool:
        """True when the lock describes other tasks, prices or totals than the plan."""
        return self.state == "stale"

    @property
    def exit_code(self) -> int:
        """`lock --check`'s exit code: 0 current, 1 stale, 2 missing or unreadable."""
        return {"current": 0, "stale": 1}.get(self.state, 2)

    def headline(self) -> str:
        """One line: the lock, its state, and what to do."""
        relock = f"`specrunner lock {self.spec_file}`"
        if self.state == "missing":
            return f"{self.lock_file}: missing; create it with {relock}"
        if self.state == "unreadable":
            return f"{self.lock_file}: unreadable: {self.problem}; regenerate it with {relock}"
        assert self.totals is not None
        (_, _, _), (tasks, _images, cost) = self.totals
        if self.state == "current":
            extra = f"; {relock} refreshes its header" if self.notes else ""
            return f"{self.lock_file}: up to date ({tasks:,} tasks, {money(cost)}){extra}"
        counts = ", ".join(f"{n} {what}" for n, what in (
            (len(self.added), "added"), (len(self.removed), "removed"),
            (len(self.changed), "changed")) if n)
        return f"{self.lock_file}: stale ({counts or 'totals differ'}); update it with {relock}"

    def details(self) -> list[str]:
        """The lines under the headline: each change (the first SHOWN of each kind), price
        and totals changes, notes."""
        out: list[str] = []
        out += _listed([f"+ {t.variant} (new, {money(t.cost)})" for t in self.added], "added")
        out += _listed([f"- {t.variant} (no longer planned, {money(t.cost)})"
                        for t in self.removed], "removed")
        out += _listed([f"~ {c.old_variant + ' -> ' if c.old_variant else ''}{c.variant}: "
                        + _fields(c.fields) for c in self.changed], "changed")
        for model, old, new in self.prices:
            out.append(f"price of {model}: {_usd(old)} -> {_usd(new)} per image")
        if self.totals is not None and self.totals[0] != self.totals[1]:
            (t0, i0, c0), (t1, i1, c1) = self.totals
            out.append(f"totals: {t0:,} -> {t1:,} tasks, {i0:,} -> {i1:,} images, "
                       f"{money(c0)} -> {money(c1)}")
        out += [f"note: {n}" for n in self.notes]
        return out

    def message(self) -> str:
        """Headline and details, one per line (details indented)."""
        return "\n".join([self.headline(), *(f"  {line}" for line in self.details())])


def _fields(fields: tuple[str, ...]) -> str:
    text = ", ".join(fields)
    if "key" in fields and not any(f.startswith("inputs.") for f in fields):
        text += " (the request differs)"
    return text


def _usd(value: Decimal | None) -> str:
    return "(none)" if value is None else usd(value)


def _listed(lines: list[str], what: str) -> list[str]:
    if len(lines) <= SHOWN:
        return lines
    return [*lines[:SHOWN], f"... and {len(lines) - SHOWN:,} more {what}"]


def compare(locked: Lock, current: Lock, lock_file: str, spec_file: str) -> LockStatus:
    """The LockStatus of `locked` (read from disk) against `current` (lock_of the plan)."""
    old = {t.variant: t for t in locked.tasks}
    new = {t.variant: t for t in current.tasks}
    added = [t for t in current.tasks if t.variant not in old]
    removed = [t for t in locked.tasks if t.variant not in new]
    changed = [TaskChange(t.variant, t.differences(old[t.variant])) for t in current.tasks
               if t.variant in old and t.differences(old[t.variant])]
    # the same request under a new variant id: a rename, not a removal and an addition
    by_key = {t.key: t for t in removed}
    for t in list(added):
        was = by_key.pop(t.key, None)
        if was is not None:
            added.remove(t)
            removed.remove(was)
            changed.append(TaskChange(t.variant, ("variant", *t.differences(was)), was.variant))
    prices = tuple((m, locked.prices.get(m), current.prices.get(m))
                   for m in dict.fromkeys([*locked.prices, *current.prices])
                   if locked.prices.get(m) != current.prices.get(m))
    totals = ((locked.total_tasks, locked.total_images, locked.total_cost),
              (current.total_tasks, current.total_images, current.total_cost))
    model_changed = locked.header.get("model") != current.header.get("model")
    stale = bool(added or removed or changed or prices or totals[0] != totals[1]
                 or model_changed)
    notes = () if stale else tuple(dict.fromkeys(
        HEADER_NOTES[k].format(old=locked.header.get(k), new=current.header.get(k))
        for k in HEADER_NOTES if locked.header.get(k) != current.header.get(k)))
    return LockStatus("stale" if stale else "current", lock_file, spec_file, tuple(added),
                      tuple(removed), tuple(changed), prices, totals, notes)


def check_lock(plan: Plan, spec_file: str | None = None) -> LockStatus:
    """Compare the lock beside `plan.spec` with `plan`. `spec_file` is the spec's path as the
    user wrote it (messages use it; default the absolute path)."""
    shown = spec_file if spec_file is not None else str(plan.spec.path)
    shown_lock = str(lock_path(shown))
    try:
        data = lock_path(plan.spec.path).read_bytes()
    except FileNotFoundError:
        return LockStatus("missing", shown_lock, shown)
    except OSError as exc:
        return LockStatus("unreadable", shown_lock, shown,
                          problem=exc.strerror or type(exc).__name__)
    try:
        locked = parse(data)
    except LockFormatError as exc:
        return LockStatus("unreadable", shown_lock, shown, problem=str(exc))
    return compare(locked, lock_of(plan), shown_lock, shown)


def write_lock(plan: Plan) -> bool:
    """Write the lock of `plan` beside its spec (atomically: a temporary file renamed over
    it); False when the file already holds exactly these bytes (then it is not touched)."""
    path = lock_path(plan.spec.path)
    data = render(lock_of(plan))
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "xb") as fh:  # the umask's permissions, like any file the user writes
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
