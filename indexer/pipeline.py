"""Indexing images: scan → (read once + hash → reuse, or decode) → encode → catalog.

Three kinds of threads share the work (:func:`_read_and_encode`): decoding threads read
each new or changed file once, hash those bytes and — unless the content is already
stored — decode them (:mod:`indexer.reading`); one encoder thread per device forms batches
from whatever is decoded and encodes them (:mod:`indexer.feed`); this thread commits each
encoded batch to the catalog while the next one encodes. Content already stored (renamed,
moved, duplicate files) reuses its stored embedding at the end of the run.

The model is loaded only once a file needs encoding, and — when the caller knows the
model's input size beforehand (``image_size``) — in a thread of its own while the decoding
threads go on decoding: loading a ViT-B-32 on the CPU (importing torch, building the model,
reading its weights) takes seconds that would otherwise pass with nothing decoded.

Each batch is committed to the catalog in one transaction, so an interrupted run keeps
what it finished and the next run picks up the rest (those files are then unchanged).
The vector indexes are brought up to date from the catalog afterwards by the caller.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from indexer.common import DEFAULT_BATCH, EncoderLike
from indexer.feed import Decoded, ImageFeed, ThreadBudget, feed_for, thread_budget
from indexer.reading import (
    POLL,
    DecodingThreads,
    FeedUnavailable,
    Gate,
    ReadItem,
    read_item,
    take_batch,
)
from indexer.roots import PRUNE_MIN, PRUNE_SHARE, judge_roots, under_any
from indexer.roots import records as root_records
from indexer.scan import FileEntry, KnownFile, plan_changes, plan_remembered, scan
from mmsearch.catalog import Catalog
from mmsearch.catalog_base import ItemRecord, SkipRecord, to_blobs
from mmsearch.config import cpu_cores
from mmsearch.errors import InputError, PruneRequired
from mmsearch.media import (
    EncodedImages,
    FileBytes,
    PreparedImage,
    content_hash,
    date_taken,
    draft_size,
    load_image,
    missing_decoder,
)
from mmsearch.results import ProgressFactory, RunSummary, Skipped, no_progress

logger = logging.getLogger(__name__)

#: Days an item that left the index stays in the trash (``mmsearch gc`` empties it sooner).
TRASH_DAYS = 30

#: Encodes and commits planned jobs, returning those that failed to decode with the reason
#: (the signature of :meth:`indexer.distributed.RayEncoding.encode_images`).
JobEncoder = Callable[..., "list[tuple[_Job, str]]"]


@dataclass
class _Job:
    """A file to encode: new, or changed (then ``old`` is the row it replaces)."""

    entry: FileEntry
    digest: str
    old: ItemRecord | KnownFile | None = None


def _file_row(entry: FileEntry, digest: str) -> dict[str, Any]:
    return {
        "modality": "image",
        "path": entry.path,
        "size": entry.size,
        "mtime_ns": entry.mtime_ns,
        "content_hash": digest,
    }


def index_images(
    catalog: Catalog,
    roots: Sequence[str | os.PathLike[str]],
    get_encoder: Callable[[], EncoderLike],
    exclude: Sequence[str] = (),
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
    retry_skipped: bool = False,
    encode_jobs: JobEncoder | None = None,
    image_size: int | None = None,
    follow_outside: bool = True,
    prune: bool = False,
) -> RunSummary:
    """Bring the catalog's images under ``roots`` up to date with the disk.

    Unchanged files (same size and mtime) are not read. New and changed files are read
    once: their bytes are hashed, and content already stored (a renamed, moved or
    duplicate file) reuses its stored embedding without being decoded; the rest are
    decoded from the same bytes in worker threads and encoded in batches. Files that
    disappeared leave the catalog. Nothing unreadable aborts the run: it is skipped and
    listed with its reason in the summary.

    A file that cannot be decoded is remembered with its size and mtime; while it stays
    the same, later runs list it as skipped (``remembered``) without reading it again. A
    known file that changed into something undecodable leaves the catalog: its old
    embedding no longer describes what is on disk.

    Args:
        catalog: the catalog to update.
        roots: folders (or files) to index.
        get_encoder: returns the encoder; called only if something must be encoded.
        exclude: fnmatch patterns of names or relative paths to leave out.
        batch_size: images encoded and committed together (at most).
        workers: decoding threads (default: from the cores, see
            :func:`indexer.feed.thread_budget`).
        progress: progress bar factory; none by default.
        retry_skipped: forget the remembered bad files first and try them all again
            (after installing a decoder, say).
        encode_jobs: encodes and commits the planned jobs elsewhere instead of here
            (:meth:`indexer.distributed.RayEncoding.encode_images`: on a Ray cluster).
        follow_outside: follow symbolic links that lead outside every root (they are
            counted in the summary either way).
        prune: remove what is not there even where a root looks offline (missing, empty,
            its drive unmounted: see :mod:`indexer.roots`), and however many items that is.
        image_size: the model's input side when known without loading it
            (``mmsearch.models.input_size``): files are then decoded while the model loads
            in a thread of its own. It must be the loaded encoder's ``image_size`` (the
            decoding scale depends on it); None: the decoding threads wait for the model.

    Returns:
        The run's :class:`RunSummary`.
    """
    started = time.perf_counter()
    progress = progress or no_progress
    budget = thread_budget(workers=workers)
    summary = RunSummary()

    given = [os.path.abspath(os.fspath(r)) for r in roots]
    previous = {r.path: r for r in catalog.roots()}
    missing = [r for r in given if not os.path.exists(r)]
    for root in missing:
        if root not in previous and not catalog.count_under(root):
            raise InputError(root, "no such file or directory")
    found = scan(
        [r for r in given if r not in missing], exclude=exclude, stay_inside=not follow_outside
    )
    summary.skipped.extend(Skipped(p, r) for p, r in found.errors)
    summary.links_outside, summary.links_refused = found.links_outside, found.links_refused
    states = judge_roots(given, {f.path for f in found.files}, previous, catalog.count_under, prune)
    offline = [s.path for s in states if not s.online]
    summary.offline.extend(Skipped(s.path, s.reason) for s in states if not s.online)
    records = catalog.image_files()
    known = [
        KnownFile(r.id, r.path or "", r.size or 0, r.mtime_ns or 0, r.content_hash)
        for r in records
        if not (offline and under_any(r.path or "", offline))  # kept as they are
    ]
    plan = plan_changes(found.files, known, [r for r in given if r not in offline])
    summary.scanned = len(found.files)
    summary.unchanged = len(plan.unchanged)
    memory = _recall_skipped(catalog, plan.new, roots, retry_skipped, summary)
    plan.new = memory.to_try

    changed = dict(plan.changed)
    to_read = _decodable([*plan.new, *changed], summary)
    # The rows of changed files are replaced as their batches commit; a duplicate of their
    # old content found later still needs those embeddings.
    kept = catalog.embeddings_by_hash("image", {old.content_hash for old in changed.values()})
    outcome = _Outcome()
    # Content in the trash counts as stored: it comes back without being decoded.
    stored_hashes = {r.content_hash for r in records} | catalog.trash_hashes()
    if to_read and encode_jobs is not None:  # distributed: Ray reads, hashes and encodes
        stored_sizes = {r.size for r in records}
        outcome.known, jobs = _plan_remote(
            to_read, changed, stored_hashes, stored_sizes, budget, summary, catalog.file_hash
        )
        # encode_jobs lists the files that failed to decode in summary.skipped itself
        failed = encode_jobs(catalog, jobs, get_encoder, progress, summary) if jobs else []
    else:
        if to_read:
            run = _Run(catalog, to_read, changed, stored_hashes, budget, image_size)
            bar = _LazyBar(progress, len(to_read), "indexing images")
            try:
                outcome = run.execute(get_encoder, batch_size, bar, summary)
            finally:
                bar.close()
        summary.skipped.extend(Skipped(e.path, r) for _, e, r in sorted(outcome.unreadable))
        failed = [(job, why) for _, job, why in sorted(outcome.failed, key=lambda f: f[0])]
        summary.skipped.extend(Skipped(job.entry.path, why) for job, why in failed)
    _reuse_stored(catalog, plan, outcome.known, kept, records, summary)

    # A changed file that no longer decodes takes its old item along: a search must not
    # find the picture that was there before.
    if not prune:
        _refuse_mass_removal(plan.gone, given, catalog.count_under)
    gone = [k.id for k in plan.gone] + [job.old.id for job, _ in failed if job.old is not None]
    summary.removed += catalog.remove(gone) if gone else 0
    catalog.save_roots(root_records(states, catalog.count_under))
    catalog.empty_trash(older_than=TRASH_DAYS * 86400)
    _update_skipped(catalog, memory, failed)
    backfill_dates(catalog, budget.decoders)
    summary.seconds = time.perf_counter() - started
    return summary


def _refuse_mass_removal(
    gone: Sequence[KnownFile], roots: Sequence[str], items_under: Callable[[str], int]
) -> None:
    """Stop before removing more than a share of a root's items (see indexer.roots)."""
    for root in roots:
        removing = sum(1 for k in gone if under_any(k.path, [root]))
        held = items_under(root)
        if removing > PRUNE_MIN and removing > PRUNE_SHARE * held:
            raise PruneRequired(root, removing, held)


def _plan_remote(
    entries: list[FileEntry],
    changed: dict[FileEntry, KnownFile],
    stored_hashes: set[str],
    stored_sizes: set[int | None],
    budget: ThreadBudget,
    summary: RunSummary,
    file_hash: str,
) -> tuple[dict[str, str], list[_Job]]:
    """For a distributed run: split the files into content already stored (path -> hash)
    and jobs for the workers, in plan order.

    Only a file with the size of a stored item can hold stored content: those are hashed
    here (with the catalog's ``file_hash``), so a rename or a copy is stored without
    encoding, or starting Ray at all. The others go to the workers unhashed (``digest``
    empty): a worker reads each once, hashing the bytes it decodes, and the driver reads
    none of them. Files unreadable here go to ``summary.skipped``."""

    def one(entry: FileEntry) -> tuple[str | None, str | None]:
        try:
            return content_hash(entry.path, algorithm=file_hash), None
        except InputError as exc:
            return None, exc.reason

    unsized = None in stored_sizes  # a row without its size: any file may match it
    to_hash = [e for e in entries if unsized or e.size in stored_sizes]
    with ThreadPoolExecutor(max_workers=budget.decoders) as pool:
        hashed = dict(zip(to_hash, pool.map(one, to_hash), strict=True))
    known: dict[str, str] = {}
    jobs: list[_Job] = []
    for entry in entries:
        digest, reason = hashed.get(entry, ("", None))
        if digest is None:
            summary.skipped.append(Skipped(entry.path, reason or "cannot read"))
        elif digest and digest in stored_hashes:
            known[entry.path] = digest
        else:
            jobs.append(_Job(entry, digest, changed.get(entry)))
    return known, jobs


def backfill_dates(catalog: Catalog, workers: int) -> int:
    """Read the capture date of every image whose date is unknown (indexed before schema
    v2, or stored by reusing another item's embedding) from its file's header — no pixels
    decoded, nothing encoded. Files that cannot be read keep no date. Returns how many
    were dated."""
    undated = catalog.undated_images()
    if not undated:
        return 0

    def one(rec: ItemRecord) -> tuple[int, float | None]:
        try:
            return rec.id, date_taken(rec.path or "")
        except InputError:
            return rec.id, None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        dates = [(i, t) for i, t in pool.map(one, undated) if t is not None]
    catalog.set_dates(dates)
    logger.info("read the capture date of %d of %d undated images", len(dates), len(undated))
    return len(dates)


@dataclass
class _Memory:
    """The remembered bad files, sorted against this run's scan."""

    to_try: list[FileEntry]  # new files to hash and decode (changed bad files among them)
    retried: set[str]  # remembered paths that changed and are tried again
    gone: list[str]  # remembered paths that no longer exist


def _recall_skipped(
    catalog: Catalog,
    new: list[FileEntry],
    roots: Sequence[str | os.PathLike[str]],
    retry: bool,
    summary: RunSummary,
) -> _Memory:
    """Set aside the new files an earlier run could not decode and that did not change
    since; they are listed as skipped with their remembered reason."""
    remembered = catalog.skipped_files()
    if retry and remembered:
        catalog.forget_skipped(r.path for r in remembered)
        remembered = []
    plan = plan_remembered(new, remembered, roots)
    summary.skipped.extend(Skipped(r.path, r.reason, remembered=True) for r in plan.still_bad)
    known = {r.path for r in remembered}
    return _Memory(
        to_try=plan.to_try,
        retried={e.path for e in plan.to_try if e.path in known},
        gone=[r.path for r in plan.gone],
    )


def _update_skipped(catalog: Catalog, memory: _Memory, failed: list[tuple[_Job, str]]) -> None:
    """Remember the files that failed to decode; forget the remembered ones that are gone
    or were tried again without failing."""
    bad = [SkipRecord(j.entry.path, j.entry.size, j.entry.mtime_ns, why) for j, why in failed]
    forget = memory.gone + sorted(memory.retried - {r.path for r in bad})
    if forget:
        catalog.forget_skipped(forget)
    if bad:
        catalog.remember_skipped(bad)


def _decodable(entries: list[FileEntry], summary: RunSummary) -> list[FileEntry]:
    """The entries whose format can be decoded here; the others (an optional package is
    missing) are skipped with the reason, without reading them."""
    out = []
    for entry in entries:
        missing = missing_decoder(entry.path)
        if missing is None:
            out.append(entry)
        else:
            summary.skipped.append(Skipped(entry.path, missing))
    return out


def _reuse_stored(
    catalog: Catalog,
    plan: Any,
    digests: dict[str, str],
    kept: dict[str, bytes],
    records: list[ItemRecord],
    summary: RunSummary,
) -> None:
    """Store without encoding every file whose content is already in the catalog
    (``digests``: path → hash of those files). The first new file (in scan order) with the
    content of a gone item takes that item over (a rename); others are copies."""
    if not digests:
        return
    gone_by_hash: dict[str, KnownFile] = {}
    for k in plan.gone:
        gone_by_hash.setdefault(k.content_hash, k)
    _restore_trashed(catalog, plan, digests, gone_by_hash, summary)
    stored = {**kept, **catalog.embeddings_by_hash("image", set(digests.values()))}

    renames: list[tuple[int, dict[str, Any]]] = []
    copies: list[dict[str, Any]] = []
    for entry in plan.new:
        digest = digests.get(entry.path)
        if digest is None:
            continue
        moved = gone_by_hash.pop(digest, None)
        if moved is not None:  # renamed or moved: same item, new path
            renames.append((moved.id, _file_row(entry, digest)))
            plan.gone.remove(moved)
        elif digest in stored:  # a duplicate of stored content
            copies.append({**_file_row(entry, digest), "embedding": stored[digest]})
    changed_reused: list[int] = []
    for entry, old in plan.changed:
        digest = digests.get(entry.path)
        if digest is not None and digest in stored:
            # Content changed to something already stored: a new item with that embedding.
            copies.append({**_file_row(entry, digest), "embedding": stored[digest]})
            changed_reused.append(old.id)
    if renames or copies:
        _copy_dims(records, copies)
        catalog.apply(add=copies, remove=changed_reused, updates=renames, new_ids=False)
        summary.reused += len(renames) + len(copies)


def _restore_trashed(
    catalog: Catalog,
    plan: Any,
    digests: dict[str, str],
    gone_by_hash: dict[str, KnownFile],
    summary: RunSummary,
) -> None:
    """Files whose content is in the trash (removed by an earlier run) come back under the
    item's old id, with its embedding and tags, and are taken out of ``digests`` (a second
    copy of that content is then an ordinary copy of stored content)."""
    stored = set(catalog.embeddings_by_hash("image", set(digests.values())))
    wanted = {d for d in digests.values() if d not in stored and d not in gone_by_hash}
    trashed = catalog.trashed(wanted) if wanted else {}
    if not trashed:
        return
    restores: list[tuple[int, dict[str, Any]]] = []
    replaced: list[int] = []
    candidates = [(e, None) for e in plan.new] + [(e, old) for e, old in plan.changed]
    for entry, old in candidates:
        digest = digests.get(entry.path)
        if digest is None or digest not in trashed:
            continue
        row = _file_row(entry, digest)
        row.pop("modality"), row.pop("content_hash")
        restores.append((trashed.pop(digest), row))
        del digests[entry.path]
        if old is not None:
            replaced.append(old.id)
            plan.changed.remove((entry, old))
    if replaced:
        catalog.remove(replaced)
    catalog.restore(restores)
    summary.reused += len(restores)
    logger.info("restored %d items from the trash without encoding", len(restores))


def _copy_dims(records: list[ItemRecord], copies: list[dict[str, Any]]) -> None:
    """Duplicates take width/height from the stored item with the same content (as the
    catalog held it when the run began)."""
    by_hash: dict[str, ItemRecord] = {}
    for rec in records:
        by_hash.setdefault(rec.content_hash, rec)
    for row in copies:
        rec = by_hash.get(row["content_hash"])
        if rec is not None:
            row["width"], row["height"] = rec.width, rec.height


class _LazyBar:
    """A progress bar shown once the model is loaded (or many files were read without
    it): a run that fails to load its model prints its one-line error and nothing else."""

    def __init__(self, progress: ProgressFactory, total: int, label: str) -> None:
        self.progress, self.total, self.label = progress, total, label
        self.bar: Any = None
        self.pending = 0

    def start(self) -> None:
        if self.bar is None:
            self.bar = self.progress(self.total, self.label)
            self.bar.update(self.pending)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)
            return
        self.pending += n
        if self.pending >= 64:
            self.start()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Outcome:
    """What the reading and encoding of a run left for its end (with plan positions, to
    report in scan order whatever order the threads finished in)."""

    known: dict[str, str] = field(default_factory=dict)  # path -> hash of stored content
    unreadable: list[tuple[int, FileEntry, str]] = field(default_factory=list)
    failed: list[tuple[int, _Job, str]] = field(default_factory=list)  # could not decode


@dataclass
class _Encoded:
    """An encoder thread's batch: the items and what the feed made of them."""

    items: list[ReadItem]
    result: EncodedImages


@dataclass
class _Fatal:
    """An exception that ends the run, raised again in the run's thread."""

    error: BaseException


@dataclass
class _FeedReady:
    """The model is loaded (by a decoding thread)."""

    feed: ImageFeed
    encoder: EncoderLike


_LANE_DONE = object()
_DECODED_ALL = object()


class _Run:
    """One run's decoding threads, encoder threads and the commits (this thread)."""

    def __init__(
        self,
        catalog: Catalog,
        entries: list[FileEntry],
        changed: dict[FileEntry, KnownFile],
        stored_hashes: set[str],
        budget: ThreadBudget,
        image_size: int | None = None,
    ) -> None:
        self.catalog = catalog
        self.entries = entries
        self.changed = changed
        self.stored_hashes = stored_hashes
        self.budget = budget
        self.stop = threading.Event()
        self.gate = Gate()
        self.results: queue.Queue[object] = queue.Queue()  # to this thread, unbounded
        self.to_encode: queue.Queue[object] = queue.Queue()  # bounded once the feed loads
        self.feed: ImageFeed | None = None
        self.feed_error: BaseException | None = None
        self.feed_lock = threading.Lock()
        self.lanes: list[threading.Thread] = []
        self.get_encoder: Callable[[], EncoderLike] | None = None
        self.decoders: DecodingThreads | None = None
        # Decoding before the model is loaded: the reduced JPEG scale the feed will use.
        self.early_draft = draft_size(image_size) if image_size else None
        self.loader: threading.Thread | None = None
        self.loader_lock = threading.Lock()
        # While the model loads (one core's work: imports, building, weights) the decoders
        # leave it a core: decoding beside it on every core slowed the load by half.
        self.early_slots = threading.Semaphore(max(1, min(budget.decoders, cpu_cores() - 1)))
        self.mismatch_logged = False
        self.model_seconds = 0.0  # loading the model
        self.encode_seconds = 0.0  # in feed.encode, summed over the lanes
        self.timing_lock = threading.Lock()

    # -- the model: loaded once a file needs it, by that decoding thread or beside them ----

    def _prepare(self, path: str, data: FileBytes) -> PreparedImage:
        feed = self.feed
        if feed is not None or self.early_draft is None:
            return self._load_feed().prepare(path, data)
        self._start_loader()
        if self.feed_error is not None:
            raise FeedUnavailable(self.feed_error)
        # Decoded now as the feed's prepare would; its preprocessing follows once it is
        # loaded (``_finish_early``).
        with self.early_slots:
            loaded = load_image(path, draft_size=self.early_draft, data=data)
        return PreparedImage(
            loaded.width, loaded.height, loaded.taken, Decoded(loaded.image, self.early_draft)
        )

    def _start_loader(self) -> None:
        """Load the model in a thread of its own (once), while the decoders go on (not
        under ``feed_lock``: the loader holds that while it loads)."""
        with self.loader_lock:
            if self.loader is not None:
                return
            self.loader = threading.Thread(
                target=self._load_beside, name="mmsearch-load-model", daemon=True
            )
            self.loader.start()

    def _load_beside(self) -> None:
        try:
            self._load_feed()
        except FeedUnavailable as exc:
            self.results.put(_Fatal(exc.cause))

    def _load_feed(self) -> ImageFeed:
        feed = self.feed
        if feed is not None:
            return feed
        with self.feed_lock:
            if self.feed is None and self.feed_error is None:
                assert self.get_encoder is not None
                try:
                    started = time.perf_counter()
                    encoder = self.get_encoder()
                    feed = feed_for(encoder)
                    self.model_seconds = time.perf_counter() - started
                    feed.use_threads(self.budget.model_threads if feed.on_cpu else None)
                    self.gate.enabled = self.budget.alternate and feed.on_cpu
                    self.feed = feed
                    self.results.put(_FeedReady(feed, encoder))  # claimed, lanes started there
                except BaseException as exc:
                    self.feed_error = exc
            if self.feed_error is not None:
                raise FeedUnavailable(self.feed_error)
            assert self.feed is not None
            return self.feed

    # -- encoder threads ------------------------------------------------------------------

    def _start_lanes(self, feed: ImageFeed, batch_size: int) -> None:
        for lane in range(feed.lanes):
            t = threading.Thread(
                target=self._lane, args=(feed, lane, batch_size), name=f"mmsearch-encode-{lane}"
            )
            t.daemon = True
            self.lanes.append(t)
            t.start()

    def _lane(self, feed: ImageFeed, lane: int, batch_size: int) -> None:
        assert self.decoders is not None
        # With the alternate schedule the decoders have every core while this waits, so
        # a full batch costs nothing; overlapping (a GPU), it takes what is decoded.
        wait_full = self.gate.enabled
        linger = 0.0 if feed.on_cpu else 0.02
        try:
            while True:
                batch = take_batch(
                    self.to_encode, batch_size, self.decoders.finished, self.stop, wait_full, linger
                )
                if not batch:
                    break
                items = self._finish_early(feed, batch)  # type: ignore[arg-type]
                if not items:
                    continue
                if self.gate.enabled:
                    self.decoders.read_ahead(batch_size)  # read from disk while it waits
                self.gate.close()
                started = time.perf_counter()
                try:
                    result = feed.encode([it.image for it in items], lane)  # type: ignore[misc]
                finally:
                    self.gate.open()
                with self.timing_lock:
                    self.encode_seconds += time.perf_counter() - started
                self.results.put(_Encoded(items, result))
        except BaseException as exc:  # noqa: BLE001 - raised again in the run's thread
            self.results.put(_Fatal(exc))
        finally:
            self.results.put(_LANE_DONE)

    def _finish_early(self, feed: ImageFeed, batch: list[ReadItem]) -> list[ReadItem]:
        """The batch with the model's preprocessing run on what was decoded before the
        model was loaded; an image that preprocessing fails on leaves it as a failed item
        (as ``read_item`` reports it)."""
        items = []
        for item in batch:
            payload = item.image.payload if item.image is not None else None
            if not isinstance(payload, Decoded):
                items.append(item)
                continue
            if payload.draft != feed.draft and not self.mismatch_logged:
                self.mismatch_logged = True
                logger.warning(
                    "decoded at %d px before the model loaded, which wants %d px: the "
                    "image_size given to index_images is not the model's",
                    payload.draft, feed.draft,
                )  # fmt: skip
            assert item.image is not None
            try:
                item.image.payload = feed.from_decoded(payload.image)
            except Exception as exc:  # a bad image must not abort the run
                logger.debug("preparing failed for %s", item.path, exc_info=True)
                item.image, item.error = None, InputError(item.path, f"transform failed: {exc}")
                self.results.put(item)
                continue
            items.append(item)
        return items

    # -- this thread ----------------------------------------------------------------------

    def execute(
        self,
        get_encoder: Callable[[], EncoderLike],
        batch_size: int,
        bar: _LazyBar,
        summary: RunSummary,
    ) -> _Outcome:
        """Read, decode, encode and commit every entry; what is left for the end of the
        run comes back. Raises what a thread raised (the model failed to load, the catalog
        refused it, an interrupt)."""
        self.get_encoder = get_encoder
        outcome = _Outcome()
        file_hash = self.catalog.file_hash  # stored digests are compared with these
        self.decoders = DecodingThreads(
            list(enumerate(e.path for e in self.entries)),
            lambda i, path: read_item(i, path, self.stored_hashes, self._prepare, file_hash),
            self.to_encode,
            self.results.put,
            self.budget.decoders,
            self.gate,
            self.stop,
            on_error=lambda exc: self.results.put(_Fatal(exc)),
            on_finished=lambda: self.results.put(_DECODED_ALL),
        )
        if self.early_draft is not None:  # what may be decoded while the model loads
            self.to_encode.maxsize = 2 * batch_size
        decoding, lanes, loaded = True, 0, False
        try:
            self.decoders.start()
            # A loader started by a decoding thread is seen before _DECODED_ALL (it was
            # started before that thread finished): the run waits for the model.
            while decoding or lanes or (self.loader is not None and not loaded):
                msg = _get(self.results)
                if msg is _DECODED_ALL:
                    decoding = False
                elif msg is _LANE_DONE:
                    lanes -= 1
                elif isinstance(msg, ReadItem):
                    self._settle(msg, outcome)
                    bar.update(1)
                elif isinstance(msg, _Encoded):
                    self._commit(msg, outcome, summary)
                    bar.update(len(msg.items))
                elif isinstance(msg, _Fatal):
                    raise msg.error
                elif isinstance(msg, _FeedReady):
                    loaded = True
                    # Claimed before any embedding is stored (a different model is refused).
                    self.catalog.claim_model(msg.encoder.record())
                    summary.engine = msg.encoder.engine
                    self.to_encode.maxsize = 2 * batch_size * msg.feed.lanes
                    self._start_lanes(msg.feed, batch_size)
                    lanes = msg.feed.lanes
                    bar.start()
        finally:
            self._shut_down()
            summary.model_seconds += self.model_seconds
            summary.encode_seconds += self.encode_seconds
        return outcome

    def _shut_down(self) -> None:
        self.stop.set()
        self.gate.open()
        if self.decoders is not None:
            self.decoders.join()
        if self.loader is not None:
            self.loader.join()  # a model still loading when the run failed
        for t in self.lanes:
            t.join()
        if self.feed is not None:
            self.feed.close()

    def _job(self, index: int) -> _Job:
        entry = self.entries[index]
        return _Job(entry, "", self.changed.get(entry))

    def _settle(self, item: ReadItem, outcome: _Outcome) -> None:
        """A file that needs no encoding: known content, unreadable, or undecodable."""
        entry = self.entries[item.index]
        if item.known:
            outcome.known[entry.path] = item.digest or ""
        elif item.unreadable:
            outcome.unreadable.append((item.index, entry, _reason(item)))
        else:
            outcome.failed.append((item.index, self._job(item.index), _reason(item)))

    def _commit(self, batch: _Encoded, outcome: _Outcome, summary: RunSummary) -> None:
        rows, replaced = [], []
        # As stored (float16), the batch at once: per row it was 4-36 µs of this thread.
        vectors = iter(to_blobs(batch.result.vectors))
        for pos, item in enumerate(batch.items):
            job = self._job(item.index)
            error = batch.result.failed.get(pos)
            if error is not None:
                outcome.failed.append((item.index, job, error.reason))
                continue
            image = item.image
            assert image is not None and item.digest is not None
            taken = image.taken if image.taken is not None else job.entry.mtime_ns / 1e9
            rows.append(
                {
                    **_file_row(job.entry, item.digest),
                    "width": image.width,
                    "height": image.height,
                    "taken_at": taken,
                    "embedding": next(vectors),
                }
            )
            if job.old is not None:
                replaced.append(job.old.id)
        if rows:
            self.catalog.apply(add=rows, remove=replaced, new_ids=False)
        summary.updated += len(replaced)
        summary.added += len(rows) - len(replaced)


def _reason(item: ReadItem) -> str:
    return item.error.reason if item.error is not None else "cannot read"


def _get(q: queue.Queue[object]) -> object:
    """The next message; waits in short slices so that Ctrl-C is seen at once."""
    while True:
        try:
            return q.get(timeout=POLL * 4)
        except queue.Empty:
            continue
