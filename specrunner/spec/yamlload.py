"""Safe YAML loading: plain data plus a JSON path -> source position map; bombs rejected.

`load(path)` reads one YAML file and returns a `Loaded`: plain Python data (dict, list, str,
int, float, bool, None), `locs` (JSON path of every value -> Loc of the value), `key_locs`
(JSON path of every mapping entry -> Loc of its key) and `notes` (non-fatal Diagnostics).
Problems that make the file unreadable raise `errors.SpecError` with one located Diagnostic.

Behaviour, decided on purpose:
- Nodes come from PyYAML's composer over libyaml's events when available (PyYAML's own
  parser otherwise; `PARSER`), so marks are kept; values are
  constructed here, never by PyYAML's constructors, so no tag can run code.
- Rejected (SpecError): missing file, a folder, larger than MAX_BYTES, not UTF-8 (a UTF-8 BOM
  is accepted), empty or comments only, syntax errors (at PyYAML's mark), several documents,
  nesting deeper than MAX_DEPTH, more than MAX_ALIASES alias uses, more than MAX_EXPANDED nodes
  built through aliases (billion laughs fails after a few thousand nodes, in bounded memory),
  recursive aliases, non-scalar mapping keys, merge keys (`<<`).
- Collected (every one reported, in `notes` as errors): any explicit tag, core ones (`!!str`)
  and the non-specific `!` included (quoting covers every need of the spec format; no tag
  means no surprise); duplicate keys (PyYAML would keep the last silently).
- Scalars resolve like YAML 1.2's core schema: null (`~`, `null`, empty), booleans only
  `true`/`false` (any case form of those two), decimal integers (plus 0x/0o), floats
  (`1.5`, `1e3`, `.inf`, `.nan`); everything else is a string. No dates, no sexagesimal, no
  `yes`/`no`/`on`/`off`, no `_` in numbers. Mapping keys are always strings (their text).
- YAML 1.1 surprises: when a plain scalar means something different to a YAML 1.1 reader
  (PyYAML's default resolver: `NO` -> false, `0755` -> 493, `2024-01-01` -> a date,
  `1_000` -> 1000, `12:30` -> 750, while `1e3` stays text), the spec is ambiguous between
  tools, so an error note tells the user to quote it, e.g. "`NO` is the boolean false to YAML
  1.1 readers but text in YAML 1.2; quote it: "NO"". These notes use code `yaml-1.1`.
- Paths follow jsonschema's `json_path`: `$.a.b`, `$.a[0].b` (keys appended after a dot,
  verbatim). A value given by an alias is located at the alias; its descendants at their
  place inside the anchored node. Budget errors point at the outermost alias being expanded.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import yaml
from yaml.events import AliasEvent, Event
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from specrunner.errors import Diagnostic, Loc, SpecError
from specrunner.spec.suggest import missing_file_hint

MAX_BYTES = 5 * 1024 * 1024
MAX_DEPTH = 64
MAX_ALIASES = 100
MAX_EXPANDED = 10_000

_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?[0-9]+$")
_HEX = re.compile(r"^0x[0-9a-fA-F]+$")
_OCT = re.compile(r"^0o[0-7]+$")
_FLOAT = re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$")
_INF = re.compile(r"^[-+]?\.(?:inf|Inf|INF)$")
_NAN = re.compile(r"^\.(?:nan|NaN|NAN)$")
_MARK = "tag:specrunner:"  # prefix of the resolver's own (never user-visible) tags


@dataclass(frozen=True)
class Loaded:
    """A parsed YAML file: data, value positions, key positions and non-fatal notes."""

    data: Any
    locs: dict[str, Loc]
    key_locs: dict[str, Loc]
    notes: tuple[Diagnostic, ...]
    plain: dict[str, str] = field(default_factory=dict)  # path -> source text of plain scalars
    sha256: str = ""
    text: str = ""  # the decoded file, without a UTF-8 BOM: what `locs` count in


def resolve_scalar(text: str) -> Any:
    """The value of a plain scalar under specrunner's YAML 1.2-core-like rules."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return int(text)
    if _HEX.match(text):
        return int(text[2:], 16)
    if _OCT.match(text):
        return int(text[2:], 8)
    if _FLOAT.match(text):
        return float(text)
    if _INF.match(text):
        return -math.inf if text.startswith("-") else math.inf
    if _NAN.match(text):
        return math.nan
    return text


_R11 = yaml.resolver.Resolver()
_C11 = yaml.constructor.SafeConstructor()


def yaml11_value(text: str) -> Any:
    """The value a YAML 1.1 reader (PyYAML's SafeLoader) gives a plain scalar."""
    tag = _R11.resolve(ScalarNode, text, (True, False))
    construct = _C11.yaml_constructors.get(tag)
    if construct is None:  # e.g. the 1.1 `=` value tag: not constructible, so plain text
        return text
    try:
        return construct(_C11, ScalarNode(tag, text))
    except Exception:  # e.g. an impossible date such as 2024-13-45
        return text


def describe(value: Any) -> str:
    """Name a loaded value for a message: 'the boolean false', 'the number 493', 'text'."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return "text"
    return f"the {type(value).__name__} {value}"


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


# A line break as editors and YAML 1.2 count them (what Loc lines count).
LINE_BREAK = re.compile(r"\r\n|\r|\n")


class _Where:
    """Character offsets -> 1-based line:column, counting line breaks as editors and YAML 1.2
    do (\\n, \\r\\n, a lone \\r). PyYAML's own marks also count NEL, LS and PS (YAML 1.1),
    so every position is recomputed from the mark's character offset."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.starts = [0] + [m.end() for m in LINE_BREAK.finditer(text)]

    def at(self, index: int) -> Loc:
        line = bisect.bisect_right(self.starts, index)
        return Loc(self.file, line, index - self.starts[line - 1] + 1)

    def mark(self, mark: Any) -> Loc:
        return self.at(mark.index) if mark is not None else Loc(self.file, 1, 1)


class _Compose(yaml.composer.Composer):
    """PyYAML's composer, counting depth and aliases and remembering explicit tags. The
    events come from libyaml (C) when PyYAML was built with it, else from PyYAML's own
    scanner and parser: composition, and so every check here, is the same Python code."""

    def __init__(self, where: _Where) -> None:
        super().__init__()
        self.where = where
        self.depth = 0
        self.aliases = 0
        self.tag_notes: list[Diagnostic] = []
        self.alias_marks: dict[tuple[int, int], Any] = {}  # (parent id, slot) -> alias mark

    if TYPE_CHECKING:  # from the parser each composer class is mixed with
        def peek_event(self) -> Event: ...
        def dispose(self) -> None: ...

    def descend_resolver(self, current_node: Any, current_index: Any) -> None:
        pass  # no path-dependent resolution: every tag is decided in resolve()

    def ascend_resolver(self) -> None:
        pass

    def resolve(self, kind: Any, value: Any, implicit: Any) -> str:
        if kind is ScalarNode:
            return _MARK + ("plain" if implicit[0] else "quoted")
        return _MARK + ("seq" if kind is SequenceNode else "map")

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise _fatal(self.where, mark, f"more than {MAX_ALIASES} aliases", "alias-limit")
            if parent is not None:
                slot = index if isinstance(index, int) else id(index)
                self.alias_marks[(id(parent), slot)] = mark
        tag = getattr(event, "tag", None)
        if tag is not None:
            shown = tag.replace("tag:yaml.org,2002:", "!!")
            self.tag_notes.append(
                Diagnostic(
                    f"YAML tags are not allowed (found `{shown}`); remove it, and quote the "
                    "value if you mean text",
                    loc=self.where.mark(mark),
                    code="yaml-tag",
                )
            )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _fatal(self.where, mark, f"nesting deeper than {MAX_DEPTH} levels", "too-deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _PyComposer(_Compose, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):
    """Pure-Python events (marks carry character offsets)."""

    def __init__(self, text: str, where: _Where) -> None:
        yaml.reader.Reader.__init__(self, text)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _Compose.__init__(self, where)


_COMPOSERS: dict[str, Any] = {"python": _PyComposer}
try:
    from yaml._yaml import CParser as _CParser

    class _CComposer(_Compose, _CParser):
        """libyaml events: ~5x faster. Its marks count characters too, but its reader errors
        give a byte offset (converted in load())."""

        def __init__(self, text: str, where: _Where) -> None:
            _CParser.__init__(self, text)
            _Compose.__init__(self, where)

    _COMPOSERS["libyaml"] = _CComposer
except ImportError:  # PyYAML without libyaml: same results, slower
    pass
# Which event source load() uses; tests run the suite under both.
PARSER = "libyaml" if "libyaml" in _COMPOSERS else "python"


def _fatal(where: _Where, mark: Any, message: str, code: str, path: str = "$") -> SpecError:
    return SpecError([Diagnostic(message, path=path, loc=where.mark(mark), code=code)])


class _Builder:
    """Turns composed nodes into plain data, recording positions and enforcing budgets."""

    def __init__(self, where: _Where, alias_marks: dict[tuple[int, int], Any]) -> None:
        self.where = where
        self.alias_marks = alias_marks
        self.locs: dict[str, Loc] = {}
        self.key_locs: dict[str, Loc] = {}
        self.plain: dict[str, str] = {}
        self.notes: list[Diagnostic] = []
        self.seen: set[int] = set()  # node ids built once already (a second visit = alias)
        self.stack: set[int] = set()
        self.expanded = 0

    def build(self, node: Node, path: str, depth: int = 1, alias: Any = None,
              outer: Any = None) -> Any:
        """Build `node` at `path`; `alias` is the mark of the alias that led here, if any,
        `outer` the mark of the outermost alias being expanded (where budget errors point)."""
        nid = id(node)
        mark = alias or node.start_mark
        outer = outer or alias
        if nid in self.stack:
            raise _fatal(self.where, mark, "recursive alias", "alias-recursive", path)
        aliased = outer is not None or nid in self.seen
        if aliased:
            self.expanded += 1
            if self.expanded > MAX_EXPANDED:
                raise _fatal(self.where, outer or mark,
                             f"aliases expand to more than {MAX_EXPANDED} nodes", "alias-limit",
                             path)
        if depth > MAX_DEPTH:
            raise _fatal(self.where, mark, f"nesting deeper than {MAX_DEPTH} levels",
                         "too-deep", path)
        self.seen.add(nid)
        self.locs.setdefault(path, self.where.mark(mark))
        if isinstance(node, ScalarNode):
            return self._scalar(node, path, aliased)
        self.stack.add(nid)
        try:
            if isinstance(node, SequenceNode):
                return [
                    self.build(item, f"{path}[{i}]", depth + 1,
                               self.alias_marks.get((nid, i)), outer)
                    for i, item in enumerate(node.value)
                ]
            return self._mapping(cast(MappingNode, node), path, depth, outer)  # the third kind
        finally:
            self.stack.discard(nid)

    def _scalar(self, node: ScalarNode, path: str, aliased: bool) -> Any:
        if node.tag != _MARK + "plain":
            return node.value
        value = resolve_scalar(node.value)
        if not isinstance(value, str):
            self.plain[path] = node.value
        old = yaml11_value(node.value)
        if not aliased and not _same(value, old):
            text = node.value
            self.notes.append(
                Diagnostic(
                    f"`{text}` is {describe(old)} to YAML 1.1 readers but {describe(value)} "
                    f"in YAML 1.2; quote it: \"{text}\"",
                    path=path,
                    loc=self.where.mark(node.start_mark),
                    code="yaml-1.1",
                    hint=_yaml11_hint(value, old),
                )
            )
        return value

    def _mapping(self, node: MappingNode, path: str, depth: int, outer: Any) -> dict:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode):
                raise _fatal(self.where, key_node.start_mark,
                             "mapping keys must be plain names, not lists or mappings",
                             "complex-key", path)
            key = key_node.value
            if key == "<<" and key_node.tag == _MARK + "plain":
                raise _fatal(self.where, key_node.start_mark,
                             "merge keys (<<) are not supported; repeat the fields",
                             "merge-key", path)
            child = f"{path}.{key}"
            kloc = self.where.mark(key_node.start_mark)
            if key in out:
                first = self.key_locs.get(child)
                where = f" (first at line {first.line})" if first else ""
                self.notes.append(
                    Diagnostic(f"duplicate key `{key}`{where}", path=child, loc=kloc,
                               code="duplicate-key")
                )
                continue
            self.key_locs[child] = kloc
            alias = self.alias_marks.get((id(node), id(key_node)))
            out[key] = self.build(value_node, child, depth + 1, alias, outer)
        return out


def _yaml11_hint(new: Any, old: Any) -> str | None:
    if isinstance(old, bool) and isinstance(new, str):
        return f"write {str(old).lower()} if you mean the boolean"
    return None


def _read_text(path: Path, file: str) -> tuple[str, bytes]:
    def fail(message: str, code: str, loc: Loc | None = None,
             hint: str | None = None) -> SpecError:
        # Without a loc the Diagnostic is about the whole file: no position is made up.
        return SpecError([Diagnostic(message, loc=loc, code=code, file=file, hint=hint)])

    if not path.exists():
        raise fail("no such file", "file-missing",
                   hint=missing_file_hint(file, path.absolute()))
    if path.is_dir():
        raise fail("is a folder, not a spec file", "file-is-folder")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}", "file-unreadable") from None
    if len(raw) > MAX_BYTES:
        raise fail(f"file is larger than {MAX_BYTES // (1024 * 1024)} MiB", "file-too-large")
    bom = 3 if raw.startswith(b"\xef\xbb\xbf") else 0  # a UTF-8 BOM is not content
    try:
        text = raw[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[bom : bom + exc.start].decode("utf-8")  # valid up to the bad byte
        offset = bom + exc.start
        raise fail(f"file is not UTF-8 (byte 0x{raw[offset]:02x} at offset {offset})",
                   "not-utf8", _Where(file, before).at(len(before))) from None
    return text, raw


def load(path: str | Path, display: str | None = None) -> Loaded:
    """Load one YAML file safely; raise SpecError (one located Diagnostic) if unreadable.

    `display` is the file name used in Locs (default: the path as given).
    """
    p = Path(path)
    file = display if display is not None else str(path)
    text, raw = _read_text(p, file)
    where = _Where(file, text)
    composer: _Compose | None = None
    try:
        composer = _COMPOSERS[PARSER](text, where)
        root = composer.get_single_node()
    except SpecError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if "expected a single document" in str(exc.context or ""):
            raise _fatal(where, exc.problem_mark, "several YAML documents in one file; "
                         "a spec is exactly one document", "multiple-documents") from None
        message = "; ".join(x for x in (exc.context, exc.problem) if x) or "YAML syntax error"
        raise _fatal(where, mark, f"YAML syntax error: {message}", "yaml-syntax") from None
    except yaml.YAMLError as exc:  # reader errors: control characters and the like
        mark = getattr(exc, "problem_mark", None)
        if isinstance(exc, yaml.reader.ReaderError):
            index = exc.position
            if not isinstance(exc.character, int):  # libyaml: a byte offset, no character
                index = len(text.encode("utf-8")[: exc.position].decode("utf-8", "ignore"))
            loc = where.at(index)
            char = ord(text[index]) if index < len(text) else 0
            # One wording whichever parser read it (PyYAML says "special", libyaml "control").
            raise SpecError([Diagnostic("YAML syntax error: special characters are not allowed "
                                        f"(character U+{char:04X})", loc=loc,
                                        code="yaml-syntax")]) from None
        raise _fatal(where, mark, f"YAML syntax error: {exc}", "yaml-syntax") from None
    finally:
        if composer is not None:
            composer.dispose()
    if root is None:
        raise SpecError([Diagnostic("file is empty (no YAML content)", code="file-empty",
                                    file=file)])
    builder = _Builder(where, composer.alias_marks if composer else {})
    data = builder.build(root, "$")
    paths: dict[Loc | None, str] = {}  # a diagnostic may have no location
    for path_, loc in builder.locs.items():
        paths.setdefault(loc, path_)
    tag_notes = [replace(d, path=paths.get(d.loc, "$")) for d in composer.tag_notes]
    notes = sorted(tag_notes + builder.notes, key=lambda d: (d.loc, d.code))
    return Loaded(
        data=data,
        locs=builder.locs,
        key_locs=builder.key_locs,
        notes=tuple(notes),
        plain=builder.plain,
        sha256=hashlib.sha256(raw).hexdigest(),
        text=text,
    )
