"""Keeping the derived caches — the float16 embedding store and the FAISS indexes — in step
with the catalog, which is the truth.

On every open of a modality's index: the store is topped up above its high-water mark; a
missing, unreadable or foreign index file is rebuilt; an index of the wrong kind for the
corpus' size (or one whose quantiser was trained on a much smaller corpus) is rebuilt; a
stale one is topped up (missing ids added, deleted ids removed). A new IVF index gets its
``nprobe`` tuned on held-out queries to reach the recall target after re-ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmsearch import config
from mmsearch.config import DEFAULT_RECALL_TARGET, IndexSettings
from mmsearch.errors import MMSearchError, StorageError

from .faiss_index import VectorIndex
from .policy import IndexSpec, choose_spec, needs_retrain
from .store import EmbeddingStore, MemoryStore
from .tuning import TuningSet, exact_topk, tune_search

logger = logging.getLogger(__name__)

#: Vectors read from the store per add() call while building (bounds RAM at 10M items).
ADD_CHUNK = 100_000
#: Held-out queries per distribution used to tune nprobe.
TUNE_QUERIES = 300


class CatalogView(Protocol):
    """What upkeep reads from the catalog (:class:`mmsearch.catalog.Catalog` offers it;
    components do not import each other, so this is stated here, not imported)."""

    def ids(self, modality: str) -> np.ndarray: ...
    def generation(self, modality: str) -> int: ...
    def settings(self) -> IndexSettings: ...
    def iter_embeddings(
        self, modality: str, dim: int, batch: int = ..., after: int = ...
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


def _chunks_from_store(
    store: EmbeddingStore, ids: np.ndarray, size: int = ADD_CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk, store.get(chunk)


class Upkeep:
    """Maintains one index directory's store and vector indexes.

    Args:
        directory: the index directory.
        catalog: its catalog.
        model: identity of the index's model.
        dim: embedding dimension.
    """

    def __init__(self, directory: Path, catalog: CatalogView, model: str, dim: int) -> None:
        self.directory, self.catalog, self.model, self.dim = directory, catalog, model, dim
        self.in_memory = False  # True once derived files could not be written
        path = directory / config.STORE_FILE
        try:
            self.store = EmbeddingStore(path, dim, model)
        except StorageError as exc:
            self.store = self._to_memory(exc)

    def _to_memory(self, exc: StorageError) -> EmbeddingStore:
        """Carry on in RAM when derived files cannot be written: queries stay answered
        from the catalog, which is the truth. Said once per process."""
        self._warn_once(exc)
        return MemoryStore(self.dim, self.model, self.directory / config.STORE_FILE)

    def paths(self, modality: str) -> tuple[Path, Path]:
        return (
            self.directory / config.VECTORS_FILE_TEMPLATE.format(modality=modality),
            self.directory / config.MANIFEST_FILE_TEMPLATE.format(modality=modality),
        )

    def reset(self) -> None:
        """Forget every derived file (after the catalog's embeddings changed in place)."""
        self.store.close()
        for path in (
            self.store.path,
            self.store.meta_path,
            *self.paths("image"),
            *self.paths("text"),
        ):
            path.unlink(missing_ok=True)
        self.store = EmbeddingStore(self.store.path, self.dim, self.model)

    def _warn_once(self, exc: StorageError) -> None:
        if not self.in_memory:
            logger.warning("%s; the vector index is kept in memory for now", exc)
            self.in_memory = True

    def catch_up_store(self, modality: str) -> int:
        try:
            return self._catch_up(modality)
        except StorageError as exc:  # rows may be half-written: start again in RAM
            self.store = self._to_memory(exc)
            return self._catch_up(modality)

    def _catch_up(self, modality: str) -> int:
        batches = self.catalog.iter_embeddings(modality, self.dim, after=self.store.mark(modality))
        return self.store.catch_up(modality, batches)

    def refresh(self, modality: str, current: VectorIndex | None) -> VectorIndex:
        """The up-to-date index of ``modality`` (``current`` is the one held in memory)."""
        self.catch_up_store(modality)
        generation = self.catalog.generation(modality)
        index_file, manifest_file = self.paths(modality)
        vi = current
        if vi is None and index_file.exists():
            try:
                vi = VectorIndex.load(index_file, manifest_file)
            except MMSearchError as exc:
                logger.warning("rebuilding the %s index: %s", modality, exc)
        if vi is not None and (vi.manifest.model != self.model or vi.manifest.dim != self.dim):
            logger.info("rebuilding the %s index: built for another model", modality)
            vi = None
        if vi is not None and vi.manifest.generation == generation:
            return vi
        ids = self.catalog.ids(modality)
        settings = self.catalog.settings()
        spec = choose_spec(
            len(ids), self.dim, index_type=settings.index_type, memory_budget=settings.memory_budget
        )
        if vi is None or self._must_rebuild(vi, spec, len(ids)):
            vi = self.build(modality, ids, spec, settings.recall_target)
        else:
            added, removed = vi.sync_to(ids, self.store.get)
            logger.info("%s index topped up: +%d −%d", modality, added, removed)
        vi.manifest.generation = generation
        if not self.in_memory:
            try:
                vi.save(index_file, manifest_file)
            except StorageError as exc:  # the index in hand is right; only saving failed
                self._warn_once(exc)
        return vi

    @staticmethod
    def _must_rebuild(vi: VectorIndex, spec: IndexSpec, n: int) -> bool:
        """A different kind is wanted (the corpus crossed a size threshold, or the user
        asked), or the quantiser was trained on a corpus much smaller than today's."""
        if vi.manifest.params.get("kind", "flat") != spec.kind:
            return True
        built_for = vi.manifest.params.get("built_for")
        return spec.kind != "flat" and built_for is not None and needs_retrain(built_for, n)

    def build(
        self,
        modality: str,
        ids: np.ndarray,
        spec: IndexSpec,
        target: float = DEFAULT_RECALL_TARGET,
        seed: int = 1234,
    ) -> VectorIndex:
        """Build ``modality``'s index from the store, streaming; tune nprobe if IVF."""
        params: dict[str, Any] = {
            "kind": spec.kind,
            "rerank_factor": spec.rerank_factor,
            "built_for": int(len(ids)),
        }
        if spec.kind != "flat":
            params.update(nlist=spec.nlist, pq_m=spec.pq_m, opq=spec.opq)
        vi = VectorIndex.empty(modality, self.dim, self.model, spec.factory, params)
        rng = np.random.default_rng(seed)
        if not vi.is_trained:
            sample = np.sort(rng.choice(ids, min(spec.train_size, len(ids)), replace=False))
            logger.info("training %s on %d of %d vectors", spec.factory, len(sample), len(ids))
            vi.train(self.store.get(sample), max_train=len(sample), seed=seed)
        for chunk, vecs in _chunks_from_store(self.store, ids):
            vi.add(chunk, vecs)
        if spec.kind != "flat" and len(ids):
            self._tune(vi, modality, ids, target, rng)
        return vi

    def _tune(
        self,
        vi: VectorIndex,
        modality: str,
        ids: np.ndarray,
        target: float,
        rng: np.random.Generator,
    ) -> None:
        """Tune on held-out corpus vectors (not their own hits) and, if the index holds the
        other modality too, on its vectors as cross-modal queries (their distribution is the
        one text→image search meets)."""
        sets = {}
        for name, qids in self._tune_queries(modality, ids, rng).items():
            queries = self.store.get(qids)
            exclude = qids if name == modality else None
            truth = exact_topk(queries, _chunks_from_store(self.store, ids), 10, exclude)
            sets[name] = TuningSet(queries, truth, exclude)
        choice = tune_search(vi, self.store, sets, target)
        vi.manifest.params.update(choice.params())
        logger.info("%s index tuned: %s", modality, choice)

    def _tune_queries(
        self, modality: str, ids: np.ndarray, rng: np.random.Generator
    ) -> dict[str, np.ndarray]:
        out = {modality: np.sort(rng.choice(ids, min(TUNE_QUERIES, len(ids)), replace=False))}
        other = "text" if modality == "image" else "image"
        other_ids = self.catalog.ids(other)
        if len(other_ids):
            self.catch_up_store(other)
            out[other] = np.sort(
                rng.choice(other_ids, min(TUNE_QUERIES, len(other_ids)), replace=False)
            )
        return out
