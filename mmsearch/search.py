"""Queries of every direction: vector → ANN candidates → exact re-rank → hits with metadata.

This module composes components handed to it (the catalog, a modality's vector index, a
fetch of stored embeddings); it loads no model — the caller turns a text or image into a
query vector first.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from typing import Protocol

import numpy as np

from .ann.faiss_index import VectorIndex
from .ann.query import Fetch, rescore, search_batch, search_params
from .catalog_base import ItemRecord
from .errors import QueryError
from .query import Filters
from .results import Hit

#: A filter matching at most this many items is searched exactly over their stored
#: embeddings (a 20k × 512 float16 gather-and-dot is a few ms); a broader one over-fetches
#: from the ANN index.
FILTER_EXACT_MAX = 20_000
#: Over-fetch starts at this multiple of ``k / selectivity`` candidates, …
OVERFETCH_MARGIN = 3.0
#: … grows by this factor while fewer than ``k`` candidates pass, …
OVERFETCH_GROWTH = 4
#: … and gives way to the exact search past this many candidates.
OVERFETCH_MAX = 50_000
#: Stored embeddings read at a time by the exact filtered search (bounds RAM).
EXACT_CHUNK = 100_000


class CatalogReads(Protocol):
    """What a query reads from the catalog: :class:`mmsearch.catalog.Catalog` offers it,
    and so does :class:`mmsearch.catalog_reader.CatalogReader` (no SQLAlchemy)."""

    def records(self, ids: Iterable[int]) -> dict[int, ItemRecord]: ...
    def tags_of(self, ids: Iterable[int]) -> dict[int, list[tuple[str, float]]]: ...
    def filter_ids(self, modality: str, filters: Filters) -> np.ndarray: ...


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """The query vector of a weighted sum of unit term vectors, normalised.

    Raises:
        QueryError: the terms cancel out (e.g. the same term added and subtracted).
    """
    total = np.einsum("ij,i->j", np.asarray(vectors, dtype=np.float32), np.float32(weights))
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise QueryError("the query's terms cancel out: nothing left to search for")
    return (total / norm).astype(np.float32)


def search_vector(
    catalog: CatalogReads,
    vectors: VectorIndex,
    query: np.ndarray,
    k: int,
    fetch: Fetch,
    exclude: Collection[int] = (),
    nprobe: int | None = None,
    query_modality: str | None = None,
) -> list[Hit]:
    """Top-``k`` items for one unit query vector, best first.

    Args:
        catalog: where metadata comes from.
        vectors: the ANN index of the target modality.
        query: (dim,) float32 unit vector.
        k: hits wanted.
        fetch: stored float32 embeddings of item ids, for the exact re-rank.
        exclude: item ids never returned (e.g. the query image itself).
        nprobe: IVF lists visited (IVF indexes only); default: the index's tuned value.
        query_modality: ``"text"`` or ``"image"``: what the query vector came from. An IVF
            index tuned per query modality then uses that modality's nprobe and re-rank
            depth (cross-modal queries need more of both).
    """
    if k < 1 or vectors.count == 0:
        return []
    probe, factor = search_params(vectors.manifest.params, query_modality, nprobe)
    ids, scores = search_batch(
        vectors, fetch, query[None, :], k, nprobe=probe, factor=factor, exclude=[set(exclude)]
    )
    scored = [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
    return hits_for(catalog, scored)


def search_filtered(
    catalog: CatalogReads,
    vectors: VectorIndex,
    query: np.ndarray,
    k: int,
    fetch: Fetch,
    filters: Filters,
    exclude: Collection[int] = (),
    nprobe: int | None = None,
    query_modality: str | None = None,
) -> list[Hit]:
    """Top-``k`` items that pass ``filters``, best first; see :func:`search_vector`.

    Filtering never silently shrinks the list: a selective filter is searched exactly over
    the matching items' stored embeddings; a broad one over-fetches from the ANN index
    (more candidates each round) until ``k`` pass, else falls back to the exact search.
    ``filters.min_score`` then drops weak hits, which is what it asks for.
    """
    if not filters.selects_items:
        hits = search_vector(catalog, vectors, query, k, fetch, exclude, nprobe, query_modality)
        return _above(hits, filters.min_score)
    allowed = catalog.filter_ids(vectors.manifest.modality, filters)
    if len(exclude):
        allowed = allowed[~np.isin(allowed, np.fromiter(exclude, dtype=np.int64))]
    if k < 1 or len(allowed) == 0 or vectors.count == 0:
        return []
    scored = None
    if filter_strategy(vectors, len(allowed), k) == "overfetch":
        probe, factor = search_params(vectors.manifest.params, query_modality, nprobe)
        scored = _overfetch(vectors, fetch, query, k, allowed, exclude, probe, factor)
    if scored is None:
        scored = exact_among(fetch, query, allowed, k)
    return _above(hits_for(catalog, scored), filters.min_score)


def filter_strategy(vectors: VectorIndex, matching: int, k: int) -> str:
    """``"exact"`` or ``"overfetch"`` for a filter that ``matching`` items pass."""
    if vectors.manifest.params.get("kind", "flat") == "flat" or matching <= FILTER_EXACT_MAX:
        return "exact"
    if OVERFETCH_MARGIN * k * vectors.count / matching > OVERFETCH_MAX:
        return "exact"
    return "overfetch"


def _overfetch(
    vectors: VectorIndex,
    fetch: Fetch,
    query: np.ndarray,
    k: int,
    allowed: np.ndarray,
    exclude: Collection[int],
    nprobe: int | None,
    factor: int,
) -> list[tuple[int, float]] | None:
    """ANN candidates, deeper each round, until ``k`` of them are allowed; None when the
    depth outgrows :data:`OVERFETCH_MAX` first.

    The filtered top-``k`` lie about ``1/selectivity`` times deeper in the ranking than
    the unfiltered top-``k`` the index was tuned for, so the IVF lists visited grow in
    proportion to the depth (capped at all of them).
    """
    depth = math.ceil(OVERFETCH_MARGIN * k * vectors.count / len(allowed))
    nlist = int(vectors.manifest.params.get("nlist") or 1)
    base = nprobe or 1
    while depth <= OVERFETCH_MAX and depth < OVERFETCH_GROWTH * vectors.count:
        probe = min(nlist, math.ceil(base * depth / (OVERFETCH_MARGIN * k)))
        ids, scores = search_batch(
            vectors, fetch, query[None, :], depth, nprobe=probe, factor=factor,
            exclude=[set(exclude)],
        )  # fmt: skip
        keep = (ids[0] >= 0) & np.isin(ids[0], allowed)
        if keep.sum() >= k:
            found = zip(ids[0][keep][:k], scores[0][keep][:k], strict=True)
            return [(int(i), float(s)) for i, s in found]
        depth *= OVERFETCH_GROWTH
    return None


def exact_among(
    fetch: Fetch, query: np.ndarray, ids: np.ndarray, k: int
) -> list[tuple[int, float]]:
    """The exact top-``k`` of ``ids`` (sorted) by their stored embeddings."""
    best_ids = np.zeros(0, dtype=np.int64)
    best = np.zeros(0, dtype=np.float32)
    for start in range(0, len(ids), EXACT_CHUNK):
        chunk = ids[start : start + EXACT_CHUNK]
        scores, _ = rescore(fetch(chunk), query)
        best_ids = np.concatenate([best_ids, chunk])
        best = np.concatenate([best, scores])
        if len(best) > k:
            top = np.argpartition(-best, k)[:k]
            best_ids, best = best_ids[top], best[top]
    order = np.lexsort((best_ids, -best))  # best first; ties by id, deterministically
    return [(int(best_ids[i]), float(best[i])) for i in order[:k]]


def _above(hits: list[Hit], min_score: float | None) -> list[Hit]:
    return hits if min_score is None else [h for h in hits if h.score >= min_score]


def hits_for(catalog: CatalogReads, scored: list[tuple[int, float]]) -> list[Hit]:
    """(id, score) pairs joined with the catalog's metadata and tags; ids no longer in the
    catalog (removed since the vector index was loaded) are left out."""
    records = catalog.records(i for i, _ in scored)
    tags = catalog.tags_of(records)
    hits = []
    for item_id, score in scored:
        rec = records.get(item_id)
        if rec is None:
            continue
        hits.append(
            Hit(
                id=item_id,
                score=score,
                modality=rec.modality,
                path=rec.path,
                text=rec.text,
                source=rec.source,
                width=rec.width,
                height=rec.height,
                tags=tuple(t for t, _ in tags[item_id]) if item_id in tags else None,
            )
        )
    return hits
