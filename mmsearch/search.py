"""Queries of every direction: vector → ANN candidates → exact re-rank → hits with metadata.

This module composes components handed to it (the catalog, a modality's vector index, a
fetch of stored embeddings); it loads no model — the caller turns a text or image into a
query vector first.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from .ann.faiss_index import VectorIndex
from .ann.query import Fetch, search_batch, search_params
from .catalog import Catalog
from .results import Hit


def search_vector(
    catalog: Catalog,
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


def hits_for(catalog: Catalog, scored: list[tuple[int, float]]) -> list[Hit]:
    """(id, score) pairs joined with the catalog's metadata; ids no longer in the catalog
    (removed since the vector index was loaded) are left out."""
    records = catalog.records(i for i, _ in scored)
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
            )
        )
    return hits
