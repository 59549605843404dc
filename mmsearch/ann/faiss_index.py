"""FAISS indexes: one per modality, inner product on unit vectors (= cosine).

The catalog holds the truth; an index file here is a cache of it. Each index file has a
JSON manifest beside it recording the catalog generation and the model it was built
from, so a stale or foreign file is detected on open and repaired (see
:meth:`VectorIndex.sync_to`), never trusted blindly.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmsearch.errors import IndexCorruptError, StorageError

from . import integrity
from .coarse import TWO_LEVEL_MIN_NLIST, clustering_index, two_level_kmeans
from .library import require_faiss
from .policy import choose_spec, memory_per_vector

logger = logging.getLogger(__name__)


@dataclass
class Manifest:
    """What an index file was built from.

    Attributes:
        modality: ``image`` or ``text``.
        dim: vector dimension.
        model: identity of the model whose embeddings the index holds.
        generation: the catalog generation the index reflects.
        factory: the FAISS factory string it was built with.
        params: search parameters (e.g. ``nprobe``) and build facts (``trained_on``).
        catalog_id: the catalog it was derived from (a file from another index is foreign).
        count: vectors the file holds.
        file: the file's fingerprint (:func:`mmsearch.ann.integrity.fingerprint`).
    """

    modality: str
    dim: int
    model: str
    generation: int = 0
    factory: str = "Flat"
    params: dict[str, Any] = field(default_factory=dict)
    catalog_id: str = ""
    count: int = 0
    file: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """The manifest as JSON, sealed with a checksum of its content."""
        return integrity.seal(dict(self.__dict__))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Raises ValueError (bad JSON, no or wrong checksum) or TypeError (fields)."""
        return cls(**integrity.unseal(text))


#: Least candidate list of an HNSW coarse quantiser's graph search (faiss' default is 16,
#: too narrow to find the nprobe nearest of 16k centroids reliably).
HNSW_EF_SEARCH = 64


def _hnsw_quantizer(ivf: Any) -> Any:
    """The IVF index's coarse quantiser if it is an HNSW graph, else None."""
    fs = require_faiss()
    quantizer = fs.downcast_index(ivf.quantizer)
    return quantizer if isinstance(quantizer, fs.IndexHNSW) else None


def kind_of(factory: str) -> str:
    """``flat``, ``ivfpq`` or ``ivf``: how a factory string searches."""
    if factory == "Flat":
        return "flat"
    return "ivfpq" if "PQ" in factory else "ivf"


class VectorIndex:
    """One modality's ANN index with its manifest.

    Args:
        index: the FAISS index (ids are catalog item ids).
        manifest: what it holds.
    """

    def __init__(self, index: Any, manifest: Manifest) -> None:
        self.index = index
        self.manifest = manifest
        self._assigner: Any | None = None  # the centroids on the GPU(s), made when adding

    # -- creation -----------------------------------------------------------------------

    @classmethod
    def empty(
        cls,
        modality: str,
        dim: int,
        model: str,
        factory: str = "Flat",
        params: dict[str, Any] | None = None,
    ) -> VectorIndex:
        """A new empty index; an IVF index must be :meth:`train`-ed before adding."""
        fs = require_faiss()
        if factory == "Flat":
            index = fs.IndexIDMap2(fs.IndexFlatIP(dim))
        else:
            index = fs.index_factory(dim, factory, fs.METRIC_INNER_PRODUCT)
            ivf = fs.downcast_index(fs.extract_index_ivf(index))
            if hasattr(ivf, "do_polysemous_training"):
                # index_factory turns on polysemous training for IVF-PQ; it only serves
                # Hamming-filtered search, which we do not use, and costs minutes to train.
                ivf.do_polysemous_training = False
        params = dict(params or {})
        params.setdefault("kind", kind_of(factory))
        return cls(index, Manifest(modality, dim, model, 0, factory, params))

    @classmethod
    def build(
        cls,
        modality: str,
        dim: int,
        model: str,
        ids: np.ndarray,
        vectors: np.ndarray,
        factory: str | None = None,
        params: dict[str, Any] | None = None,
        seed: int = 1234,
    ) -> VectorIndex:
        """Build an index over ``vectors`` (float32, unit rows) labelled with ``ids``."""
        if factory is None:
            spec = choose_spec(len(ids), dim)
            factory = spec.factory
            params = {"kind": spec.kind, "nlist": spec.nlist, **(params or {})}
        vi = cls.empty(modality, dim, model, factory, params)
        if not vi.is_trained:
            vi.train(vectors, seed=seed)
        vi.add(ids, vectors)
        return vi

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, vectors: np.ndarray, max_train: int = 200_000, seed: int = 1234) -> None:
        """Train the quantisers on (a random sample of at most ``max_train``) vectors.

        Large coarse quantisers (≥ :data:`~mmsearch.coarse.TWO_LEVEL_MIN_NLIST` lists) get
        their centroids from two-level k-means first (in the output space of a pre-transform
        such as OPQ, trained first); faiss then sees a filled quantiser, skips its own (flat,
        far slower) k-means and trains only what is left (the PQ).
        """
        fs = require_faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(x) > max_train:
            rng = np.random.default_rng(seed)
            x = x[np.sort(rng.choice(len(x), max_train, replace=False))]
        ivf = None if self.manifest.factory == "Flat" else fs.extract_index_ivf(self.index)
        gpu_index = None
        if ivf is not None and ivf.nlist >= TWO_LEVEL_MIN_NLIST:
            xt = self._pre_transform(x, train=True)  # e.g. OPQ: cluster rotated vectors
            ivf.quantizer.reset()
            ivf.quantizer.add(two_level_kmeans(xt, ivf.nlist, seed))
            self.manifest.params["coarse_training"] = "two-level"
        elif ivf is not None:
            gpu_index = clustering_index(ivf.d, ivf.metric_type)
            if gpu_index is not None:  # faiss' own k-means, assigning on the GPU(s)
                ivf.clustering_index = gpu_index
                self.manifest.params["coarse_training"] = "gpu"
        self.index.train(x)
        if gpu_index is not None:
            ivf.clustering_index = None  # free the GPU copy; it is not part of the index
        self.manifest.params["trained_on"] = int(len(x))

    def _pre_transform(self, x: np.ndarray, train: bool = False) -> np.ndarray:
        """``x`` through the index's pre-transforms (e.g. OPQ), training them first if
        ``train``; ``x`` itself when there are none."""
        fs = require_faiss()
        if not isinstance(self.index, fs.IndexPreTransform):
            return x
        for i in range(self.index.chain.size()):
            transform = self.index.chain.at(i)
            if train and not transform.is_trained:
                transform.train(x)
            x = transform.apply(x)
        return np.ascontiguousarray(x, dtype=np.float32)

    # -- contents -----------------------------------------------------------------------

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def bytes_per_vector(self) -> float:
        """RAM held per vector: codes + id, plus the coarse centroids spread over all."""
        fs = require_faiss()
        dim = self.manifest.dim
        if self.manifest.factory == "Flat":
            return memory_per_vector(dim, self.count)
        ivf = fs.extract_index_ivf(self.index)
        hnsw = _hnsw_quantizer(ivf)
        links = hnsw.hnsw.nb_neighbors(0) if hnsw is not None else 0
        opq = isinstance(self.index, fs.IndexPreTransform)
        return memory_per_vector(dim, self.count, ivf.nlist, ivf.code_size, opq, links)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add vectors under their ids. With faiss-gpu and a GPU, an IVF index assigns them
        to lists on the GPU (the n × nlist products that dominate adding) and encodes them
        on the CPU; the result is the same index."""
        if len(ids) == 0:
            return
        fs = require_faiss()
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        labels = np.ascontiguousarray(ids, dtype=np.int64)
        assigner = self._gpu_assigner()
        if assigner is None:
            self.index.add_with_ids(x, labels)
            return
        x = self._pre_transform(x)
        _, lists = assigner.search(x, 1)
        ivf = fs.extract_index_ivf(self.index)
        ivf.add_core(len(x), fs.swig_ptr(x), fs.swig_ptr(labels), fs.swig_ptr(lists.ravel()))
        self.index.ntotal = ivf.ntotal

    def _gpu_assigner(self) -> Any | None:
        """A flat index of the IVF centroids on the GPU(s), or None (flat index, no GPU)."""
        if self.manifest.factory == "Flat":
            return None
        if self._assigner is not None:
            return self._assigner
        fs = require_faiss()
        ivf = fs.extract_index_ivf(self.index)
        gpu_index = clustering_index(ivf.d, ivf.metric_type)
        if gpu_index is not None:
            gpu_index.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
            self._assigner = gpu_index
        return gpu_index

    def remove(self, ids: Iterable[int]) -> int:
        arr = np.fromiter((int(i) for i in ids), dtype=np.int64)
        if len(arr) == 0:
            return 0
        return int(self.index.remove_ids(arr))

    def ids(self) -> np.ndarray:
        """Every id held, sorted."""
        fs = require_faiss()
        if isinstance(self.index, fs.IndexIDMap2 | fs.IndexIDMap):
            return np.sort(fs.vector_to_array(self.index.id_map).astype(np.int64))
        ivf = fs.extract_index_ivf(self.index)
        invlists = ivf.invlists
        parts = []
        for list_no in range(ivf.nlist):
            size = invlists.list_size(list_no)
            if size:
                ptr = invlists.get_ids(list_no)
                parts.append(fs.rev_swig_ptr(ptr, size).copy())
                invlists.release_ids(list_no, ptr)
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)

    def ids_in_order(self) -> np.ndarray:
        """Ids of an exact (ID-mapped) index in storage order."""
        fs = require_faiss()
        return fs.vector_to_array(self.index.id_map).astype(np.int64)

    def reconstruct_all(self) -> np.ndarray:
        """Every vector of an exact index, in storage order (float32)."""
        fs = require_faiss()
        inner = fs.downcast_index(self.index.index)
        return inner.reconstruct_n(0, inner.ntotal)

    # -- search -------------------------------------------------------------------------

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, ids) per query row; missing slots have id -1."""
        fs = require_faiss()
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.manifest.dim)
        k = max(1, min(int(k), max(self.count, 1)))
        probe = nprobe or self.manifest.params.get("nprobe")
        if probe and self.manifest.factory != "Flat":  # nprobe applies to IVF only
            ivf = fs.extract_index_ivf(self.index)
            ivf.nprobe = int(probe)
            hnsw = _hnsw_quantizer(ivf)
            if hnsw is not None:  # the graph search must look wider than the lists wanted
                hnsw.hnsw.efSearch = max(HNSW_EF_SEARCH, 2 * int(probe))
        scores, ids = self.index.search(q, k)
        return scores, ids

    # -- persistence --------------------------------------------------------------------

    def save(self, path: str | Path, manifest_path: str | Path) -> None:
        """Write the index and its manifest atomically (temp file, fsync, rename); the
        manifest records the file's fingerprint, taken from the temp file before rename."""
        fs = require_faiss()

        def write(tmp: str) -> None:
            fs.write_index(self.index, tmp)
            self.manifest.file = integrity.fingerprint(tmp)
            self.manifest.count = self.count

        _atomic_write(Path(path), write)
        _atomic_write(
            Path(manifest_path), lambda tmp: Path(tmp).write_text(self.manifest.to_json())
        )

    @classmethod
    def load(
        cls,
        path: str | Path,
        manifest_path: str | Path,
        catalog_id: str | None = None,
        full: bool | None = None,
    ) -> VectorIndex:
        """Read an index and its manifest, verified before they are trusted.

        Args:
            path: the FAISS file.
            manifest_path: its manifest.
            catalog_id: the catalog it must derive from (None: not checked).
            full: hash the whole file (default: small files only; see
                :mod:`mmsearch.ann.integrity`).

        Raises:
            IndexCorruptError: either file is unreadable, garbled, foreign or does not
                match the other; the message says what is wrong.
        """
        fs = require_faiss()
        try:
            manifest = Manifest.from_json(Path(manifest_path).read_text())
        except (OSError, ValueError, TypeError) as exc:
            raise IndexCorruptError(f"manifest {manifest_path}: {exc}") from exc
        if catalog_id is not None and manifest.catalog_id != catalog_id:
            raise IndexCorruptError(f"{path} was built from another catalog")
        problem = integrity.verify(path, manifest.file, full=full)
        if problem is not None:
            raise IndexCorruptError(f"{path}: {problem}")
        try:
            index = fs.read_index(str(path))
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise IndexCorruptError(f"cannot read vector index {path}: {exc}") from exc
        if index.d != manifest.dim:
            raise IndexCorruptError(f"{path}: dimension {index.d} ≠ manifest {manifest.dim}")
        if index.ntotal != manifest.count:
            raise IndexCorruptError(
                f"{path}: {index.ntotal} vectors, manifest says {manifest.count}"
            )
        return cls(index, manifest)

    # -- repair -------------------------------------------------------------------------

    def sync_to(self, catalog_ids: np.ndarray, fetch: Any) -> tuple[int, int]:
        """Make the index hold exactly ``catalog_ids``: add the missing (vectors from
        ``fetch(ids) -> float32 matrix``), remove the extra. Returns (added, removed).

        Items never change their embedding in place (a re-encoded item gets a new id), so
        comparing id sets is enough to find every difference.
        """
        have = self.ids()
        missing = np.setdiff1d(catalog_ids, have, assume_unique=True)
        extra = np.setdiff1d(have, catalog_ids, assume_unique=True)
        if len(extra):
            self.remove(extra)
        for start in range(0, len(missing), 20000):
            chunk = missing[start : start + 20000]
            self.add(chunk, fetch(chunk))
        return len(missing), len(extra)


def _atomic_write(path: Path, write: Any) -> None:
    """Write ``path`` through a temp file and a rename, so it is the old or the new file,
    never half of one. A full, read-only or failing disk raises StorageError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise StorageError.from_os_error(exc, f"writing {path.name}", path) from exc
    os.close(fd)
    try:
        write(tmp)
        integrity.make_shareable(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StorageError.from_os_error(exc, f"writing {path.name}", path) from exc
    except RuntimeError as exc:  # faiss reports a failed write (e.g. disk full) this way
        Path(tmp).unlink(missing_ok=True)
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise StorageError(path, f"writing {path.name}", f"faiss: {reason}") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (POSIX; not possible on Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
