"""Approximate nearest-neighbour search: the only package that uses faiss.

* :mod:`~mmsearch.ann.policy` — which index to build for a corpus size and memory budget
  (pure Python);
* :mod:`~mmsearch.ann.faiss_index` — one modality's FAISS index and its manifest;
* :mod:`~mmsearch.ann.coarse` — two-level k-means for large coarse quantisers;
* :mod:`~mmsearch.ann.store` — the memory-mapped float16 embeddings, for exact re-ranking;
* :mod:`~mmsearch.ann.query` — the query path: candidates, then an exact re-score;
* :mod:`~mmsearch.ann.tuning` — recall measurement and (nprobe, re-rank depth) tuning;
* :mod:`~mmsearch.ann.upkeep` — keeps the store and indexes in step with the catalog.

Import the submodules directly: this file imports nothing, so reading the policy (e.g.
``parse_size`` for the command line) does not load faiss.
"""
