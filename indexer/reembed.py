"""Re-embedding: every stored item encoded again with a new model (``--reembed``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from indexer.common import DEFAULT_BATCH, EncoderLike, batches
from mmsearch.catalog import Catalog
from mmsearch.catalog_base import ItemRecord
from mmsearch.config import cpu_cores
from mmsearch.media import draft_size, load_many
from mmsearch.results import ProgressFactory, RunSummary, Skipped, no_progress


def reembed(
    catalog: Catalog,
    get_encoder: Callable[[], EncoderLike],
    batch_size: int = DEFAULT_BATCH,
    workers: int | None = None,
    progress: ProgressFactory | None = None,
) -> RunSummary:
    """Encode every stored item again with a new model (after ``--reembed``).

    An image that can no longer be read cannot keep an embedding of the old model, so it
    leaves the index; it is listed in ``skipped`` and counted in ``removed``.
    """
    started = time.perf_counter()
    progress = progress or no_progress
    workers = workers or min(8, cpu_cores())
    summary = RunSummary()
    encoder = get_encoder()
    images = catalog.image_files()
    text_ids: list[int] = catalog.ids("text").tolist()  # Python ints, not numpy
    bar = progress(len(images) + len(text_ids), "re-embedding")
    try:
        by_path = {r.path: r for r in images if r.path}
        pending: list[tuple[ItemRecord, Any]] = []
        lost: list[int] = []

        def flush() -> None:
            vecs = encoder.encode_image_tensors([t for _, t in pending])
            catalog.update_many(
                [(r.id, {"embedding": v}) for (r, _), v in zip(pending, vecs, strict=True)]
            )
            summary.updated += len(pending)
            bar.update(len(pending))
            pending.clear()

        loads = load_many(
            list(by_path),
            transform=encoder.preprocess,
            workers=workers,
            draft_size=draft_size(encoder.image_size),
        )
        for path, _, tensor, error in loads:
            if error is not None:
                summary.skipped.append(Skipped(path, error.reason))
                lost.append(by_path[path].id)
                bar.update(1)
                continue
            pending.append((by_path[path], tensor))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
        summary.removed += catalog.remove(lost)
        for chunk in batches(text_ids, 256):
            recs = catalog.records(chunk)
            texts = [recs[i].text or "" for i in chunk]
            vecs = encoder.encode_texts(texts)
            catalog.update_many([(i, {"embedding": v}) for i, v in zip(chunk, vecs, strict=True)])
            summary.updated += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    summary.scanned = len(images) + len(text_ids)
    summary.seconds = time.perf_counter() - started
    return summary
