"""Queries of every direction: vector → ANN candidates → exact re-rank → hits with metadata.

This module composes components (catalog, vectors) handed to it; it loads no model
itself — the caller turns a text or image into a query vector first.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .catalog import Catalog
from .results import Hit
from .vectors import VectorIndex

#: Candidates fetched per wanted hit from a compressed (IVF-PQ) index, then re-scored
#: exactly against the stored embeddings: PQ distances order neighbours only roughly.
RERANK_FACTOR = 10


def search_vector(
    catalog: Catalog,
    vectors: VectorIndex,
    query: np.ndarray,
    k: int,
    exclude: Collection[int] = (),
    nprobe: int | None = None,
    rerank_factor: int = RERANK_FACTOR,
) -> list[Hit]:
    """Top-``k`` items for one unit query vector, best first.

    Args:
        catalog: where metadata and stored embeddings come from.
        vectors: the ANN index of the target modality.
        query: (dim,) float32 unit vector.
        k: hits wanted.
        exclude: item ids never returned (e.g. the query image itself).
        nprobe: IVF lists visited (IVF indexes only); default: the index's own.
        rerank_factor: candidates per hit re-scored exactly (compressed indexes only).
    """
    if k < 1 or vectors.count == 0:
        return []
    exact = vectors.manifest.factory == "Flat"
    want = k + len(exclude)
    fetch = want if exact else want * rerank_factor
    scores, ids = vectors.search(query[None, :], fetch, nprobe=nprobe)
    keep = [
        (int(i), float(s))
        for i, s in zip(ids[0], scores[0], strict=True)
        if i >= 0 and int(i) not in exclude
    ]
    if not keep:
        return []
    if not exact:
        keep = _rerank(catalog, vectors.manifest.dim, query, [i for i, _ in keep])
    keep = keep[:k]
    records = catalog.records(i for i, _ in keep)
    hits = []
    for item_id, score in keep:
        rec = records.get(item_id)
        if rec is None:  # removed from the catalog since the index was loaded
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
            )
        )
    return hits


def _rerank(
    catalog: Catalog, dim: int, query: np.ndarray, ids: list[int]
) -> list[tuple[int, float]]:
    """Exact cosine of each candidate against its stored embedding, best first."""
    present, stored = catalog.embeddings(ids, dim)
    exact = stored @ query.astype(np.float32)
    order = np.argsort(-exact, kind="stable")
    return [(present[j], float(exact[j])) for j in order]
