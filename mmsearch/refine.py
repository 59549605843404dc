"""Search sessions: a query refined over turns with relevance feedback (Rocchio).

A session starts with a query (turn 0). Each later turn adds feedback: items (or image
files) that are what is wanted (*more*), items that are not (*less*), and follow-up texts
("at night"). The query of a turn is the classic Rocchio combination of everything given
so far, normalised::

    q = α·original + β·mean(positives) − γ·mean(negatives) + δ·Σ follow-up texts

Items already marked are not shown again (unless asked), so every turn brings new hits.

The vector math (:func:`rocchio`, :func:`feedback`) is plain numpy. :class:`Session`
keeps its turns in the catalog and reaches the model and the vector index through a
:class:`SessionEngine` that the :class:`~mmsearch.index.Index` facade hands it.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .catalog_base import ExampleFile, SessionRecord, TurnRecord
from .errors import InvalidValueError, ItemNotFoundError, QueryError, SessionNotFoundError
from .query import Filters, Query, Term
from .results import Hit

if TYPE_CHECKING:  # the ORM catalog is not imported on the query path
    from .catalog import Catalog

logger = logging.getLogger(__name__)

#: What a session name may look like (it is typed on command lines and put in URLs).
NAME = re.compile(r"^[\w.:@+-]{1,100}$")


@dataclass(frozen=True)
class RocchioWeights:
    """Weights of the parts of a refined query (see the module docstring).

    The defaults were measured with ``bench/refine.py`` on the shapes domain (simulated
    users who start vague, on a corpus of another seed than the one reported): precision@10
    after three rounds was 0.378 with β = γ = 1, against 0.358 (β 0.5, γ 0.5), 0.328
    (β 0.5, γ 1) and 0.298 (β 0.5, γ 0.25); a follow-up text did as well at δ = 0.5 or 1
    and worse at 2 (see the README).

    Attributes:
        alpha: weight of the starting query.
        beta: weight of the mean of the positive examples.
        gamma: weight of the mean of the negative examples (subtracted).
        text: weight of each follow-up text.
    """

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0
    text: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(value) or value < 0:
                raise InvalidValueError(f"Rocchio weight {f.name} must be >= 0, not {value}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _unit_rows(vectors: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
    rows = np.asarray(vectors, dtype=np.float32)
    if rows.ndim == 1:
        rows = rows[None, :]
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def rocchio(
    original: np.ndarray,
    positives: np.ndarray | Sequence[np.ndarray] = (),
    negatives: np.ndarray | Sequence[np.ndarray] = (),
    texts: np.ndarray | Sequence[np.ndarray] = (),
    weights: RocchioWeights | None = None,
) -> np.ndarray:
    """The refined query vector: ``α·q + β·mean(P) − γ·mean(N) + δ·ΣT``, unit length.

    Every input row is normalised first (stored float16 embeddings are not exactly unit),
    so no example counts more than another. An empty group adds nothing.

    Args:
        original: (dim,) the starting query's vector.
        positives: (p, dim) vectors of what is wanted.
        negatives: (n, dim) vectors of what is not.
        texts: (t, dim) vectors of follow-up texts.
        weights: α, β, γ, δ (default :class:`RocchioWeights`).

    Raises:
        QueryError: the parts cancel out (nothing left to search for).
    """
    w = weights or RocchioWeights()
    total = w.alpha * _unit_rows(original)[0]
    if len(positives):
        total = total + w.beta * _unit_rows(positives).mean(axis=0)
    if len(negatives):
        total = total - w.gamma * _unit_rows(negatives).mean(axis=0)
    if len(texts):
        total = total + w.text * _unit_rows(texts).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise QueryError("the session's feedback cancels its query out: nothing to search for")
    return (total / norm).astype(np.float32)


@dataclass(frozen=True)
class Feedback:
    """Everything a session's turns said, accumulated: the latest mark of an item (or
    file) wins, so an item marked *more* and later *less* is a negative."""

    more: tuple[int, ...] = ()
    less: tuple[int, ...] = ()
    more_files: tuple[ExampleFile, ...] = ()
    less_files: tuple[ExampleFile, ...] = ()
    texts: tuple[str, ...] = ()
    text_vectors: tuple[np.ndarray, ...] = ()

    @property
    def marked(self) -> set[int]:
        """Ids of every marked item (hidden from the hits unless asked)."""
        return {*self.more, *self.less}


def feedback(turns: Iterable[TurnRecord]) -> Feedback:
    """The accumulated feedback of ``turns`` (in order)."""
    items: dict[int, str] = {}
    files: dict[str, tuple[str, ExampleFile]] = {}
    texts: list[tuple[str, np.ndarray]] = []
    for turn in turns:
        for role, ids, examples in (
            ("more", turn.more, turn.more_files),
            ("less", turn.less, turn.less_files),
        ):
            for i in ids:
                items.pop(i, None)  # re-inserted: keeps the order of the latest marks
                items[i] = role
            for f in examples:
                files.pop(f.path, None)
                files[f.path] = (role, f)
        if turn.text and turn.text_vector is not None:
            texts.append((turn.text, turn.text_vector))
    return Feedback(
        more=tuple(i for i, r in items.items() if r == "more"),
        less=tuple(i for i, r in items.items() if r == "less"),
        more_files=tuple(f for r, f in files.values() if r == "more"),
        less_files=tuple(f for r, f in files.values() if r == "less"),
        texts=tuple(t for t, _ in texts),
        text_vectors=tuple(v for _, v in texts),
    )


class SessionEngine(Protocol):
    """What a session needs from the index (the :class:`~mmsearch.index.Index` facade)."""

    @property
    def dim(self) -> int: ...

    def session_model(self) -> str:
        """Identity of the model the index's vectors come from."""
        ...

    def session_query_vector(self, query: Query) -> tuple[np.ndarray, set[int]]:
        """A query's unit vector and the ids of items it names as positive terms."""
        ...

    def session_text_vectors(self, texts: Sequence[str]) -> np.ndarray: ...

    def session_item_vectors(self, ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """Stored vectors of the items of ``ids`` that exist: (their ids, the vectors)."""
        ...

    def session_file_vector(self, path: Path) -> np.ndarray: ...

    def session_search(
        self,
        vector: np.ndarray,
        k: int,
        target: str,
        exclude: set[int],
        filters: Filters,
        query_modality: str,
    ) -> list[Hit]: ...


#: One example given as feedback: an item id, or the path of an image file.
Example = int | str | os.PathLike[str]


@dataclass(frozen=True)
class Turn:
    """One turn of a session as the API shows it.

    Attributes:
        seq: 0 for the starting query, then 1, 2, …
        created: when (seconds since the epoch).
        query: turn 0's query (terms and filters).
        text: a follow-up text.
        more: ids of items marked as wanted.
        less: ids of items marked as not wanted.
        more_files: image files given as wanted.
        less_files: image files given as not wanted.
        shown: ids of the hits the turn showed.
    """

    seq: int
    created: float
    query: Query | None = None
    text: str | None = None
    more: tuple[int, ...] = ()
    less: tuple[int, ...] = ()
    more_files: tuple[str, ...] = ()
    less_files: tuple[str, ...] = ()
    shown: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seq": self.seq, "created": self.created}
        if self.query is not None:
            out["query"] = self.query.to_dict()
        if self.text:
            out["text"] = self.text
        for name in ("more", "less", "more_files", "less_files", "shown"):
            out[name] = list(getattr(self, name))
        return out


@dataclass(frozen=True)
class SessionInfo:
    """A stored session: its name, when it was made and last used, its settings."""

    name: str
    created: float
    updated: float
    target: str
    turns: int
    weights: RocchioWeights
    k: int
    query: Query | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "created": self.created,
            "updated": self.updated,
            "target": self.target,
            "turns": self.turns,
            "weights": self.weights.to_dict(),
            "k": self.k,
        }
        if self.query is not None:
            out["query"] = self.query.to_dict()
        return out


def check_name(name: str) -> str:
    """``name`` if it can name a session (letters, digits, ``_ . : @ + -``; ≤ 100)."""
    if not isinstance(name, str) or not NAME.match(name):
        raise QueryError(
            f"{name!r} cannot name a session: use 1-100 letters, digits or _ . : @ + -"
        )
    return name


def _turn(record: TurnRecord) -> Turn:
    return Turn(
        seq=record.seq,
        created=record.created,
        query=Query.from_dict(record.query) if record.query is not None else None,
        text=record.text,
        more=record.more,
        less=record.less,
        more_files=tuple(f.path for f in record.more_files),
        less_files=tuple(f.path for f in record.less_files),
        shown=record.shown,
    )


def session_info(record: SessionRecord, first: TurnRecord | None = None) -> SessionInfo:
    """The API's view of a stored session (``first``: its turn 0, for the query)."""
    settings = dict(record.settings)
    weights = RocchioWeights(**settings.get("weights", {}))
    query = Query.from_dict(first.query) if first is not None and first.query else None
    return SessionInfo(
        name=record.name,
        created=record.created,
        updated=record.updated,
        target=record.target,
        turns=record.turns,
        weights=weights,
        k=int(settings.get("k", 10)),
        query=query,
    )


class Session:
    """A named search session stored in the index's catalog.

    Get one with :meth:`mmsearch.Index.session`::

        walk = index.session("walk")
        walk.query("a dog")                       # turn 0 (replaces a session of that name)
        walk.refine(more=[12, 31], less=[7], text="at night")
        for hit in walk.hits: ...

    Args:
        name: the session's name.
        catalog: where its turns are kept.
        engine: the index that encodes and searches.
    """

    def __init__(self, name: str, catalog: Catalog, engine: SessionEngine) -> None:
        self.name = check_name(name)
        self._catalog = catalog
        self._engine = engine
        self._hits: list[Hit] | None = None

    def __repr__(self) -> str:
        return f"Session({self.name!r})"

    # -- reading ------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        """Whether the session has been started (is stored)."""
        try:
            self._catalog.session_record(self.name)
        except SessionNotFoundError:
            return False
        return True

    def info(self) -> SessionInfo:
        """The session's settings and size.

        Raises:
            SessionNotFoundError: it was never started (or was dropped).
        """
        record = self._catalog.session_record(self.name)
        turns = self._records()
        return session_info(record, turns[0] if turns else None)

    @property
    def turns(self) -> list[Turn]:
        """The turns so far, the starting query first."""
        return [_turn(t) for t in self._records()]

    @property
    def hits(self) -> list[Hit]:
        """The hits of the latest turn (searched again when the session was opened from
        the catalog rather than run by this object)."""
        if self._hits is None:
            self._hits = self.search()
        return list(self._hits)

    def _records(self) -> list[TurnRecord]:
        return self._catalog.session_turns(self.name, self._engine.dim)

    # -- turns --------------------------------------------------------------------------

    def query(
        self,
        query: str | os.PathLike[str] | Query,
        k: int = 10,
        target: str = "image",
        weights: RocchioWeights | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:
        """Start the session with ``query`` (turn 0), replacing whatever it held.

        Args:
            query: a text, an image file (a :class:`pathlib.Path`), or a
                :class:`~mmsearch.query.Query` with terms and filters.
            k: hits per turn.
            target: ``"image"`` or ``"text"``.
            weights: the Rocchio weights of later turns (default: measured defaults).
            filters: conditions on the hits (added to a Query's own).

        Returns:
            The first hits, best first.
        """
        if k < 1:
            raise QueryError("k must be at least 1")
        parsed = _as_query(query, filters)
        vector, named = self._engine.session_query_vector(parsed)
        now = time.time()
        settings = {
            "weights": (weights or RocchioWeights()).to_dict(),
            "k": int(k),
            "exclude": sorted(named),  # items the query itself names (never hits)
        }
        record = SessionRecord(self.name, now, now, self._engine.session_model(), target, settings)
        first = TurnRecord(seq=0, created=now, query=parsed.to_dict(), query_vector=vector)
        self._catalog.start_session(record, first)
        logger.info("session %s started", self.name)
        return self._run(0)

    def refine(
        self,
        more: Sequence[Example] = (),
        less: Sequence[Example] = (),
        text: str | None = None,
        k: int | None = None,
        show_marked: bool = False,
    ) -> list[Hit]:
        """Add a turn of feedback and search again.

        Args:
            more: items (ids) or image files like what is wanted.
            less: items or image files unlike it.
            text: a follow-up text, added to the query ("at night").
            k: hits (default: the session's).
            show_marked: let items marked in any turn be shown again.

        Raises:
            SessionNotFoundError: the session was never started.
            ItemNotFoundError: an id names no item.
            QueryError: nothing given, or an image file cannot be read.
        """
        self._check_model()
        text = text.strip() if text else None
        if not more and not less and not text:
            raise QueryError("give feedback: items or images like (more) or unlike (less) "
                             "what you want, or a follow-up text")  # fmt: skip
        more_ids, more_files = self._examples(more)
        less_ids, less_files = self._examples(less)
        text_vector = self._engine.session_text_vectors([text])[0] if text else None
        turn = TurnRecord(
            seq=-1,
            created=time.time(),
            text=text,
            text_vector=text_vector,
            more=tuple(more_ids),
            less=tuple(less_ids),
            more_files=tuple(more_files),
            less_files=tuple(less_files),
        )
        seq = self._catalog.add_turn(self.name, turn)
        return self._run(seq, k, show_marked)

    def search(self, k: int | None = None, show_marked: bool = False) -> list[Hit]:
        """The hits of the session as it stands, without adding a turn."""
        self._check_model()
        record = self._catalog.session_record(self.name)
        return self._search(record, self._records(), k, show_marked)

    def drop(self) -> bool:
        """Delete the session; returns whether it existed."""
        self._hits = None
        return self._catalog.drop_session(self.name)

    # -- inside -------------------------------------------------------------------------

    def _run(self, seq: int, k: int | None = None, show_marked: bool = False) -> list[Hit]:
        record = self._catalog.session_record(self.name)
        hits = self._search(record, self._records(), k, show_marked)
        self._catalog.set_shown(self.name, seq, [h.id for h in hits])
        self._hits = hits
        return list(hits)

    def _search(
        self, record: SessionRecord, turns: list[TurnRecord], k: int | None, show_marked: bool
    ) -> list[Hit]:
        info = session_info(record, turns[0] if turns else None)
        start = turns[0] if turns else None
        if start is None or start.query_vector is None or info.query is None:
            raise QueryError(f"session {self.name!r} has no starting query: start it again")
        given = feedback(turns[1:])
        positives = [*self._stored(given.more), *(f.vector for f in given.more_files)]
        negatives = [*self._stored(given.less), *(f.vector for f in given.less_files)]
        vector = rocchio(
            start.query_vector, positives, negatives, list(given.text_vectors), info.weights
        )
        exclude = {int(i) for i in record.settings.get("exclude", ())}
        if not show_marked:
            exclude |= given.marked
        modality = "text" if any(t.kind == "text" for t in info.query.terms) else "image"
        return self._engine.session_search(
            vector, k or info.k, record.target, exclude, info.query.filters, modality
        )

    def _stored(self, ids: Sequence[int]) -> list[np.ndarray]:
        """Stored vectors of marked items; an item removed from the index since it was
        marked drops out of the feedback (with a note in the log)."""
        found, vectors = self._engine.session_item_vectors(ids)
        if len(found) < len(ids):
            gone = sorted(set(ids) - set(found))
            logger.info("session %s: items %s are gone; their marks are ignored", self.name, gone)
        return list(vectors)

    def _examples(self, given: Sequence[Example]) -> tuple[list[int], list[ExampleFile]]:
        ids: list[int] = []
        files: list[ExampleFile] = []
        for example in given:
            if isinstance(example, bool):
                raise QueryError(f"not an item id or image file: {example!r}")
            if isinstance(example, int | np.integer):
                ids.append(int(example))
                continue
            path = Path(os.path.abspath(Path(example).expanduser()))
            files.append(ExampleFile(str(path), self._engine.session_file_vector(path)))
        found = set(self._engine.session_item_vectors(ids)[0])
        missing = [i for i in ids if i not in found]
        if missing:
            raise ItemNotFoundError(missing[0])
        return ids, files

    def _check_model(self) -> None:
        record = self._catalog.session_record(self.name)
        if record.model != self._engine.session_model():
            raise QueryError(
                f"session {self.name!r} was made with another model than the index's "
                "(it was re-embedded since): start it again"
            )


def _as_query(query: str | os.PathLike[str] | Query, filters: Filters | None) -> Query:
    if isinstance(query, Query):
        parsed = query
    elif isinstance(query, str):
        if not query.strip():
            raise QueryError("empty query: give a text or an image")
        parsed = Query((Term("text", query.strip()),))
    elif isinstance(query, os.PathLike):
        parsed = Query((Term("image", os.fspath(query)),))
    else:
        raise QueryError(
            f"cannot start a session with a {type(query).__name__}: give a str, a "
            "pathlib.Path or a Query"
        )
    if filters is not None:
        own = {f.name: getattr(filters, f.name) for f in fields(filters)}
        merged = {k: v for k, v in own.items() if v not in (None, ())}
        parsed = parsed.with_filters(replace(parsed.filters, **merged))
    return parsed
