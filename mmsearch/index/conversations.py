"""The ``Index`` facade's conversations with the search: sessions refined over turns,
explained compound queries, near-duplicates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..compound import CANDIDATE_FACTOR, explain_search
from ..duplicates import DEDUPE_DEPTH, collapse, find_groups
from ..duplicates import DEFAULT_THRESHOLD as DUPLICATE_THRESHOLD
from ..errors import QueryError
from ..explain import DEFAULT_COMBINE, DEFAULT_RELATIONS, parse_compound
from ..nearcopy import DEFAULT_PIXEL_THRESHOLD
from ..query import Filters, Query
from ..refine import Session, SessionInfo, session_info
from ..refine import check_name as check_session_name
from ..results import DuplicateGroup, Explanation, Hit
from ..search import combine

if TYPE_CHECKING:
    from .facade import Index


class ConversationMethods:
    """Mixed into :class:`~mmsearch.index.Index`."""

    # -- search sessions (relevance feedback over turns; see mmsearch.refine) ------------

    def session(self, name: str) -> Session:
        """The search session ``name`` (stored in the catalog): start it with
        ``.query(...)``, continue it with ``.refine(more=..., less=..., text=...)``."""
        return Session(name, self.catalog, _SessionEngine(self))

    def sessions(self) -> list[SessionInfo]:
        """Every stored session, most recently used first."""
        return [session_info(r) for r in self.catalog.list_sessions()]

    def drop_session(self, name: str) -> bool:
        """Delete session ``name``; returns whether it existed."""
        return self.catalog.drop_session(check_session_name(name))

    # -- compound queries and near-duplicates --------------------------------------------

    def explain(
        self,
        text: str,
        k: int = 10,
        target: str | None = None,
        combine: str = DEFAULT_COMBINE,
        relations: str = DEFAULT_RELATIONS,
        nprobe: int | None = None,
        filters: Filters | None = None,
        candidates: int = CANDIDATE_FACTOR,
        dedupe: bool = False,
    ) -> Explanation:
        """A compound text query, split into parts (:mod:`mmsearch.explain`): candidates
        for the whole query and for each positive part, ranked by ``combine`` of the whole
        query's score and the parts' scores, each hit with its score on every part.

        Args:
            text: e.g. "a red circle left of a blue square, without green".
            k: number of hits.
            target: ``"image"`` or ``"text"``.
            combine: ``mean``, ``min``, ``softmin``, ``geomean`` or ``whole``.
            relations: ``keep`` a relation with both its objects, ``split`` before it, or
                keep only the ``objects``.
            nprobe: IVF lists to visit (compressed indexes only).
            filters: conditions on the hits (``min_score`` applies to the combination).
            candidates: candidates per query vector, as a multiple of ``k``.
            dedupe: fold near-duplicates of a better hit into it (as :meth:`search`).

        Raises:
            QueryError: an empty query, only negative parts, an unknown mode.
        """
        compound = parse_compound(text, relations)
        target, ready = self._check_search(target, k)
        parts = [p.to_dict() for p in compound.parts]
        if not ready:
            return Explanation(text, compound.whole, parts, combine, [])
        encoded = self._encode_query("text", [compound.whole, *(p.text for p in compound.parts)])
        keeper = self._upkeep()
        hits = explain_search(
            self._reads,
            self.vectors(target),
            keeper.fetch if keeper else (lambda ids: np.zeros((0, self.dim), np.float32)),
            encoded[0],
            encoded[1:],
            np.array([p.negative for p in compound.parts], dtype=bool),
            k * DEDUPE_DEPTH if dedupe else k,
            filters or Filters(),
            nprobe=nprobe,
            combine=combine,
            candidates=candidates,
        )
        if dedupe and keeper is not None and target == "image":
            hits = collapse(hits, keeper.fetch)
        return Explanation(text, compound.whole, parts, combine, hits[:k])

    def duplicates(
        self,
        threshold: float = DUPLICATE_THRESHOLD,
        pixel_threshold: float | None = DEFAULT_PIXEL_THRESHOLD,
    ) -> list[DuplicateGroup]:
        """Groups of near-duplicate images, largest first, the suggested keeper (most
        pixels, then oldest) first in each. Nothing is deleted.

        Args:
            threshold: least embedding cosine of a candidate pair.
            pixel_threshold: least thumbprint similarity of a pair's files (None: trust
                the embeddings alone; see :mod:`mmsearch.nearcopy` for why not).
        """
        self._check_reembed_done()
        keeper = self._upkeep()
        if keeper is None or not self.catalog.count("image"):
            return []
        return find_groups(
            self._reads, self.vectors("image"), keeper.fetch, threshold, pixel_threshold
        )

    def _deduped(
        self,
        query: Any,
        k: int,
        target: str | None,
        include_self: bool,
        nprobe: int | None,
        filters: Filters | None,
        lang: str | None = None,
        text_encoder: str | None = None,
    ) -> list[Hit]:
        """:meth:`search` with near-duplicates folded: deeper until ``k`` distinct hits."""
        keeper = self._upkeep()
        depth = k * DEDUPE_DEPTH
        while True:
            hits = self.search(
                query, depth, target, include_self, nprobe, filters, lang, text_encoder
            )
            if keeper is None or (target or "image") != "image":
                return hits[:k]
            kept = collapse(hits, keeper.fetch)
            if len(kept) >= k or len(hits) < depth or depth >= 64 * k:
                return kept[:k]
            depth *= 4


class _SessionEngine:
    """What a :class:`~mmsearch.refine.Session` needs from the index (see
    :class:`~mmsearch.refine.SessionEngine`), kept off the Index's own surface."""

    def __init__(self, index: Index) -> None:
        self._index = index

    @property
    def dim(self) -> int:
        return self._index.dim

    def session_model(self) -> str:
        info = self._index.model_info
        if info is None:
            raise QueryError("the index is empty: index something before starting a session")
        return str(info["identity"])

    def session_query_vector(self, query: Query) -> tuple[np.ndarray, set[int]]:
        self.session_model()
        self._index._check_search(None, 1)
        vectors, exclude, _ = self._index._term_vectors(query.terms)
        return combine(vectors, [t.weight for t in query.terms]), exclude

    def session_text_vectors(self, texts: Sequence[str]) -> np.ndarray:
        return self._index._encode_query("text", list(texts))

    def session_item_vectors(self, ids: Sequence[int]) -> tuple[list[int], np.ndarray]:
        return self._index.catalog.embeddings(ids, self.dim)

    def session_file_vector(self, path: Path) -> np.ndarray:
        return self._index._image_file_vector(path)[0]

    def session_search(
        self,
        vector: np.ndarray,
        k: int,
        target: str,
        exclude: set[int],
        filters: Filters,
        query_modality: str,
    ) -> list[Hit]:
        target, ready = self._index._check_search(target, k)
        if not ready:
            return []
        return self._index._search_vector(vector, k, target, exclude, None, query_modality, filters)
