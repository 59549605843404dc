"""Near-duplicate images: groups, suggested keepers, and collapsing them in results.

Candidates come from a range search over the image index (every pair with embedding
cosine ≥ ``threshold``, re-scored exactly on the stored vectors); each candidate pair is
then re-checked on pixels (:mod:`mmsearch.nearcopy`), because embeddings alone put
look-alikes (same subject, different picture) as close as true copies — ``bench/dups.py``
measured it. Groups are the connected components of the pairs that pass. Nothing here
deletes or changes anything.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from .ann.faiss_index import VectorIndex
from .ann.neighbours import pairs_above
from .ann.query import Fetch
from .catalog_base import ItemRecord
from .errors import InputError
from .nearcopy import DEFAULT_PIXEL_THRESHOLD, file_thumbprint, pixel_similarities
from .results import DuplicateGroup, DuplicateItem, Hit
from .search import CatalogReads

logger = logging.getLogger(__name__)

#: Default least embedding cosine of a candidate pair (bench/dups.py: README table).
DEFAULT_THRESHOLD = 0.9
#: ``dedupe`` asks for this many times ``k`` hits before collapsing, more if needed.
DEDUPE_DEPTH = 4


class PixelCheck:
    """Pixel re-check of candidate pairs, thumbprints read once per item.

    Args:
        paths: item id → image path.
        threshold: least thumbprint similarity of copies; None: no pixel check.
    """

    def __init__(self, paths: dict[int, str | None], threshold: float | None) -> None:
        self.paths = paths
        self.threshold = threshold
        self._prints: dict[int, np.ndarray | None] = {}

    def scores(self, pairs: Iterable[tuple[int, int]]) -> dict[tuple[int, int], float | None]:
        """Thumbprint similarity of each pair (None: unchecked, or a file unreadable)."""
        pairs = [(int(a), int(b)) for a, b in pairs]
        if self.threshold is None:
            return {p: None for p in pairs}
        prints = {}
        for item in {i for p in pairs for i in p}:
            found = self._print(item)
            if found is not None:
                prints[item] = found
        sims = pixel_similarities(prints, pairs)
        return {p: (round(sims[p], 4) if p in sims else None) for p in pairs}

    def passes(self, score: float | None) -> bool:
        """Whether a pair with this :meth:`scores` value passes (all do, unchecked)."""
        if self.threshold is None:
            return True
        return score is not None and score >= self.threshold

    def _print(self, item: int) -> np.ndarray | None:
        if item not in self._prints:
            path = self.paths.get(item)
            try:
                self._prints[item] = file_thumbprint(path) if path else None
            except InputError as exc:  # a file gone or damaged since it was indexed
                logger.info("item %d left out of the pixel check: %s", item, exc)
                self._prints[item] = None
        return self._prints[item]


def components(pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Connected components (of two items or more) of an undirected graph's edges, each
    sorted by id; largest first, then by smallest id."""
    parent: dict[int, int] = {}

    def root(x: int) -> int:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(int(a)), root(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for x in parent:
        groups.setdefault(root(x), []).append(x)
    out = [sorted(g) for g in groups.values() if len(g) > 1]
    return sorted(out, key=lambda g: (-len(g), g[0]))


def item_date(record: ItemRecord) -> float | None:
    """Capture date, else the file's modification time (seconds since the epoch)."""
    if record.taken_at is not None:
        return float(record.taken_at)
    return record.mtime_ns / 1e9 if record.mtime_ns else None


def choose_keeper(records: Sequence[ItemRecord]) -> ItemRecord:
    """The item to keep: the most pixels, then the oldest (capture date or mtime; undated
    counts as newest), then the lowest id."""

    def key(r: ItemRecord) -> tuple[float, float, int]:
        pixels = (r.width or 0) * (r.height or 0)
        date = item_date(r)
        return (-pixels, date if date is not None else float("inf"), r.id)

    return min(records, key=key)


def find_groups(
    catalog: CatalogReads,
    vectors: VectorIndex,
    fetch: Fetch,
    threshold: float = DEFAULT_THRESHOLD,
    pixel_threshold: float | None = DEFAULT_PIXEL_THRESHOLD,
) -> list[DuplicateGroup]:
    """Groups of near-duplicate images, largest first, keeper first in each.

    Args:
        catalog: item metadata (paths, sizes, dates).
        vectors: the image index.
        fetch: stored float32 embeddings of ids.
        threshold: least embedding cosine of a candidate pair.
        pixel_threshold: least thumbprint similarity (None: embeddings only).
    """
    pairs, _ = pairs_above(vectors, fetch, threshold)
    if not len(pairs):
        return []
    records = catalog.records(np.unique(pairs).tolist())
    check = PixelCheck({i: r.path for i, r in records.items()}, pixel_threshold)
    known = [(int(a), int(b)) for a, b in pairs if int(a) in records and int(b) in records]
    sims = check.scores(known)
    kept = [p for p in known if check.passes(sims[p])]
    logger.info("%d candidate pairs, %d pass the pixel check", len(pairs), len(kept))
    groups = [_group([records[i] for i in ids], fetch, check) for ids in components(kept)]
    return sorted(groups, key=lambda g: (-len(g.items), g.keeper.id))


def _group(records: list[ItemRecord], fetch: Fetch, check: PixelCheck) -> DuplicateGroup:
    keeper = choose_keeper(records)
    others = [r for r in records if r.id != keeper.id]
    ids = np.array([keeper.id] + [r.id for r in others], dtype=np.int64)
    stored = fetch(ids)
    scores = stored @ stored[0]
    pixels = check.scores([(keeper.id, r.id) for r in others])
    items = [_item(keeper, 1.0, None)]
    for record, score in zip(others, scores[1:], strict=True):
        items.append(_item(record, float(score), pixels[(keeper.id, record.id)]))
    items[1:] = sorted(items[1:], key=lambda i: (-i.score, i.id))
    return DuplicateGroup(tuple(items))


def _item(record: ItemRecord, score: float, pixel: float | None) -> DuplicateItem:
    return DuplicateItem(
        id=record.id,
        path=record.path,
        width=record.width,
        height=record.height,
        date=item_date(record),
        score=round(score, 4),
        pixel=pixel,
    )


def collapse(
    hits: Sequence[Hit],
    fetch: Fetch,
    threshold: float = DEFAULT_THRESHOLD,
    pixel_threshold: float | None = DEFAULT_PIXEL_THRESHOLD,
) -> list[Hit]:
    """Hits with near-duplicates of a better hit folded into it (its ``duplicates`` lists
    their ids); order kept. The same test as :func:`find_groups`, applied greedily: a hit
    joins the first better kept hit it is a copy of."""
    if len(hits) < 2:
        return list(hits)
    ids = np.array([h.id for h in hits], dtype=np.int64)
    stored = fetch(ids)
    sims = stored @ stored.T
    check = PixelCheck({h.id: h.path for h in hits}, pixel_threshold)
    rows_a, rows_b = np.nonzero(np.triu(sims >= threshold, 1))  # a < b: a is the better hit
    near = [(int(ids[a]), int(ids[b])) for a, b in zip(rows_a, rows_b, strict=True)]
    pixels = check.scores(near)
    copies = {p for p in near if check.passes(pixels[p])}
    kept: list[int] = []  # rows of hits kept
    folded: dict[int, list[int]] = {}
    for row in range(len(hits)):
        into = next((k for k in kept if (int(ids[k]), int(ids[row])) in copies), None)
        if into is None:
            kept.append(row)
        else:
            folded.setdefault(into, []).append(int(ids[row]))
    return [replace(hits[r], duplicates=tuple(folded[r])) if r in folded else hits[r] for r in kept]
