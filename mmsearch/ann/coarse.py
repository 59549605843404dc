"""Training the coarse quantiser of large IVF indexes: two-level spherical k-means.

Plain k-means costs ``train · nlist · dim`` multiply-adds per iteration: for 10M vectors
(16,384 lists, 655k training vectors, d=512) that is 5.5·10¹² an iteration, 20 iterations
of which would take on the order of an hour on two CPU cores (estimated, not run).
Two-level k-means first splits the sample into ``√nlist`` clusters, then splits each of
those into a share of the ``nlist`` centroids proportional to its size: each
vector then meets ~2·√nlist centroids instead of nlist (64× less work at 16,384 lists), at
the cost of slightly less balanced lists — which the build-time nprobe tuning absorbs.

Vectors are unit length and searched by inner product, so the k-means is spherical
(centroids are re-normalised), as the inner-product coarse quantiser wants.

With faiss-gpu and a visible GPU, k-means assigns points on the GPU(s) (:func:`gpu_count`),
both here and in faiss' own training of smaller quantisers (:func:`clustering_index`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mmsearch.errors import InvalidValueError

from .library import require_faiss
from .policy import HNSW_QUANTIZER_MIN_NLIST

#: From this many lists, IVF coarse quantisers are trained with two-level k-means: the
#: same corpora whose quantiser is an HNSW graph (one threshold, stated in the policy).
TWO_LEVEL_MIN_NLIST = HNSW_QUANTIZER_MIN_NLIST
#: k-means iterations at each level.
NITER = 20


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu, or with faiss-gpu but no visible device)."""
    faiss = require_faiss()
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def clustering_index(dim: int, metric: int) -> Any | None:
    """A flat index on all GPUs for k-means to assign points with, or None without GPUs."""
    faiss = require_faiss()
    if not gpu_count():
        return None
    return faiss.index_cpu_to_all_gpus(faiss.IndexFlat(dim, metric))


def _kmeans(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids (k, dim), assignment of each row of ``x``) by spherical k-means."""
    faiss = require_faiss()
    if k <= 1:
        c = x.mean(axis=0, keepdims=True)
        return _unit(c), np.zeros(len(x), dtype=np.int64)
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=NITER,
        seed=seed,
        spherical=True,
        max_points_per_centroid=1 << 30,  # the caller already sampled
        min_points_per_centroid=1,  # small sub-clusters are expected; no warning
        gpu=gpu_count() or False,
    )
    km.train(x)
    _, assign = km.index.search(x, 1)
    return km.centroids, assign.ravel()


def _unit(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def two_level_kmeans(x: np.ndarray, nlist: int, seed: int = 1234) -> np.ndarray:
    """``nlist`` unit centroids for the rows of ``x`` (float32, unit rows).

    Each first-level cluster gets a number of second-level centroids proportional to its
    size (at least one, never more than it has points), and the counts sum to ``nlist``.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) < nlist:
        raise InvalidValueError(f"{len(x)} training vectors cannot make {nlist} centroids")
    top = max(1, round(math.sqrt(nlist)))
    _, assign = _kmeans(x, top, seed)
    sizes = np.bincount(assign, minlength=top)
    shares = _allocate(sizes, nlist)
    parts = []
    for cluster in np.flatnonzero(shares):
        members = x[assign == cluster]
        centroids, _ = _kmeans(members, int(shares[cluster]), seed + 1 + int(cluster))
        parts.append(centroids)
    return _unit(np.concatenate(parts))


def _allocate(sizes: np.ndarray, total: int) -> np.ndarray:
    """Integer shares of ``total`` proportional to ``sizes``: each non-empty cluster gets at
    least one and at most its size; the shares sum to ``total`` (≤ sizes.sum())."""
    sizes = sizes.astype(np.int64)
    shares = np.minimum(sizes, np.maximum(sizes > 0, sizes * total // max(sizes.sum(), 1)))
    # Hand out what rounding left (or take back the excess) by largest remaining capacity.
    while shares.sum() != total:
        if shares.sum() < total:
            room = np.where(shares < sizes, sizes / np.maximum(shares, 1), -1.0)
            shares[int(np.argmax(room))] += 1
        else:
            spare = np.where(shares > 1, sizes / np.maximum(shares, 1), np.inf)
            shares[int(np.argmin(spare))] -= 1
    return shares
