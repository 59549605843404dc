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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .catalog import Catalog
from .errors import MMSearchError
from .index_policy import IndexSpec, choose_spec, needs_retrain
from .store import EmbeddingStore
from .vectors import VectorIndex, exact_topk, tune_nprobe

logger = logging.getLogger(__name__)

#: Vectors read from the store per add() call while building (bounds RAM at 10M items).
ADD_CHUNK = 100_000
#: Held-out queries per distribution used to tune nprobe.
TUNE_QUERIES = 300
#: Default recall@10 target (after exact re-rank) that nprobe is tuned to reach.
RECALL_TARGET = 0.95


@dataclass(frozen=True)
class Settings:
    """User choices stored in the catalog's meta table (``index --index-type`` …)."""

    index_type: str = "auto"
    memory_budget: int | None = None
    recall_target: float = RECALL_TARGET

    @classmethod
    def load(cls, catalog: Catalog) -> Settings:
        budget = catalog.get_meta("memory_budget")
        target = catalog.get_meta("recall_target")
        return cls(
            index_type=catalog.get_meta("index_type") or "auto",
            memory_budget=int(budget) if budget else None,
            recall_target=float(target) if target else RECALL_TARGET,
        )

    def save(self, catalog: Catalog) -> None:
        catalog.set_meta("index_type", self.index_type)
        catalog.set_meta("memory_budget", str(self.memory_budget or ""))
        catalog.set_meta("recall_target", str(self.recall_target))


def _chunks_from_store(
    store: EmbeddingStore, ids: np.ndarray, size: int = ADD_CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk, store.get(chunk)


def search_with_rerank(
    vi: VectorIndex,
    store: EmbeddingStore,
    queries: np.ndarray,
    k: int,
    nprobe: int | None,
    factor: int,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """ids (nq, k) of the full query path: ANN candidates, then exact re-score from the
    store. ``exclude[i]`` is an id query ``i`` must not return (-1 for none)."""
    extra = 0 if exclude is None else 1
    _, cand = vi.search(queries, k * factor + extra, nprobe=nprobe)
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for i, row in enumerate(cand):
        row = row[row >= 0]
        if exclude is not None:
            row = row[row != exclude[i]]
        scores = store.get(row) @ queries[i]
        out[i, : min(k, len(row))] = row[np.argsort(-scores, kind="stable")[:k]]
    return out


class Upkeep:
    """Maintains one index directory's store and vector indexes.

    Args:
        directory: the index directory.
        catalog: its catalog.
        model: identity of the index's model.
        dim: embedding dimension.
    """

    def __init__(self, directory: Path, catalog: Catalog, model: str, dim: int) -> None:
        self.directory, self.catalog, self.model, self.dim = directory, catalog, model, dim
        self.store = EmbeddingStore(directory / "embeddings.f16", dim, model)

    def paths(self, modality: str) -> tuple[Path, Path]:
        return (
            self.directory / f"vectors-{modality}.faiss",
            self.directory / f"vectors-{modality}.json",
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

    def catch_up_store(self, modality: str) -> int:
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
        settings = Settings.load(self.catalog)
        spec = choose_spec(
            len(ids), self.dim, index_type=settings.index_type, memory_budget=settings.memory_budget
        )
        if vi is None or self._must_rebuild(vi, spec, len(ids)):
            vi = self.build(modality, ids, spec, settings.recall_target)
        else:
            added, removed = vi.sync_to(ids, self.store.get)
            logger.info("%s index topped up: +%d −%d", modality, added, removed)
        vi.manifest.generation = generation
        vi.save(index_file, manifest_file)
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
        target: float = RECALL_TARGET,
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
        """nprobe for ``target`` recall@10 on held-out corpus vectors (not their own hits)
        and, if the index holds the other modality too, on its vectors as cross-modal
        queries (their distribution is the one text→image search meets)."""
        factor = int(vi.manifest.params["rerank_factor"])
        nlist = int(vi.manifest.params["nlist"])
        results: dict[str, tuple[int, float]] = {}
        for name, qids in self._tune_queries(modality, ids, rng).items():
            queries = self.store.get(qids)
            exclude = qids if name == modality else None
            truth = exact_topk(queries, _chunks_from_store(self.store, ids), 10, exclude)

            def run(q: np.ndarray, k: int, p: int, exclude: Any = exclude) -> np.ndarray:
                return search_with_rerank(vi, self.store, q, k, p, factor, exclude)

            results[name] = tune_nprobe(run, queries, truth, nlist, 10, target)
        nprobe = max(p for p, _ in results.values())
        vi.manifest.params["nprobe"] = nprobe
        vi.manifest.params["tuned_recall"] = {k: round(r, 4) for k, (_, r) in results.items()}
        logger.info(
            "%s index: nprobe %d for recall@10 ≥ %.2f (%s)", modality, nprobe, target, results
        )

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
