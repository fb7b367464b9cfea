"""GitHub Actions `strategy.matrix` semantics, exactly (shared/reference/MATRIX.md). Pure.

1. Product of the axes in declared order, the first axis varying slowest.
2. `exclude` entries remove every product combination they match (partially: only the keys
   they name); excludes apply before includes.
3. `include` entries, in order: an entry joins every *original* combination (from the product,
   surviving exclude) where none of its pairs would overwrite an original axis value; its other
   pairs are added, and may overwrite values earlier includes added. An entry that joined no
   original becomes a new combination of its own (appended in include order); a new
   combination is never "original" for later entries.

Value equality is GitHub's expression `==` (the one its matrix filters evaluate), chosen so a
workflow author's intuition carries over: strings compare case-insensitively; values of
different types are both converted to numbers (true -> 1, false -> 0, null -> 0, "" -> 0,
"12" -> 12, "abc" -> NaN, and NaN equals nothing). So `12 == "12"`, `true == 1`,
`"design" == "DESIGN"`, but `"true" != true` ("true" is NaN as a number).

`expand()` counts before it builds: the product size is checked against `max_product`
before anything is generated, and the number of combinations against `max_combinations`
before the product is walked (`count()`: exact and cheap, since excludes and includes only
name a few axes; MatrixTooLarge carries the number).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from operator import getitem
from typing import Any

Scalar = Any  # str | int | float | bool | None
Equals = Callable[[Scalar, Scalar], bool]


def _to_number(v: Scalar) -> float:
    if v is None:
        return 0.0
    if isinstance(v, bool):
        return 1.0 if v else 0.0
    if isinstance(v, (int, float)):
        return float(v)
    text = str(v).strip()
    if not text:
        return 0.0
    try:
        if text.lower().startswith(("0x", "-0x", "+0x")):
            return float(int(text, 16))
        if text.lower() in ("infinity", "-infinity", "+infinity"):
            return float(text)
        if "_" in text or not any(c.isdigit() for c in text):
            return math.nan
        return float(text)
    except ValueError:
        return math.nan


def github_equals(a: Scalar, b: Scalar) -> bool:
    """GitHub Actions expression `a == b` (loose: case-insensitive strings, numeric coercion)."""
    if type(a) is type(b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                              and not isinstance(a, bool) and not isinstance(b, bool)):
        if isinstance(a, str):
            return a.casefold() == b.casefold()
        if isinstance(a, float) or isinstance(b, float):
            return float(a) == float(b)  # NaN != NaN
        return bool(a == b)
    return _to_number(a) == _to_number(b)  # NaN compares unequal to everything


class MatrixTooLarge(Exception):
    """The matrix would exceed a caller's cap; `what` is "product" or "combinations".

    `size` is exact unless `at_least` (then the matrix has at least `size` combinations).
    """

    def __init__(self, what: str, size: int, limit: int, at_least: bool = False) -> None:
        more = "at least " if at_least else ""
        super().__init__(f"matrix {what} has {more}{size} combinations; the limit is {limit}")
        self.what, self.size, self.limit, self.at_least = what, size, limit, at_least


@dataclass(frozen=True, slots=True)
class Combination:
    """One result combination and where it came from.

    `product_index` is its 0-based index in the product (None for a combination an include
    entry created, whose index is `created_by`); `touched_by` lists, in order, the include
    entries that added keys to an original combination.
    """

    values: Mapping[str, Scalar]
    product_index: int | None
    created_by: int | None = None
    touched_by: tuple[int, ...] = ()


assert tuple(f.name for f in fields(Combination)) == (
    "values", "product_index", "created_by", "touched_by"), "_product_combination sets them all"
_values, _product_index, _created_by, _touched_by = (
    Combination.__dict__[f.name].__set__ for f in fields(Combination))
_new = object.__new__


def _product_combination(values: Mapping[str, Scalar], product_index: int) -> Combination:
    """Combination(values, product_index): the same value without the frozen dataclass's
    __init__ (four object.__setattr__ calls, two thirds of making one; a product of a
    million combinations makes a million)."""
    c = _new(Combination)
    _values(c, values)
    _product_index(c, product_index)
    _created_by(c, None)
    _touched_by(c, ())
    return c


class ProductCombinations(Sequence[Combination]):
    """The combinations of a product that no exclude or include changed, made when read:
    the one at position i is Combination(values[i], i). Only the values are kept (a product
    of a million combinations keeps a million dicts, not also a million Combinations). Equal
    to any sequence of the same combinations."""

    __slots__ = ("values",)

    def __init__(self, values: Sequence[Mapping[str, Scalar]]) -> None:
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return tuple(self[j] for j in range(*i.indices(len(self.values))))
        n = len(self.values)
        j = i + n if i < 0 else i
        if not 0 <= j < n:
            raise IndexError("combination index out of range")
        return _product_combination(self.values[j], j)

    def __iter__(self) -> Iterator[Combination]:
        return map(_product_combination, self.values, itertools.count())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ProductCombinations({len(self)} combinations)"


@dataclass(frozen=True)
class Expansion:
    """The combinations in GitHub's order, plus the product combinations excludes removed.

    `excluded` holds (product_index, first matching exclude entry index) pairs; use
    `combination_at` to see the values of one. `combinations` is a tuple, or for a product
    that no exclude or include changed a ProductCombinations.
    """

    combinations: Sequence[Combination]
    product_size: int
    excluded: tuple[tuple[int, int], ...]
    axes: tuple[tuple[str, tuple[Scalar, ...]], ...]

    def combination_at(self, product_index: int) -> dict[str, Scalar]:
        """The axis values of the product combination with this index."""
        return combination_at(self.axes, product_index)


def product_size(axes: Sequence[tuple[str, Sequence[Scalar]]]) -> int:
    """The number of combinations in the product (0 when there are no axes)."""
    if not axes:
        return 0
    return math.prod(len(values) for _, values in axes)


def combination_at(axes: Sequence[tuple[str, Sequence[Scalar]]], index: int) -> dict[str, Scalar]:
    """The product combination at `index` (first axis slowest)."""
    out: dict[str, Scalar] = {}
    block = product_size(axes)
    for key, values in axes:
        block //= len(values)
        out[key] = values[(index // block) % len(values)]
    return out


def _masks(entry: Mapping[str, Scalar], axes: Sequence[tuple[str, Sequence[Scalar]]],
           equals: Equals) -> list[tuple[int, list[bool]]]:
    """For each axis the entry names: (axis position, which of its values match the entry)."""
    out = []
    for pos, (key, values) in enumerate(axes):
        if key in entry:
            out.append((pos, [equals(v, entry[key]) for v in values]))
    return out


# The projection of the product onto the axes that excludes name is walked to count exactly;
# above this many points `count` settles for a lower bound instead.
MAX_PROJECTION = 200_000


def count(
    axes: Sequence[tuple[str, Sequence[Scalar]]],
    include: Sequence[Mapping[str, Scalar]] = (),
    exclude: Sequence[Mapping[str, Scalar]] = (),
    equals: Equals = github_equals,
) -> tuple[int, bool]:
    """(number of combinations `expand` makes, exact?) without walking the product.

    Survivors are counted on the projection onto the axes some exclude entry names (each
    point stands for the product of the other axes' sizes); an include entry is new exactly
    when no surviving point lies in its box. When that projection has more than
    MAX_PROJECTION points, the result is a lower bound: the product minus the sizes of the
    exclude boxes (their union is no larger), with no include counted as new.
    """
    axes = [(k, tuple(v)) for k, v in axes]
    size = product_size(axes)
    axis_keys = {k for k, _ in axes}
    # An exclude naming a key that is no axis matches nothing (as in expand).
    ex_masks = [_masks(e, axes, equals) for e in exclude if all(k in axis_keys for k in e)]
    named = sorted({pos for masks in ex_masks for pos, _ in masks})
    points = math.prod(len(axes[p][1]) for p in named)
    if points > MAX_PROJECTION:
        boxes = sum(math.prod(sum(m) for _, m in masks) * size // math.prod(
            len(axes[p][1]) for p, _ in masks) for masks in ex_masks)
        return max(size - boxes, 0), False
    where = {pos: i for i, pos in enumerate(named)}
    ex_local = [[(where[pos], m) for pos, m in masks] for masks in ex_masks]
    ranges = [range(len(axes[p][1])) for p in named]
    removed = {idx for idx in itertools.product(*ranges)
               if any(all(m[idx[i]] for i, m in masks) for masks in ex_local)} if size else set()
    survivors = (points - len(removed)) * (size // points) if size else 0
    created = 0
    for entry in include:
        masks = _masks(entry, axes, equals)
        if survivors == 0 or not all(any(m) for _, m in masks):
            created += 1  # no original combination to join
            continue
        allowed: list[Sequence[int]] = [range(len(axes[p][1])) for p in named]
        for pos, m in masks:
            if pos in where:
                allowed[where[pos]] = [i for i, ok in enumerate(m) if ok]
        if all(idx in removed for idx in itertools.product(*allowed)):
            created += 1  # every combination it would join was excluded
    return survivors + created, True


def expand(
    axes: Sequence[tuple[str, Sequence[Scalar]]],
    include: Sequence[Mapping[str, Scalar]] = (),
    exclude: Sequence[Mapping[str, Scalar]] = (),
    *,
    max_product: int | None = None,
    max_combinations: int | None = None,
    equals: Equals = github_equals,
) -> Expansion:
    """Expand a matrix with GitHub's rules; raise MatrixTooLarge past a cap (nothing built).

    An exclude entry naming a key that is no axis matches nothing (GitHub rejects such a
    workflow; spec validation reports it). Axes must have at least one value each.
    """
    axes = [(k, tuple(v)) for k, v in axes]
    size = product_size(axes)
    if max_product is not None and size > max_product:
        raise MatrixTooLarge("product", size, max_product)
    if max_combinations is not None and size + len(include) > max_combinations:
        # Possibly over the cap: count before walking the product (10**6 combinations and
        # 50 includes took 23 s and 300 MB to refuse when walked).
        total, exact = count(axes, include, exclude, equals)
        if total > max_combinations:
            raise MatrixTooLarge("combinations", total, max_combinations, at_least=not exact)
    axis_keys = {k for k, _ in axes}
    ex_masks = [(_masks(e, axes, equals), all(k in axis_keys for k in e)) for e in exclude]
    inc_masks = [_masks(e, axes, equals) for e in include]
    inc_extra = [{k: v for k, v in e.items() if k not in axis_keys} for e in include]

    def matches(masks: list[tuple[int, list[bool]]], idx: tuple[int, ...]) -> bool:
        for pos, m in masks:
            if not m[idx[pos]]:
                return False
        return True

    # (A million combinations: the walk below is per combination, so it builds each one in
    # the same pass and avoids generators.)
    ex_live = [m for m, ok in ex_masks if ok]
    excluded: list[tuple[int, int]] = []
    joined = [False] * len(include)
    keys = [k for k, _ in axes]
    vals = [v for _, v in axes]
    extra_of = [bool(e) for e in inc_extra]
    inc_enum = list(enumerate(inc_masks))
    combos: list[Combination] = []
    if not axes:
        pass
    elif not ex_live and not inc_enum and not include:
        return Expansion(ProductCombinations([dict(zip(keys, combo, strict=True))
                                              for combo in itertools.product(*vals)]),
                         size, (), tuple((k, tuple(v)) for k, v in axes))
    else:
        for pidx, idx in enumerate(itertools.product(*[range(len(v)) for v in vals])):
            if ex_live:
                hit = next((j for j, (m, ok) in enumerate(ex_masks) if ok and matches(m, idx)),
                           None)
                if hit is not None:
                    excluded.append((pidx, hit))
                    continue
            values = dict(zip(keys, map(getitem, vals, idx), strict=True))
            touched: tuple[int, ...] = ()
            if inc_enum:
                touched = tuple([j for j, m in inc_enum if matches(m, idx)])
                for j in touched:
                    joined[j] = True
                    values.update(inc_extra[j])
                touched = tuple([t for t in touched if extra_of[t]])
            combos.append(Combination(values, pidx, None, touched))
    created = [j for j in range(len(include)) if not joined[j]]
    total = len(combos) + len(created)
    if max_combinations is not None and total > max_combinations:
        raise MatrixTooLarge("combinations", total, max_combinations)
    for j in created:
        combos.append(Combination(dict(include[j]), None, j, ()))
    return Expansion(tuple(combos), size, tuple(excluded), tuple((k, tuple(v)) for k, v in axes))
