"""Explained compound queries: candidates for the whole query and for each part, every
candidate scored on every part, re-ranked by a combination that rewards matching all parts.

The caller encodes the texts (this module loads no model); :mod:`mmsearch.explain` splits
the query and combines the scores.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import replace

import numpy as np

from .ann.faiss_index import VectorIndex
from .ann.query import Fetch
from .errors import QueryError
from .explain import COMBINES, DEFAULT_COMBINE, NEGATIVE_WEIGHT, SOFTMIN_TEMPERATURE
from .query import Filters
from .results import Hit
from .search import CatalogReads, hits_for, search_filtered

#: Candidates taken from the index per query vector (the whole and each positive part):
#: ``k`` times this.
CANDIDATE_FACTOR = 10


def explain_search(
    catalog: CatalogReads,
    vectors: VectorIndex,
    fetch: Fetch,
    whole: np.ndarray,
    parts: np.ndarray,
    negative: np.ndarray,
    k: int,
    filters: Filters,
    exclude: Collection[int] = (),
    nprobe: int | None = None,
    combine: str = DEFAULT_COMBINE,
    candidates: int = CANDIDATE_FACTOR,
    negative_weight: float = NEGATIVE_WEIGHT,
) -> list[Hit]:
    """Top-``k`` hits by the combined score, each with its score on every part.

    Args:
        catalog: where metadata and filters come from.
        vectors: the target modality's ANN index.
        fetch: stored float32 embeddings of ids.
        whole: (dim,) unit vector of the whole (positive) query.
        parts: (p, dim) unit vectors of the parts, in the parts' order.
        negative: (p,) bool: which parts are negative.
        k: hits wanted.
        filters: conditions on the hits; ``min_score`` applies to the combined score.
        exclude: ids never returned.
        nprobe: IVF lists visited (compressed indexes).
        combine: see :func:`mmsearch.explain.combine_scores`.
        candidates: candidates per query vector, as a multiple of ``k``.
        negative_weight: weight of the best negative part's score, subtracted.
    """
    negative = np.asarray(negative, dtype=bool).reshape(-1)
    wanted = replace(filters, min_score=None)
    depth = max(k * candidates, k)
    pool: set[int] = set()
    for vec in [whole, *np.asarray(parts)[~negative]]:
        found = search_filtered(
            catalog, vectors, vec, depth, fetch, wanted, exclude, nprobe, "text"
        )
        pool.update(h.id for h in found)
    if not pool:
        return []
    ids = np.array(sorted(pool), dtype=np.int64)
    stored = fetch(ids)
    whole_scores = np.einsum("ij,j->i", stored, whole.astype(np.float32))
    part_scores = np.einsum("ij,pj->ip", stored, np.asarray(parts, dtype=np.float32))
    combined = combine_scores(
        whole_scores, part_scores[:, ~negative], part_scores[:, negative], combine,
        negative_weight,
    )  # fmt: skip
    order = np.lexsort((ids, -combined))[:k]  # best first; ties by id
    scored = [(int(ids[i]), float(combined[i])) for i in order]
    if filters.min_score is not None:
        scored = [(i, s) for i, s in scored if s >= filters.min_score]
    row = {int(ids[i]): i for i in order}
    return [
        replace(
            hit,
            query_score=round(float(whole_scores[row[hit.id]]), 6),
            part_scores=tuple(round(float(s), 6) for s in part_scores[row[hit.id]]),
        )
        for hit in hits_for(catalog, scored)
    ]


def combine_scores(
    whole: np.ndarray,
    positives: np.ndarray,
    negatives: np.ndarray | None = None,
    method: str = DEFAULT_COMBINE,
    negative_weight: float = NEGATIVE_WEIGHT,
) -> np.ndarray:
    """Combined scores of candidates.

    Args:
        whole: (n,) cosine of each candidate with the whole query.
        positives: (n, p) cosine with each positive part.
        negatives: (n, q) cosine with each negative part (q may be 0).
        method: one of :data:`COMBINES`: ``mean`` / ``min`` / ``softmin`` /
            ``geomean`` over the whole query and the positive parts, or ``whole`` (the
            plain query's score; parts shown but not used).
        negative_weight: weight of the best negative match, subtracted.

    Raises:
        QueryError: an unknown method.
    """
    if method not in COMBINES:
        raise QueryError(f"unknown combination {method!r}: use one of {', '.join(COMBINES)}")
    whole = np.asarray(whole, dtype=np.float64).reshape(-1)
    scores = np.column_stack(
        [whole, np.asarray(positives, dtype=np.float64).reshape(len(whole), -1)]
    )
    if method == "whole":
        out = whole
    elif method == "mean":
        out = scores.mean(axis=1)
    elif method == "min":
        out = scores.min(axis=1)
    elif method == "softmin":
        t = SOFTMIN_TEMPERATURE
        low = scores.min(axis=1, keepdims=True)  # shifted: exp never overflows
        out = low[:, 0] - t * np.log(np.mean(np.exp(-(scores - low) / t), axis=1))
    else:  # geomean of the scores mapped to (0, 1]: cosines may be negative
        out = 2.0 * np.exp(np.mean(np.log(np.clip((scores + 1.0) / 2.0, 1e-6, None)), axis=1)) - 1
    if negatives is not None and np.size(negatives):
        neg = np.asarray(negatives, dtype=np.float64).reshape(len(whole), -1)
        out = out - negative_weight * neg.max(axis=1)
    return out
