"""The query language: terms, their weights, and filters (pure Python, no model, no numpy).

A query is a weighted sum of terms; a term is a text, an image file, or an indexed item::

    "a red circle"            text (weight 1)
    "2:golden retriever"      text, weight 2 (a number then a colon is a weight)
    "-0.5:grass"              text, weight -0.5
    "img:photos/q.jpg"        an image file (also: an existing file given as is)
    "id:123"                  the stored embedding of indexed item 123
    "text:img:not a path"     a literal text (``text:`` turns every prefix off)
    "\\3:10 to Yuma"          a literal text too (a leading backslash is dropped)

Prefixes combine in this order: weight, then kind (``2:img:q.jpg``, ``0.5:text:id:x``).
``--sub TERM`` negates the term's weight. The search layer turns each term into a unit
vector, adds them up with their weights and normalises the sum.

Filters narrow which items may be returned; they are plain data here and become SQL in
the catalog.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from .errors import QueryError

#: Kinds of term.
TERM_KINDS = ("text", "image", "item")
#: ``KIND:`` prefixes a term may start with, and the kind each names.
PREFIXES = {"text": "text", "img": "image", "image": "image", "id": "item"}

_WEIGHT = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+)):(.*)$", re.DOTALL)
_PREFIX = re.compile(r"^(text|img|image|id):(.*)$", re.DOTALL)


@dataclass(frozen=True)
class Term:
    """One term of a query.

    Attributes:
        kind: ``"text"``, ``"image"`` (a file path) or ``"item"`` (an indexed item's id).
        value: the text, the image's path, or the item id as a string.
        weight: its weight in the sum (negative: move away from it).
    """

    kind: str
    value: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TERM_KINDS:
            raise QueryError(f"unknown term kind {self.kind!r}: use one of {TERM_KINDS}")
        if not self.value.strip():
            raise QueryError(f"empty query: a {self.kind} term with nothing in it")
        if self.kind == "item" and not self.value.strip().isdigit():
            raise QueryError(f"id:{self.value} is not an item id (a whole number)")

    @property
    def item_id(self) -> int:
        """The id of an ``item`` term."""
        return int(self.value)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Filters:
    """Conditions an item must meet to be returned; None / empty means "any".

    Attributes:
        path_glob: glob over the image's absolute path (``*`` crosses folders); a pattern
            not starting with ``/`` or ``*`` matches at the end of any folder
            (``2023/*`` = ``*/2023/*``).
        extensions: file extensions, any of them (``jpg`` or ``.jpg``; case-insensitive).
        after: taken at or after this time (seconds since the epoch).
        before: taken before this time.
        min_width: at least this many pixels wide.
        min_height: at least this many pixels high.
        tags: tags the item must all carry (see ``mmsearch tag``).
        min_score: drop hits scoring below this cosine similarity.
        include_offline: also return items of folders the last run could not see
            (offline roots: an unplugged drive); left out by default.
        exclude_under: folders whose items are left out (the search fills it with the
            offline roots; not part of a query's stored form).
    """

    path_glob: str | None = None
    extensions: tuple[str, ...] = ()
    after: float | None = None
    before: float | None = None
    min_width: int | None = None
    min_height: int | None = None
    tags: tuple[str, ...] = ()
    min_score: float | None = None
    include_offline: bool = False
    exclude_under: tuple[str, ...] = ()

    @property
    def selects_items(self) -> bool:
        """Whether any filter other than ``min_score`` restricts the items."""
        return bool(
            self.path_glob
            or self.extensions
            or self.after is not None
            or self.before is not None
            or self.min_width
            or self.min_height
            or self.tags
            or self.exclude_under
        )

    def glob(self) -> str | None:
        """The path pattern as matched against absolute paths."""
        if not self.path_glob:
            return None
        pattern = self.path_glob
        return pattern if pattern.startswith(("/", "*")) else "*/" + pattern

    def normalised_extensions(self) -> tuple[str, ...]:
        return tuple("." + e.lower().lstrip(".") for e in self.extensions if e.strip("."))

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v not in (None, ())}
        out.pop("exclude_under", None)  # filled in by the search, never stored
        if not self.include_offline:
            out.pop("include_offline")
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Filters:
        """From :meth:`to_dict`'s form (dates may be ISO strings)."""
        values = dict(data)
        for key in ("after", "before"):
            if isinstance(values.get(key), str):
                values[key] = parse_date(values[key])
        for key in ("extensions", "tags", "exclude_under"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


@dataclass(frozen=True)
class Query:
    """A weighted sum of terms, and filters on the items returned."""

    terms: tuple[Term, ...]
    filters: Filters = field(default_factory=Filters)

    def __post_init__(self) -> None:
        if not self.terms:
            raise QueryError("empty query: give a text, an image or an item")

    @classmethod
    def parse(
        cls, main: str | None = None, add: tuple[str, ...] = (), sub: tuple[str, ...] = ()
    ) -> Query:
        """The query of a command line: a main term, ``--add`` and ``--sub`` terms."""
        terms = [parse_term(t) for t in ((main,) if main is not None else ()) + tuple(add)]
        terms += [parse_term(t, sign=-1.0) for t in sub]
        return cls(tuple(terms))

    def with_filters(self, filters: Filters) -> Query:
        return replace(self, filters=filters)

    def to_dict(self) -> dict[str, Any]:
        return {"terms": [t.to_dict() for t in self.terms], "filters": self.filters.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Query:
        terms = tuple(Term(**t) for t in data.get("terms", ()))
        return cls(terms, Filters.from_dict(data.get("filters") or {}))


def parse_term(raw: str, sign: float = 1.0) -> Term:
    """Parse one term of the query language (see the module docstring).

    Args:
        raw: the term as typed.
        sign: multiplies the weight (``-1`` for ``--sub``).

    Raises:
        QueryError: an empty term, or ``id:`` without a whole number.
    """
    text, weight = raw, 1.0
    match = _WEIGHT.match(text)
    if match:
        weight, text = float(match[1]), match[2]
    if text.startswith("\\"):
        return Term("text", text[1:].strip(), sign * weight)
    match = _PREFIX.match(text)
    if match:
        return Term(PREFIXES[match[1]], match[2].strip(), sign * weight)
    if os.path.isfile(text):  # an existing file is an image; ``text:`` says otherwise
        return Term("image", text, sign * weight)
    return Term("text", text.strip(), sign * weight)


def parse_date(text: str) -> float:
    """An ISO date or date-time (``2023-06-01``, ``2023-06-01T14:30``) as seconds since
    the epoch; a time without zone is local time, as EXIF dates are."""
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError as exc:
        raise QueryError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from exc
