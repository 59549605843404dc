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
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mmsearch import config
from mmsearch.config import DEFAULT_RECALL_TARGET, IndexSettings
from mmsearch.errors import IndexCorruptError, MMSearchError, StorageError
from mmsearch.results import CheckProblem

from .faiss_index import VectorIndex
from .policy import IndexSpec, choose_spec, needs_retrain
from .query import Fetch
from .sharded import add_sharded
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

    catalog_id: str

    def ids(self, modality: str) -> np.ndarray: ...
    def count(self, modality: str | None = None) -> int: ...
    def embeddings(
        self, ids: Sequence[int], dim: int, modality: str | None = None
    ) -> tuple[list[int], np.ndarray]: ...
    def generation(self, modality: str) -> int: ...
    def settings(self) -> IndexSettings: ...
    def iter_embeddings(
        self, modality: str, dim: int, batch: int = ..., after: int = ...
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


#: Store rows compared with the catalog when the store is opened: random ones, plus the
#: last ones written (where an interrupted write or a truncation shows first).
SAMPLE_ROWS, LAST_ROWS = 32, 8
#: A stored embedding is a unit vector; a row whose norm is this far from 1 is damage
#: (a truncated store reads back zeros; garbled bytes give arbitrary norms).
NORM_TOLERANCE = 0.05


def _chunks_from_store(
    fetch: Fetch, ids: np.ndarray, size: int = ADD_CHUNK
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, len(ids), size):
        chunk = ids[start : start + size]
        yield chunk, fetch(chunk)


def _not_unit(rows: np.ndarray) -> np.ndarray:
    """Mask of rows that are not unit vectors."""
    # Written as "not within" so that NaN rows (garbled float16 bytes) count as damage.
    return ~(np.abs(np.linalg.norm(rows, axis=1) - 1.0) <= NORM_TOLERANCE)


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
        self.catalog_id = catalog.catalog_id
        #: Processes that fill a large IVF index's shards in parallel (1: this process).
        self.build_workers = 1
        self.in_memory = False  # True once derived files could not be written
        #: Modalities whose index must be rebuilt: the store they were built from was
        #: found damaged, so their vectors may be too.
        self.suspect: set[str] = set()
        #: What the verification on open found and repaired (for ``mmsearch check``).
        self.repairs_on_open: list[str] = []
        self.store = self._open_store()
        if self.store.discarded is not None:
            self.repairs_on_open.append(f"store discarded: {self.store.discarded}")
        problem = self.verify_store_sample()
        if problem is not None:
            self.repairs_on_open.append(problem)
            self.repair_store(problem)

    def _open_store(self) -> EmbeddingStore:
        try:
            store = EmbeddingStore(
                self.directory / config.STORE_FILE, self.dim, self.model, self.catalog_id
            )
        except StorageError as exc:
            return self._to_memory(exc)
        if store.discarded is not None:
            self.suspect.update(config.MODALITIES)
        return store

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
        self.store = self._open_store()

    # -- the store ----------------------------------------------------------------------

    def verify_store_sample(self, seed: int | None = None) -> str | None:
        """Compare a few store rows of each modality (random ones and the last written)
        with the catalog's embeddings: what is wrong, or None."""
        # The stdlib's random, not numpy's: this runs as every query opens the index, and
        # numpy.random (with np.unique's numpy.ma) would add 0.05-0.1 s to a cold query.
        rng = random.Random(seed)
        for modality, mark in sorted(self.store.high_water.items()):
            if mark < 0:
                continue
            wanted = {rng.randrange(mark + 1) for _ in range(SAMPLE_ROWS)}
            wanted.update(range(max(0, mark - LAST_ROWS + 1), mark + 1))
            ids, truth = self.catalog.embeddings(sorted(wanted), self.dim, modality)
            if not ids:
                continue
            stored = self.store.get(np.asarray(ids, dtype=np.int64))
            bad = np.flatnonzero(np.any(stored != truth, axis=1))
            if len(bad):
                return (
                    f"{len(bad)} of {len(ids)} sampled {modality} rows differ from the "
                    f"catalog (first: item {ids[bad[0]]})"
                )
        return None

    def repair_store(self, problem: str) -> None:
        """Rebuild the store from the catalog; the vector indexes built from it are
        rebuilt on their next use."""
        logger.warning(
            "embedding store %s is damaged (%s): rebuilding it from the catalog, and the "
            "vector indexes built from it",
            self.store.path,
            problem,
        )
        self.store.close()
        self.store.path.unlink(missing_ok=True)
        self.store.meta_path.unlink(missing_ok=True)
        self.store = self._open_store()
        self.suspect.update(config.MODALITIES)
        for modality in config.MODALITIES:
            self.catch_up_store(modality)

    def fetch(self, ids: np.ndarray) -> np.ndarray:
        """Stored float32 embeddings of ``ids``, verified to be unit vectors: a damaged
        store is rebuilt from the catalog first (never a silent zero score).

        Raises:
            IndexCorruptError: the catalog's own embeddings are not unit vectors.
        """
        rows = self.store.get(ids)
        bad = _not_unit(rows)
        if not bad.any():
            return rows
        self.repair_store(f"item {int(np.asarray(ids)[bad][0])} reads back as a non-unit vector")
        rows = self.store.get(ids)
        bad = _not_unit(rows)
        if bad.any():
            raise IndexCorruptError(
                f"item {int(np.asarray(ids)[bad][0])}'s embedding in the catalog is not a unit "
                "vector: the catalog is damaged (run `mmsearch check`)"
            )
        return rows

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

    # -- vector indexes -----------------------------------------------------------------

    def must_refresh(self, modality: str) -> bool:
        """Whether the in-memory index of ``modality`` must be refreshed though its
        generation matches (the store it came from was damaged)."""
        return modality in self.suspect

    def load(self, modality: str, full: bool | None = None) -> VectorIndex:
        """The saved index of ``modality``, verified (IndexCorruptError if it is not sound)."""
        index_file, manifest_file = self.paths(modality)
        if not index_file.exists():
            raise IndexCorruptError(f"{index_file} is missing")
        vi = VectorIndex.load(index_file, manifest_file, catalog_id=self.catalog_id, full=full)
        if vi.manifest.model != self.model or vi.manifest.dim != self.dim:
            raise IndexCorruptError(f"{index_file} was built for another model")
        if vi.manifest.modality != modality:
            raise IndexCorruptError(f"{index_file} holds {vi.manifest.modality} vectors")
        return vi

    def refresh(self, modality: str, current: VectorIndex | None) -> VectorIndex:
        """The up-to-date index of ``modality`` (``current`` is the one held in memory)."""
        self.catch_up_store(modality)
        for _ in range(2):  # a second pass only if the store was repaired while building
            try:
                return self._refresh(modality, current)
            except _StoreRepaired:
                current = None
        raise IndexCorruptError("the embedding store keeps reading back damaged rows")

    def _refresh(self, modality: str, current: VectorIndex | None) -> VectorIndex:
        generation = self.catalog.generation(modality)
        index_file, manifest_file = self.paths(modality)
        vi = current
        rebuild = modality in self.suspect
        self.suspect.discard(modality)
        if rebuild:
            vi = None
        elif vi is None and (index_file.exists() or manifest_file.exists()):
            try:
                vi = self.load(modality)
            except MMSearchError as exc:
                logger.warning("rebuilding the %s index from the catalog: %s", modality, exc)
        if vi is not None and vi.manifest.generation == generation:
            if vi.count == self.catalog.count(modality):
                return vi
            logger.warning(
                "%s index holds %d vectors, the catalog %d: syncing",
                modality,
                vi.count,
                self.catalog.count(modality),
            )
        ids = self.catalog.ids(modality)
        settings = self.catalog.settings()
        spec = choose_spec(
            len(ids), self.dim, index_type=settings.index_type, memory_budget=settings.memory_budget
        )
        fetch = self._build_fetch(modality)
        if vi is None or self._must_rebuild(vi, spec, len(ids)):
            vi = self.build(modality, ids, spec, settings.recall_target, fetch=fetch)
        else:
            added, removed = vi.sync_to(ids, fetch)
            logger.info("%s index topped up: +%d −%d", modality, added, removed)
        vi.manifest.generation = generation
        vi.manifest.catalog_id = self.catalog_id
        if not self.in_memory:
            try:
                vi.save(index_file, manifest_file)
            except StorageError as exc:  # the index in hand is right; only saving failed
                self._warn_once(exc)
        return vi

    def _build_fetch(self, modality: str) -> Fetch:
        """A fetch for building ``modality``'s index that aborts the build (to restart it
        from scratch) when the store turns out damaged: vectors already added are suspect."""

        def fetch(ids: np.ndarray) -> np.ndarray:
            before = self.store
            rows = self.fetch(ids)
            if self.store is not before:  # ``modality`` stays suspect: rebuilt next pass
                raise _StoreRepaired
            return rows

        return fetch

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
        fetch: Fetch | None = None,
        workers: int | None = None,
    ) -> VectorIndex:
        """Build ``modality``'s index from the store, streaming; tune nprobe if IVF.

        With ``workers`` > 1 (default :attr:`build_workers`), an IVF index is filled in
        shards by that many processes and their inverted lists merged
        (:mod:`mmsearch.ann.sharded`): the same index, built in parallel."""
        fetch = fetch or self.fetch
        workers = workers or self.build_workers
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
            vi.train(fetch(sample), max_train=len(sample), seed=seed)
        if spec.kind != "flat" and workers > 1 and len(ids) > ADD_CHUNK:
            add_sharded(vi, _chunks_from_store(fetch, ids), workers)
        else:
            for chunk, vecs in _chunks_from_store(fetch, ids):
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
            truth = exact_topk(queries, _chunks_from_store(self.store.get, ids), 10, exclude)
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


# -- full verification (``mmsearch check``) ---------------------------------------------

#: Stored vectors searched for themselves when checking an IVF index.
CHECK_SELF_QUERIES = 200
#: Share of them that must find themselves (or an identical vector) first.
CHECK_SELF_RECALL = 0.95


def check(keeper: Upkeep, repair: bool = False) -> tuple[list[CheckProblem], dict[str, int]]:
    """Verify every derived file of ``keeper``'s index against the catalog, and with
    ``repair`` rebuild what is wrong. Returns (problems, items checked per part)."""
    problems: list[CheckProblem] = [
        CheckProblem("store", msg, repaired=True) for msg in keeper.repairs_on_open
    ]
    checked: dict[str, int] = {}
    for modality in config.MODALITIES:
        keeper.catch_up_store(modality)
    bad, rows = _check_store(keeper)
    checked["store rows"] = rows
    if bad:
        if repair:
            keeper.repair_store(bad)
        problems.append(CheckProblem("store", bad, repaired=repair))
    for modality in config.MODALITIES:
        n = keeper.catalog.count(modality)
        index_file, manifest_file = keeper.paths(modality)
        if n == 0 and not index_file.exists():
            continue
        problem = _check_vectors(keeper, modality)
        checked[f"{modality} vectors"] = n
        if problem is None:
            continue
        if repair:
            index_file.unlink(missing_ok=True)
            manifest_file.unlink(missing_ok=True)
            keeper.suspect.add(modality)
            keeper.refresh(modality, None)
            problem_after = _check_vectors(keeper, modality)
            if problem_after is not None:
                problems.append(
                    CheckProblem(modality, f"still wrong after rebuild: {problem_after}")
                )
        problems.append(CheckProblem(f"{modality} index", problem, repaired=repair))
    return problems, checked


def _check_store(keeper: Upkeep) -> tuple[str | None, int]:
    """Every store row against the catalog: what is wrong (or None), rows compared."""
    wrong, first, total = 0, None, 0
    for modality in config.MODALITIES:
        for ids, truth in keeper.catalog.iter_embeddings(modality, keeper.dim):
            written = ids <= keeper.store.mark(modality)
            stored = keeper.store.get(ids[written])
            diff = np.any(stored != truth[written], axis=1)
            total += int(written.sum())
            if diff.any():
                wrong += int(diff.sum())
                first = first if first is not None else int(ids[written][diff][0])
    if wrong:
        return f"{wrong} of {total} rows differ from the catalog (first: item {first})", total
    return None, total


def _check_vectors(keeper: Upkeep, modality: str) -> str | None:
    """``modality``'s saved index against the catalog: what is wrong, or None."""
    try:
        vi = keeper.load(modality, full=True)
    except IndexCorruptError as exc:
        return str(exc)
    if vi.manifest.generation != keeper.catalog.generation(modality):
        vi = keeper.refresh(modality, vi)  # merely stale: ordinary upkeep, not damage
    truth_ids = keeper.catalog.ids(modality)
    have = vi.ids()
    if len(have) != vi.count:
        return f"{vi.count} vectors but {len(have)} ids in its lists"
    missing = np.setdiff1d(truth_ids, have)
    extra = np.setdiff1d(have, truth_ids)
    if len(missing) or len(extra):
        return f"{len(missing)} catalog items missing, {len(extra)} ids not in the catalog"
    if vi.manifest.factory == "Flat":
        return _check_flat(keeper, vi, modality)
    return _check_self_search(keeper, vi, modality)


def _check_flat(keeper: Upkeep, vi: VectorIndex, modality: str) -> str | None:
    """Every stored vector of an exact index equals its catalog embedding."""
    held = dict(zip(vi.ids_in_order().tolist(), range(vi.count), strict=True))
    vectors = vi.reconstruct_all()
    wrong = 0
    for ids, truth in keeper.catalog.iter_embeddings(modality, keeper.dim):
        rows = vectors[[held[int(i)] for i in ids]]
        wrong += int(np.any(np.abs(rows - truth) > 1e-3, axis=1).sum())
    return f"{wrong} vectors differ from the catalog" if wrong else None


def _check_self_search(keeper: Upkeep, vi: VectorIndex, modality: str) -> str | None:
    """A sample of stored vectors, searched the way queries are, each finds itself (or an
    identical vector: duplicate content shares its embedding)."""
    from .query import search_batch, search_params

    ids = keeper.catalog.ids(modality)
    rng = np.random.default_rng(0)
    sample = np.sort(rng.choice(ids, min(CHECK_SELF_QUERIES, len(ids)), replace=False))
    found, truth = keeper.catalog.embeddings(sample.tolist(), keeper.dim, modality)
    nprobe, factor = search_params(vi.manifest.params, modality)
    hit_ids, scores = search_batch(vi, keeper.fetch, truth, 1, nprobe=nprobe, factor=factor)
    selfish = (hit_ids[:, 0] == np.asarray(found)) | (scores[:, 0] >= 1 - 1e-3)
    rate = float(selfish.mean()) if len(selfish) else 1.0
    if rate < CHECK_SELF_RECALL:
        return f"only {rate:.0%} of {len(found)} sampled vectors find themselves"
    return None


class _StoreRepaired(Exception):
    """Internal: the store was rebuilt while an index was being built from it."""
