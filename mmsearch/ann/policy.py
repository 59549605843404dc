"""Which ANN index to build, from the corpus size and a memory budget (pure Python: a leaf).

The rules, and why:

* **Exact (Flat) below** :data:`EXACT_MAX` **vectors.** A flat scan costs ``4·dim`` bytes
  per vector in RAM and time linear in n: at 50k × 512-d it is ~100 MB and a few ms per
  query on one core — fine, and recall is perfect. Beyond that, exact search costs more
  memory and latency than a compressed index that, with re-ranking, loses almost nothing.
* **IVF-PQ beyond it**, with:

  - ``nlist ≈ 4·√n`` rounded to a power of two (1M → 4096, 10M → 16384), the classic
    FAISS guideline: lists of ~√n/4 vectors balance the coarse-quantiser cost (nlist dot
    products per query) against the list-scanning cost (nprobe·n/nlist codes).
  - PQ codes of ``dim/8`` bytes (64 B for 512-d, 8 dimensions per sub-quantiser, 8 bits
    each). With the 8-byte id that is 72 B per vector in RAM — under the 100 B target —
    and PQ64 orders candidates well enough that re-ranking 10× more candidates than
    wanted against the stored float16 embeddings recovers recall@10 ≥ 0.95.
  - A memory budget (bytes for the whole index) halves the code size until it fits
    (64 → 32 → 16 → 8 bytes): smaller codes need a larger re-rank factor to keep recall.
  - OPQ (a learned rotation before PQ) when the codes are coarser than 8 dimensions per
    byte-sub-quantiser would allow (codes of 32 B or less for 512-d): it balances variance
    across sub-vectors, which matters most when each code byte must summarise more
    dimensions; its cost is one dim×dim matrix (1 MB) and a longer training.
  - Training on ``max(64·nlist, 100k)`` sampled vectors (capped at 500k, but never fewer
    than 40 per list, and at most n): k-means needs ≥ 39 points per centroid and gains
    little past ~64; the cap bounds training time on a CPU.
  - From :data:`HNSW_QUANTIZER_MIN_NLIST` lists (corpora of ~3M and more) the coarse
    centroids are searched through an HNSW graph (``IVF16384_HNSW32``) instead of a flat
    scan: a flat scan costs 16,384 dot products a query and, when adding 10M vectors,
    10M × 16,384 (8·10¹³ multiply-adds at 512 dimensions); the graph visits a few hundred
    centroids. It costs ``2·32`` int32 links per centroid (~0.4 B a vector at 10M). Such
    quantisers are trained by two-level k-means (:mod:`mmsearch.ann.coarse`).
  - Retrain when the corpus has grown 4× past the size the index was built for: √ of that
    doubles the ideal nlist, and the lists the quantiser was trained for grow 4× longer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from mmsearch.errors import InvalidValueError

#: From this many inverted lists the coarse quantiser is an HNSW graph over the centroids.
HNSW_QUANTIZER_MIN_NLIST = 8192
#: Links per node of that graph (faiss' HNSW ``M``; level 0 holds 2·M).
HNSW_LINKS = 32
#: Largest corpus searched exactly.
EXACT_MAX = 50_000
#: Index types a user can ask for.
INDEX_TYPES = ("auto", "flat", "ivfpq")
#: Bytes of an id stored next to each code in the inverted lists.
ID_BYTES = 8
#: Smallest PQ code (bytes) we build; below it recall collapses even with re-ranking.
MIN_CODE_BYTES = 8
#: Fewest vectors an IVF-PQ index is built for (its 256-entry codebooks need them);
#: an index asked to be IVF-PQ stays exact until the corpus reaches this size.
MIN_IVF_VECTORS = 1_000
#: Growth factor of the corpus past the build size that triggers retraining.
RETRAIN_GROWTH = 4
#: Candidates fetched per wanted hit from full-size (dim/8-byte) PQ codes and re-scored
#: exactly; coarser codes multiply it (see :func:`choose_spec`).
RERANK_FACTOR = 10


def memory_per_vector(
    dim: int,
    n: int,
    nlist: int = 0,
    code_bytes: int = 0,
    opq: bool = False,
    graph_links: int = 0,
) -> float:
    """RAM an index holds per vector: a flat index (``nlist`` 0) keeps the float32 vector
    and its id; an IVF index keeps a code and an id, plus its shared parts spread over
    ``n`` vectors: the coarse centroids, the OPQ matrix, and ``graph_links`` int32 links
    per centroid of an HNSW quantiser's level 0."""
    if nlist == 0:
        return float(4 * dim + ID_BYTES)
    shared = nlist * dim * 4 + (dim * dim * 4 if opq else 0) + nlist * graph_links * 4
    return code_bytes + ID_BYTES + shared / max(n, 1)


@dataclass(frozen=True)
class IndexSpec:
    """A chosen index configuration.

    Attributes:
        kind: ``"flat"`` or ``"ivfpq"``.
        factory: the FAISS ``index_factory`` string.
        nlist: inverted lists (0 for flat).
        pq_m: bytes per PQ code (0 for flat).
        opq: whether a learned OPQ rotation precedes PQ.
        train_size: vectors sampled to train the quantisers (0 for flat).
        rerank_factor: candidates fetched per wanted hit and re-scored exactly.
    """

    kind: str
    factory: str
    nlist: int = 0
    pq_m: int = 0
    opq: bool = False
    train_size: int = 0
    rerank_factor: int = 1

    def bytes_per_vector(self, dim: int, n: int = 1_000_000) -> float:
        """RAM per vector: code + id, plus centroids, OPQ matrix and graph spread over n."""
        links = 2 * HNSW_LINKS if self.nlist >= HNSW_QUANTIZER_MIN_NLIST else 0
        return memory_per_vector(dim, n, self.nlist, self.pq_m, self.opq, links)


def _nlist(n: int) -> int:
    """≈ 4·√n as a power of two, but at most n/39 (k-means wants ≥ 39 points a centroid)."""
    ideal = 1 << round(math.log2(4 * math.sqrt(max(n, 1))))
    most = 1 << max(0, int(math.log2(max(n // 39, 1))))
    return max(1, min(ideal, most))


def _divisor_at_most(dim: int, m: int) -> int:
    """The largest divisor of dim that is ≤ m (PQ needs equal sub-vectors)."""
    while dim % m:
        m -= 1
    return m


def choose_spec(
    n: int, dim: int, *, index_type: str = "auto", memory_budget: int | None = None
) -> IndexSpec:
    """The index for ``n`` vectors of ``dim`` dimensions.

    Args:
        n: corpus size.
        dim: vector dimension.
        index_type: ``"auto"`` (by size and budget), ``"flat"`` or ``"ivfpq"``.
        memory_budget: most bytes the index may hold in RAM, or None.

    Raises:
        InvalidValueError: unknown index type, or a budget too small for any index we build.
    """
    if index_type not in INDEX_TYPES:
        raise InvalidValueError(
            f"unknown index type {index_type!r}: choose one of {', '.join(INDEX_TYPES)}"
        )
    flat = IndexSpec("flat", "Flat")
    flat_fits = memory_budget is None or flat.bytes_per_vector(dim) * n <= memory_budget
    too_few = n < MIN_IVF_VECTORS  # PQ's 256-centroid codebooks cannot be trained on fewer
    if index_type == "flat" or too_few or (index_type == "auto" and n < EXACT_MAX and flat_fits):
        if not flat_fits:
            raise InvalidValueError(
                f"a flat index of {n} vectors needs "
                f"{_fmt(flat.bytes_per_vector(dim) * n)}, over the budget"
            )
        return flat
    nlist = _nlist(n)
    m = _divisor_at_most(dim, max(MIN_CODE_BYTES, dim // 8))
    while memory_budget is not None and _ivf_bytes(n, dim, nlist, m) > memory_budget:
        if m <= MIN_CODE_BYTES:
            need = _ivf_bytes(n, dim, nlist, MIN_CODE_BYTES)
            raise InvalidValueError(
                f"memory budget {_fmt(memory_budget)} is too small for {n} "
                f"vectors: the smallest index needs {_fmt(need)}"
            )
        m = _divisor_at_most(dim, m // 2)
    opq = m * 8 < dim  # coarser than 8 dims per code byte: rotate first
    # Coarser codes order candidates worse: fetch more of them for the exact re-rank.
    rerank = RERANK_FACTOR * max(1, (dim // 8) // m)
    hnsw = f"_HNSW{HNSW_LINKS}" if nlist >= HNSW_QUANTIZER_MIN_NLIST else ""
    factory = f"{f'OPQ{m},' if opq else ''}IVF{nlist}{hnsw},PQ{m}"
    train = min(n, max(min(max(64 * nlist, 100_000), 500_000), 40 * nlist))
    return IndexSpec("ivfpq", factory, nlist, m, opq, train, rerank)


def _ivf_bytes(n: int, dim: int, nlist: int, m: int) -> float:
    return n * memory_per_vector(dim, n, nlist, m)


def needs_retrain(built_for: int, n: int) -> bool:
    """True when the corpus grew :data:`RETRAIN_GROWTH`× past the size the IVF index was
    built (and its quantiser trained) for."""
    return n >= RETRAIN_GROWTH * max(built_for, 1)


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GiB"``, ``"100000"`` → bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise InvalidValueError(f"not a size: {text!r} (e.g. 512M, 2G)")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value <= 0:
        raise InvalidValueError(f"size must be positive: {text!r}")
    return int(value)


def _fmt(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"
