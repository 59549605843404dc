"""Compound text queries split into parts (pure Python: no model, no numpy).

``"two red circles left of a blue square, with a green triangle, without yellow"`` becomes

* positive parts: ``"two red circles left of a blue square"``, ``"a green triangle"``;
* a negative part: ``"yellow"``;
* the *whole* (positive) query: the positive parts joined, what a plain search looks for.

Parts are split at commas, semicolons, "and", "with", "but", "plus" and "&"; "without",
"not", "no" (also "with no", "but not", "and not") start a negative part. A spatial
relation ("left of", "above", "next to" …) is kept with its objects by default (``relations=
"keep"``: "A left of B" stays one part, so the relation is never lost); ``"split"`` makes
parts "A" and "left of B", ``"objects"`` makes "A" and "B". ``bench/explain.py`` measures
every mode and combination on the shapes domain; the defaults are to be set from it.

A hit's *combined* score (:func:`mmsearch.compound.combine_scores`) rewards matching
every positive part (see :data:`COMBINES`) minus :data:`NEGATIVE_WEIGHT` times its best
match to a negative part.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import QueryError

#: Ways to combine the whole query's score and the positive parts' scores.
COMBINES = ("mean", "min", "softmin", "geomean", "whole")
#: The default combination, chosen with ``bench/explain.py`` (README: Explain).
DEFAULT_COMBINE = "mean"
#: How relations are split: kept with both objects, split before the relation, or dropped.
RELATION_MODES = ("keep", "split", "objects")
DEFAULT_RELATIONS = "keep"
#: Temperature of the soft minimum (cosine scores of CLIP models differ by a few 0.01s).
SOFTMIN_TEMPERATURE = 0.02
#: A negative part's best score is subtracted with this weight.
NEGATIVE_WEIGHT = 0.5

#: Spatial relations, longest first so "to the left of" wins over "left of".
RELATIONS = (
    "to the left of",
    "to the right of",
    "in front of",
    "on top of",
    "left of",
    "right of",
    "next to",
    "beside",
    "behind",
    "underneath",
    "beneath",
    "under",
    "below",
    "above",
    "over",
    "near",
)
_NEGATORS = frozenset({"without", "not", "no"})
_SEPARATOR = re.compile(
    r"\s*(,|;|&|\bwith\b|\bwithout\b|\band\b|\bbut\b|\bplus\b|\bnot\b|\bno\b)\s*", re.IGNORECASE
)
_RELATION = re.compile(r"\s+(" + "|".join(re.escape(r) for r in RELATIONS) + r")\s+", re.IGNORECASE)


@dataclass(frozen=True)
class Part:
    """One part of a compound query.

    Attributes:
        text: what is encoded and scored.
        negative: a part the hits should *not* match ("without …").
        relation: the spatial relation the part holds, if any.
    """

    text: str
    negative: bool = False
    relation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"text": self.text, "negative": self.negative}
        if self.relation:
            out["relation"] = self.relation
        return out


@dataclass(frozen=True)
class Compound:
    """A text query split into parts.

    Attributes:
        text: the query as typed.
        whole: the positive parts joined: what the plain query stands for.
        parts: the parts, in the order typed (duplicates dropped).
    """

    text: str
    whole: str
    parts: tuple[Part, ...]

    @property
    def positives(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if not p.negative)

    @property
    def negatives(self) -> tuple[Part, ...]:
        return tuple(p for p in self.parts if p.negative)


def parse_compound(text: str, relations: str = DEFAULT_RELATIONS) -> Compound:
    """Split a text query into parts (see the module docstring).

    Raises:
        QueryError: an empty query, one with only negative parts, or an unknown mode.
    """
    if relations not in RELATION_MODES:
        raise QueryError(f"unknown relations mode {relations!r}: use one of {RELATION_MODES}")
    clean = " ".join(text.split())
    if not clean:
        raise QueryError("empty query: give a text")
    parts: list[Part] = []
    for segment, negative, _ in _segments(clean):
        parts.extend(_split_relation(segment.strip(" .!?"), negative, relations))
    parts = _unique([p for p in parts if p.text])
    positives = [p for p in parts if not p.negative]
    if not positives:
        raise QueryError(f"{text!r} says only what to leave out: say what to look for too")
    whole = _whole_text(clean) or " ".join(p.text for p in positives)
    return Compound(text=text, whole=whole, parts=tuple(parts))


def _split_relation(segment: str, negative: bool, mode: str) -> list[Part]:
    match = _RELATION.search(segment)
    if match is None:
        return [Part(segment, negative)]
    relation = match[1].lower()
    if mode == "keep" or negative:
        return [Part(segment, negative, relation)]
    subject, obj = segment[: match.start()].strip(), segment[match.end() :].strip()
    if not subject or not obj:
        return [Part(segment, negative, relation)]
    if mode == "split":
        return [Part(subject), Part(f"{relation} {obj}", relation=relation)]
    return [Part(subject), Part(obj)]


def _whole_text(clean: str) -> str:
    """The positive text: the query minus its negative parts, with the words that joined
    the positive parts kept ("a red circle and a blue square")."""
    out = ""
    for segment, negative, joint in _segments(clean):
        piece = segment.strip(" .!?")
        if not negative and piece:
            glue = "".join(j if j in ",;" else f" {j}" for j in joint if j.lower() not in _NEGATORS)
            out = f"{out}{glue} {piece}" if out else piece
    return out


def _segments(clean: str) -> Iterator[tuple[str, bool, list[str]]]:
    """The text between separators, each with whether it is negative and the separators
    before it. "with no X", "but not X": a negator anywhere in a run of separators counts."""
    joint: list[str] = []
    negative = False
    for token in _SEPARATOR.split(clean):
        word = token.strip().lower()
        if not word:
            continue
        if _SEPARATOR.fullmatch(token):
            negative = negative or word in _NEGATORS
            joint.append(token.strip())
            continue
        yield token, negative, joint
        joint, negative = [], False


def _unique(parts: list[Part]) -> list[Part]:
    seen: set[tuple[str, bool]] = set()
    out = []
    for part in parts:
        key = (part.text.lower(), part.negative)
        if key not in seen:
            seen.add(key)
            out.append(part)
    return out
