"""Encoding on a Ray cluster: the catalog plans, Ray workers decode and encode, the catalog
commits.

The scan and change detection stay with the catalog (:mod:`indexer.scan`, run by
:func:`indexer.pipeline.index_images` as always): only the encoding of the planned new and
changed items is handed to Ray Data. Each worker is an actor that loads the model once
(``map_batches`` with an :class:`~ray.data.ActorPoolStrategy`), reads and decodes its batch
of files as a local run does (the encoder's feed: JPEGs on the GPU of a GPU worker; a
corrupt file comes back with the same skip reason a local run gives) and encodes it; each
row is stored under the hash of the bytes the worker encoded. The driver hashes only the
files that may hold stored content (those with the size of a stored item: renames and
copies, reused without Ray); the others it does not read at all.
Results stream back to the driver (``iter_batches``), which commits them in plan order,
exactly as a local run would: same ids for the same paths, same skip reasons, and a second
run finds nothing to encode.

A worker that dies mid-batch is restarted by Ray and its batch retried (actor
``max_restarts`` / ``max_task_retries``). The driver keeps each item's first result only and
checks at the end that every planned item came back, so a retry can neither duplicate nor
lose an item.

``ray`` is an optional dependency (``pip install 'mmsearch[ray]'``), imported only here and
only when a run uses it.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.common import EncoderLike, load_encoder
from mmsearch.catalog import Catalog
from mmsearch.errors import DistributedError, RayUnavailableError
from mmsearch.media import EncodedImages, PreparedImage
from mmsearch.results import ProgressFactory, RunSummary, Skipped

if TYPE_CHECKING:  # the pipeline's job type; no import cycle at run time
    from indexer.pipeline import _Job

logger = logging.getLogger(__name__)

#: Where a run connects when no address is given: a Ray instance started in this process.
LOCAL = "local"
#: Retries of a batch (and restarts of its worker) before the run gives up: a file that
#: crashes the decoder every time must not loop forever.
DEFAULT_RETRIES = 3


@dataclass(frozen=True)
class RayOptions:
    """How to run the encoding on Ray.

    Attributes:
        address: ``local`` (start Ray in this process), ``auto`` (the cluster this machine
            belongs to), ``ray://host:port`` (Ray Client) or ``host:port`` (a head node).
            A Ray already initialised in this process is used as it is.
        workers: encoding actors (default: one per GPU of the cluster, else one per CPU).
        gpus_per_worker: GPUs each actor takes (default: 1 when the cluster has GPUs).
        cpus_per_worker: CPUs each actor takes (its decoding threads; default 1).
        num_cpus: CPUs of a ``local`` Ray instance (default: all).
        batch_size: images (or texts) per batch sent to a worker.
        retries: restarts of a dead worker and retries of its batch before giving up.
    """

    address: str = LOCAL
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: float = 1.0
    num_cpus: int | None = None
    batch_size: int = 64
    retries: int = DEFAULT_RETRIES


def check_address(address: str) -> str:
    """``address`` if it names a Ray cluster (``local``, ``auto``, ``ray://…`` or
    ``host:port``), else raises ValueError with the forms accepted."""
    if address in (LOCAL, "auto") or "://" in address:
        return address
    host, sep, port = address.rpartition(":")
    if sep and host and port.isdigit():
        return address
    raise ValueError(
        f"{address!r} is not a Ray address: use local, auto, ray://HOST:PORT or HOST:PORT"
    )


def require_ray() -> Any:
    """The ``ray`` module (with Ray Data), or RayUnavailableError."""
    try:
        import ray  # noqa: PLC0415 — optional and heavy (seconds): only when a run asks
        import ray.data  # noqa: F401, PLC0415
    except ImportError as exc:
        raise RayUnavailableError() from exc
    return ray


def connect(options: RayOptions) -> Any:
    """Connect to (or start) the Ray cluster of ``options.address``; returns ``ray``."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "include_dashboard": False}
    try:
        if options.address == LOCAL:
            ray.init(num_cpus=options.num_cpus, **kwargs)
        else:
            ray.init(address=options.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise DistributedError(f"cannot reach the Ray cluster at {options.address}: {exc}") from exc
    logger.info("Ray cluster: %s", ray.cluster_resources())
    return ray


# -- workers (run inside Ray actors) -----------------------------------------------------


def load_worker_encoder(spec: Any, device: str | None) -> EncoderLike:
    """Load the model in a worker (the default worker factory: the driver's model spec)."""
    from mmsearch.encoder import Encoder  # noqa: PLC0415 — torch: in the worker only

    return Encoder.load(spec, device=device)


class ImageWorker:
    """A Ray actor body: loads the encoder once, then reads, decodes and encodes batches
    as a local run does (:func:`indexer.reading.read_item` and the encoder's
    :class:`~indexer.feed.ImageFeed`: on a GPU worker JPEGs are decoded on the GPU).

    Each file is read once here and hashed on the bytes that are decoded, and the driver
    stores that digest. Most files reach a worker unhashed (the driver hashes only those
    with the size of a stored item); for one the driver did hash and that changed before
    the worker read it, the planned digest would name content whose embedding is not the
    one stored (a later copy of that content would be given the wrong embedding).

    Args:
        make_encoder: a picklable function returning the encoder (called once here).
        threads: decoding threads.
        file_hash: the catalog's file hash (``Catalog.file_hash``).
    """

    def __init__(
        self, make_encoder: Callable[[], EncoderLike], threads: int, file_hash: str = "blake3"
    ) -> None:
        from indexer.feed import feed_for  # noqa: PLC0415 — worker side

        self.encoder = make_encoder()
        self.feed = feed_for(self.encoder)
        self.threads = threads
        self.file_hash = file_hash

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from indexer.reading import read_item  # noqa: PLC0415 — worker side

        paths = [str(p) for p in batch["path"]]
        n = len(paths)
        with ThreadPoolExecutor(max_workers=max(1, self.threads)) as pool:
            items = list(
                pool.map(
                    lambda k: read_item(k, paths[k], (), self.feed.prepare, self.file_hash),
                    range(n),
                )
            )
        prepared = [item for item in items if item.image is not None]
        encoded = self._encode([item.image for item in prepared]) if prepared else None  # type: ignore[misc]
        out = _ImageResults(n, encoded.vectors.shape[1] if encoded is not None else 1)
        for item in items:
            out.digest[item.index] = item.digest or ""
            if item.error is not None:
                out.reason[item.index] = item.error.reason
                out.unreadable[item.index] = item.unreadable
        row = 0
        for pos, item in enumerate(prepared):
            assert encoded is not None and item.image is not None
            error = encoded.failed.get(pos)
            if error is not None:
                out.reason[item.index] = error.reason
                continue
            out.add(item.index, item.image, encoded.vectors[row])
            row += 1
        return {"i": np.asarray(batch["i"], dtype=np.int64), **out.columns()}

    def _encode(self, images: list[PreparedImage]) -> EncodedImages:
        """The batch encoded on every device of this worker (a worker given several GPUs
        has a feed lane on each), split into consecutive parts, results in batch order."""
        lanes = min(self.feed.lanes, len(images))
        if lanes <= 1:
            return self.feed.encode(images)
        size = -(-len(images) // lanes)
        starts = list(range(0, len(images), size))
        with ThreadPoolExecutor(max_workers=len(starts)) as pool:
            parts = list(
                pool.map(
                    lambda lane, start: self.feed.encode(images[start : start + size], lane),
                    range(len(starts)),
                    starts,
                )
            )
        failed = {
            start + pos: error
            for start, part in zip(starts, parts, strict=True)
            for pos, error in part.failed.items()
        }
        return EncodedImages(np.concatenate([part.vectors for part in parts]), failed)


class _ImageResults:
    """The columns an :class:`ImageWorker` returns for a batch of ``n`` files."""

    def __init__(self, n: int, dim: int) -> None:
        self.ok = np.zeros(n, dtype=bool)
        self.unreadable = np.zeros(n, dtype=bool)  # not read at all: not remembered as bad
        self.reason = np.full(n, "", dtype=object)
        self.digest = np.full(n, "", dtype=object)
        self.width = np.zeros(n, dtype=np.int64)
        self.height = np.zeros(n, dtype=np.int64)
        self.taken = np.full(n, np.nan, dtype=np.float64)
        self.embedding = np.zeros((n, dim), dtype=np.float32)

    def add(self, k: int, image: PreparedImage, vector: np.ndarray) -> None:
        self.ok[k] = True
        self.width[k], self.height[k] = image.width, image.height
        self.taken[k] = np.nan if image.taken is None else image.taken
        self.embedding[k] = vector

    def columns(self) -> dict[str, np.ndarray]:
        return dict(vars(self))


class TextWorker:
    """A Ray actor body: loads the encoder once, then encodes batches of texts."""

    def __init__(self, make_encoder: Callable[[], EncoderLike], threads: int) -> None:
        self.encoder = make_encoder()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        return {
            "i": np.asarray(batch["i"], dtype=np.int64),
            "truncated": np.array([self.encoder.is_truncated(t) for t in texts], dtype=bool),
            "embedding": self.encoder.encode_texts(texts),
        }


# -- the driver ----------------------------------------------------------------------------


class RayEncoding:
    """Encodes planned items on Ray and commits the results to the catalog in plan order.

    Args:
        options: where and how to run.
        make_encoder: picklable zero-argument function that loads the encoder in a worker
            (default: the driver's model, loaded by spec, on the worker's GPU or CPU).
    """

    def __init__(
        self, options: RayOptions, make_encoder: Callable[[], EncoderLike] | None = None
    ) -> None:
        require_ray()  # fail now, before any scanning, if ray is not installed
        self.options = options
        self.make_encoder = make_encoder
        #: Results of items that came back twice (a retried batch), ignored; for tests/logs.
        self.duplicates = 0

    # The hooks of the local runs (indexer.pipeline / indexer.texts) -----------------------

    def encode_images(
        self,
        catalog: Catalog,
        jobs: list[_Job],
        get_encoder: Callable[[], EncoderLike],
        progress: ProgressFactory,
        summary: RunSummary,
    ) -> list[tuple[_Job, str]]:
        """Decode and encode ``jobs`` on Ray and commit them as the local pipeline does;
        returns the jobs whose file could not be decoded, with the reason (also added to
        ``summary.skipped``)."""
        from indexer.pipeline import _file_row  # noqa: PLC0415 — same rows as a local run

        items = [{"i": k, "path": job.entry.path} for k, job in enumerate(jobs)]
        failed: list[tuple[_Job, str]] = []
        bar = progress(len(jobs), "encoding images on Ray")
        try:
            for done in self._run(catalog, get_encoder, items, ImageWorker, (catalog.file_hash,)):
                rows, replaced = [], []
                for k, res in done:
                    job = jobs[k]
                    if not res["ok"]:
                        summary.skipped.append(Skipped(job.entry.path, res["reason"]))
                        if not res["unreadable"]:  # gone or locked since: not a bad file
                            failed.append((job, res["reason"]))
                        continue
                    if job.digest and res["digest"] != job.digest:
                        logger.info("%s changed after it was hashed", job.entry.path)
                    taken = res["taken"]
                    rows.append(
                        {
                            **_file_row(job.entry, str(res["digest"])),
                            "width": int(res["width"]),
                            "height": int(res["height"]),
                            "taken_at": job.entry.mtime_ns / 1e9 if np.isnan(taken) else taken,
                            "embedding": res["embedding"],
                        }
                    )
                    if job.old is not None:
                        replaced.append(job.old.id)
                if rows:
                    catalog.apply(add=rows, remove=replaced, new_ids=False)
                summary.updated += len(replaced)
                summary.added += len(rows) - len(replaced)
                bar.update(len(done))
        finally:
            bar.close()
        return failed

    def encode_texts(
        self,
        catalog: Catalog,
        todo: Sequence[tuple[Any, str]],
        get_encoder: Callable[[], EncoderLike],
        progress: ProgressFactory,
        summary: RunSummary,
    ) -> None:
        """Encode ``todo`` ((TextRecord, digest) pairs) on Ray and add them to the catalog
        in order, as :func:`indexer.texts.index_texts` does locally."""
        items = [{"i": k, "text": rec.text} for k, (rec, _) in enumerate(todo)]
        bar = progress(len(todo), "encoding texts on Ray")
        try:
            for done in self._run(catalog, get_encoder, items, TextWorker):
                rows = []
                for k, res in done:
                    rec, digest = todo[k]
                    summary.truncated += int(bool(res["truncated"]))
                    rows.append(
                        {
                            "modality": "text",
                            "text": rec.text,
                            "source": rec.source,
                            "content_hash": digest,
                            "embedding": res["embedding"],
                        }
                    )
                catalog.add(rows)
                summary.added += len(rows)
                bar.update(len(done))
        finally:
            bar.close()

    # The Ray part -----------------------------------------------------------------------

    def _run(
        self,
        catalog: Catalog,
        get_encoder: Callable[[], EncoderLike],
        items: list[dict[str, Any]],
        worker: type,
        extra: tuple[Any, ...] = (),
    ) -> Iterator[list[tuple[int, dict[str, Any]]]]:
        """Run ``worker`` over ``items`` on Ray (constructed with the encoder factory, its
        threads and ``extra``); yield the results in item order, in groups of about a
        batch, each item exactly once."""
        # The driver claims the model in the catalog before anything is committed, as a
        # local run does; by default the workers load the same model spec.
        spec = load_encoder(catalog, get_encoder).spec  # type: ignore[attr-defined]
        ray = connect(self.options)
        workers, gpus = self._pool(ray)
        make_encoder = self.make_encoder or partial(
            load_worker_encoder, spec, "cuda" if gpus else "cpu"
        )
        args = (make_encoder, max(1, int(self.options.cpus_per_worker)), *extra)
        results = self._map(ray, items, worker, args, workers, gpus)
        yield from self._in_order(results, len(items))

    def _pool(self, ray: Any) -> tuple[int, float]:
        """(actors, GPUs per actor) for the cluster."""
        resources = ray.cluster_resources()
        cluster_gpus = int(resources.get("GPU", 0))
        gpus = self.options.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if cluster_gpus else 0.0
        if self.options.workers is not None:
            return self.options.workers, gpus
        if gpus:
            return max(1, int(cluster_gpus / gpus)), gpus
        cpus = int(resources.get("CPU", 1))
        return max(1, int(cpus / self.options.cpus_per_worker)), 0.0

    def _map(
        self,
        ray: Any,
        items: list[dict[str, Any]],
        worker: type,
        args: tuple[Any, ...],
        workers: int,
        gpus: float,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of results as they stream back from the actors (any order); ``args``
        are the worker's constructor arguments."""
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the caller shows its own progress
        batch = self.options.batch_size
        retries = self.options.retries
        # Blocks of one batch each: the unit a worker takes, retries and returns.
        blocks = max(1, math.ceil(len(items) / batch))
        workers = min(workers, blocks)  # an actor without a block would only load the model
        ds = ray.data.from_items(items, override_num_blocks=blocks)
        with warnings.catch_warnings():
            # Ray >= 2.6x deprecates passing actor options this way but has no other one;
            # without them a batch whose file crashes the decoder would be retried forever.
            warnings.simplefilter("ignore", DeprecationWarning)
            out = ds.map_batches(
                worker,
                fn_constructor_args=args,
                batch_size=batch,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=workers),
                num_cpus=self.options.cpus_per_worker,
                num_gpus=gpus or None,
                # A dead worker is restarted and its batch retried, a bounded number of times.
                max_restarts=retries,
                max_task_retries=retries,
            )
        logger.info("encoding %d items on %d Ray workers (%s GPU each)", len(items), workers, gpus)
        try:
            yield from out.iter_batches(batch_size=None, batch_format="numpy")
        except ray.exceptions.RayError as exc:
            raise DistributedError(f"the Ray encoding failed: {_first_line(exc)}") from exc

    def _in_order(
        self, results: Iterator[dict[str, np.ndarray]], n: int
    ) -> Iterator[list[tuple[int, dict[str, Any]]]]:
        """Reorder streamed results into item order (the catalog then numbers items as a
        local run would), drop repeats of an item, and check that none is missing."""
        pending: dict[int, dict[str, Any]] = {}
        seen = np.zeros(n, dtype=bool)
        next_k = 0
        for batch in results:
            for row in _rows(batch):
                k = int(row["i"])
                if seen[k]:
                    self.duplicates += 1
                    continue
                seen[k] = True
                pending[k] = row
            ready = []
            while next_k in pending:
                ready.append((next_k, pending.pop(next_k)))
                next_k += 1
            if ready:
                yield ready
        if next_k != n:
            raise DistributedError(f"the Ray encoding returned {next_k} of {n} items")
        if self.duplicates:
            logger.warning("ignored %d repeated results (retried batches)", self.duplicates)


def _rows(batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    columns = list(batch)
    for j in range(len(batch["i"])):
        yield {c: batch[c][j] for c in columns}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
