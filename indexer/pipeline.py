"""Indexing images: scan → hash → reuse or (load → encode) → catalog, in committed batches.

Each batch is committed to the catalog in one transaction, so an interrupted run keeps
what it finished and the next run picks up the rest (those files are then unchanged).
The vector indexes are brought up to date from the catalog afterwards by the caller.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from indexer.common import DEFAULT_BATCH, EncoderLike, load_encoder
from indexer.scan import FileEntry, KnownFile, plan_changes, plan_remembered, scan
from mmsearch.catalog import Catalog, ItemRecord, SkipRecord
from mmsearch.errors import InputError
from mmsearch.media import content_hash, date_taken, draft_size, load_many, missing_decoder
from mmsearch.results import ProgressFactory, RunSummary, Skipped, no_progress

logger = logging.getLogger(__name__)

#: Encodes and commits planned jobs, returning those that failed to decode with the reason
#: (the signature of :meth:`indexer.distributed.RayEncoding.encode_images`).
JobEncoder = Callable[..., "list[tuple[_Job, str]]"]


@dataclass
class _Job:
    """A file to encode: new, or changed (then ``old`` is the row it replaces)."""

    entry: FileEntry
    digest: str
    old: ItemRecord | KnownFile | None = None


def _hash_all(entries: Sequence[FileEntry], workers: int, summary: RunSummary) -> dict[str, str]:
    """Content hashes by path; unreadable files go to ``summary.skipped``."""

    def one(entry: FileEntry) -> tuple[str, str | None, str | None]:
        try:
            return entry.path, content_hash(entry.path), None
        except InputError as exc:
            return entry.path, None, exc.reason

    out: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for path, digest, reason in pool.map(one, entries):
            if digest is None:
                summary.skipped.append(Skipped(path, reason or "cannot read"))
            else:
                out[path] = digest
    return out


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
) -> RunSummary:
    """Bring the catalog's images under ``roots`` up to date with the disk.

    Unchanged files (same size and mtime) are not read. New and changed files are hashed;
    content already stored (a renamed, moved or duplicate file) reuses its stored
    embedding; the rest are decoded in worker threads and encoded in batches. Files that
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
        batch_size: images encoded and committed together.
        workers: decoding threads (default: up to 8).
        progress: progress bar factory; none by default.
        retry_skipped: forget the remembered bad files first and try them all again
            (after installing a decoder, say).
        encode_jobs: encodes and commits the planned jobs elsewhere instead of here
            (:meth:`indexer.distributed.RayEncoding.encode_images`: on a Ray cluster).

    Returns:
        The run's :class:`RunSummary`.
    """
    started = time.perf_counter()
    progress = progress or no_progress
    workers = workers or min(8, os.cpu_count() or 1)
    summary = RunSummary()

    found = scan(roots, exclude=exclude)
    summary.skipped.extend(Skipped(p, r) for p, r in found.errors)
    known = [
        KnownFile(r.id, r.path or "", r.size or 0, r.mtime_ns or 0, r.content_hash)
        for r in catalog.image_files()
    ]
    plan = plan_changes(found.files, known, roots)
    summary.scanned = len(found.files)
    summary.unchanged = len(plan.unchanged)
    memory = _recall_skipped(catalog, plan.new, roots, retry_skipped, summary)
    plan.new = memory.to_try

    to_hash = _decodable([*plan.new, *(entry for entry, _ in plan.changed)], summary)
    digests = _hash_all(to_hash, workers, summary)
    jobs = _reuse_stored(catalog, plan, digests, summary)

    failed: list[tuple[_Job, str]] = []
    if jobs and encode_jobs is not None:  # distributed: same jobs in, same rows out
        failed = encode_jobs(catalog, jobs, get_encoder, progress, summary)
    elif jobs:
        failed = _encode_images(catalog, jobs, get_encoder, batch_size, workers, progress, summary)

    # A changed file that no longer decodes takes its old item along: a search must not
    # find the picture that was there before.
    gone = [k.id for k in plan.gone] + [job.old.id for job, _ in failed if job.old is not None]
    summary.removed += catalog.remove(gone) if gone else 0
    _update_skipped(catalog, memory, failed)
    backfill_dates(catalog, workers)
    summary.seconds = time.perf_counter() - started
    return summary


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
    catalog: Catalog, plan: Any, digests: dict[str, str], summary: RunSummary
) -> list[_Job]:
    """Store without encoding every file whose content is already in the catalog; return
    the files that must be encoded."""
    gone_by_hash: dict[str, KnownFile] = {}
    for k in plan.gone:
        gone_by_hash.setdefault(k.content_hash, k)
    stored = catalog.embeddings_by_hash("image", digests.values())

    jobs: list[_Job] = []
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
        else:
            jobs.append(_Job(entry, digest))
    changed_reused: list[int] = []
    for entry, old in plan.changed:
        digest = digests.get(entry.path)
        if digest is None:
            continue
        if digest in stored:
            # Content changed to something already stored: a new item with that embedding.
            copies.append({**_file_row(entry, digest), "embedding": stored[digest]})
            changed_reused.append(old.id)
        else:
            jobs.append(_Job(entry, digest, old))
    if renames or copies:
        _copy_dims(catalog, copies, renames)
        catalog.apply(add=copies, remove=changed_reused, updates=renames)
        summary.reused += len(renames) + len(copies)
    return jobs


def _copy_dims(
    catalog: Catalog, copies: list[dict[str, Any]], renames: list[tuple[int, dict[str, Any]]]
) -> None:
    """Duplicates take width/height from the stored item with the same content."""
    if not copies:
        return
    by_hash: dict[str, ItemRecord] = {}
    for rec in catalog.image_files():
        by_hash.setdefault(rec.content_hash, rec)
    for row in copies:
        rec = by_hash.get(row["content_hash"])
        if rec is not None:
            row["width"], row["height"] = rec.width, rec.height


def _encode_images(
    catalog: Catalog,
    jobs: list[_Job],
    get_encoder: Callable[[], EncoderLike],
    batch_size: int,
    workers: int,
    progress: ProgressFactory,
    summary: RunSummary,
) -> list[tuple[_Job, str]]:
    """Decode, encode and store the jobs in batches; return the jobs that failed to decode,
    with the reason (they are in ``summary.skipped`` too)."""
    failed: list[tuple[_Job, str]] = []
    encoder = load_encoder(catalog, get_encoder)
    size = encoder.image_size
    bar = progress(len(jobs), "encoding images")
    try:
        by_path = {j.entry.path: j for j in jobs}
        results = load_many(
            [j.entry.path for j in jobs],
            transform=encoder.preprocess,
            workers=workers,
            draft_size=draft_size(size),
            prefetch=max(64, 2 * batch_size),
        )
        pending: list[tuple[_Job, Any, Any]] = []
        for path, loaded, tensor, error in results:
            if error is not None:
                summary.skipped.append(Skipped(path, error.reason))
                failed.append((by_path[path], error.reason))
                bar.update(1)
                continue
            pending.append((by_path[path], loaded, tensor))
            if len(pending) >= batch_size:
                _commit_batch(catalog, encoder, pending, summary)
                bar.update(len(pending))
                pending = []
        if pending:
            _commit_batch(catalog, encoder, pending, summary)
            bar.update(len(pending))
    finally:
        bar.close()
    return failed


def _commit_batch(
    catalog: Catalog,
    encoder: EncoderLike,
    pending: list[tuple[_Job, Any, Any]],
    summary: RunSummary,
) -> None:
    vectors = encoder.encode_image_tensors([t for _, _, t in pending])
    rows, replaced = [], []
    for (job, loaded, _), vec in zip(pending, vectors, strict=True):
        rows.append(
            {
                **_file_row(job.entry, job.digest),
                "width": loaded.width,
                "height": loaded.height,
                "taken_at": loaded.taken if loaded.taken is not None else job.entry.mtime_ns / 1e9,
                "embedding": vec,
            }
        )
        if job.old is not None:
            replaced.append(job.old.id)
    catalog.apply(add=rows, remove=replaced)
    summary.updated += len(replaced)
    summary.added += len(rows) - len(replaced)
