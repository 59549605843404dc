"""Sharded IVF builds: train the quantisers once, fill shards in parallel worker processes,
merge their inverted lists into the trained index.

This is how FAISS builds large IVF indexes (its ``merge_ondisk`` demo): every shard is a
copy of one trained empty index, so a vector lands in the same list with the same code
whichever shard adds it; merging appends each shard's lists to the index's
(``faiss.merge_into`` → ``IndexIVF.merge_from``, which keeps the ids). Shards are merged in
the order they were cut, so each list ends up holding its entries in the same order as a
single-process build: the merged index answers exactly as that build does, and is tuned
the same way afterwards (:mod:`mmsearch.ann.tuning`).

Workers are processes started with ``spawn`` (faiss' OpenMP threads do not survive a
``fork``); each gets the trained index once and ``cores / workers`` threads.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

from ..config import cpu_cores
from .faiss_index import VectorIndex
from .library import require_faiss

logger = logging.getLogger(__name__)

#: Shards waiting to be merged per worker: bounds the driver's memory to a few chunks.
IN_FLIGHT_PER_WORKER = 2

_trained: Any = None  # the worker's copy of the trained empty index (serialized)


def _start_worker(trained: np.ndarray, threads: int) -> None:
    """Worker initialiser: keep the trained index; use this worker's share of the cores."""
    global _trained
    _trained = trained
    require_faiss().omp_set_num_threads(threads)


def _fill_shard(ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Worker body: a copy of the trained index holding ``vectors`` under ``ids``,
    serialized (the inverted lists are what the driver merges)."""
    fs = require_faiss()
    shard = fs.deserialize_index(_trained)
    shard.add_with_ids(
        np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64)
    )
    return fs.serialize_index(shard)


def add_sharded(
    vi: VectorIndex, chunks: Iterable[tuple[np.ndarray, np.ndarray]], workers: int
) -> None:
    """Add ``chunks`` of (ids, vectors) to the trained IVF index ``vi``: each chunk is a
    shard filled by one of ``workers`` processes, and merged into ``vi`` in chunk order.

    Args:
        vi: a trained IVF (or IVF-PQ, OPQ-rotated or not) index.
        chunks: (ids, float vectors) pairs, e.g. read from the embedding store.
        workers: worker processes.

    Raises:
        ValueError: ``vi`` is a flat index or not trained.
    """
    fs = require_faiss()
    if vi.manifest.factory == "Flat" or not vi.is_trained:
        raise ValueError("sharded adding needs a trained IVF index")
    trained = fs.serialize_index(vi.index)
    threads = max(1, cpu_cores() // workers)
    pending: deque[Future[np.ndarray]] = deque()
    shards = 0
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(trained, threads),
    ) as pool:
        for ids, vectors in chunks:
            if len(ids) == 0:
                continue
            pending.append(pool.submit(_fill_shard, ids, vectors))
            while len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                _merge(vi, pending.popleft().result())
                shards += 1
        while pending:
            _merge(vi, pending.popleft().result())
            shards += 1
    logger.info("merged %d shards from %d workers: %d vectors", shards, workers, vi.count)


def _merge(vi: VectorIndex, serialized: np.ndarray) -> None:
    """Append a shard's inverted lists to ``vi``'s (ids kept as they are)."""
    fs = require_faiss()
    shard = fs.deserialize_index(serialized)
    fs.merge_into(vi.index, shard, False)
