"""Range search over a whole index: every pair of items at least ``threshold`` alike.

Each item's stored embedding queries the index for its nearest neighbours (exactly
re-scored against the stored embeddings, as user queries are); an item whose
``k``-th neighbour still passes the threshold asks again with twice the ``k``, so
every neighbour above the threshold is found, however large the group.
"""

from __future__ import annotations

import numpy as np

from .faiss_index import VectorIndex
from .query import Fetch, search_batch, search_params

#: Neighbours asked for first, per item.
FIRST_K = 16
#: Items searched at a time.
BATCH = 1024


def pairs_above(
    vi: VectorIndex, fetch: Fetch, threshold: float, first_k: int = FIRST_K
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of items whose stored embeddings have cosine ≥ ``threshold``.

    Args:
        vi: the index searched.
        fetch: stored float32 embeddings of ids.
        threshold: the least cosine similarity of a pair.
        first_k: neighbours asked for first per item (doubled while they all pass).

    Returns:
        ``(pairs, scores)``: (n, 2) int64 ids with ``pairs[:, 0] < pairs[:, 1]``, each pair
        once, and their (n,) float32 cosine similarities.
    """
    ids = vi.ids()
    found: dict[tuple[int, int], float] = {}
    nprobe, factor = search_params(vi.manifest.params, "image")
    for start in range(0, len(ids), BATCH):
        pending = ids[start : start + BATCH]
        k = max(1, first_k)
        while len(pending):
            queries = fetch(pending)
            hits, scores = search_batch(
                vi, fetch, queries, k, nprobe=nprobe, factor=factor,
                exclude=[{int(i)} for i in pending],
            )  # fmt: skip
            for row, item in enumerate(pending):
                keep = (hits[row] >= 0) & (scores[row] >= threshold)
                for other, score in zip(hits[row][keep], scores[row][keep], strict=True):
                    a, b = sorted((int(item), int(other)))
                    found[(a, b)] = float(score)
            full = (hits[:, -1] >= 0) & (scores[:, -1] >= threshold)
            pending = pending[full] if k < vi.count else pending[:0]
            k *= 2
    if not found:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.float32)
    pairs = np.array(sorted(found), dtype=np.int64)
    return pairs, np.array([found[(int(a), int(b))] for a, b in pairs], dtype=np.float32)
