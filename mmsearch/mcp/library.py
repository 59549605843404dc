"""What the MCP tools do, as plain Python over one open :class:`~mmsearch.Index`.

Nothing here knows MCP: :mod:`.app` registers these methods as tools. Every answer is
small (ids, paths, scores, k capped at :data:`MAX_K`, thumbnails at most
:data:`MAX_THUMBNAILS` of :data:`MAX_SIDE` px), and nothing outside the index's
items is ever read: an image is named by item id, passed as bytes, or given as the path
of an *indexed* file (any other path is refused without being opened). No tool writes the
index except session state (the turns of a refinement), which is search state.

Calls are serialised by one lock: the ``Index`` (model, vector indexes) is not meant for
concurrent use, and inside ``mmsearch serve`` the lock is the web server's own.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import io
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ..errors import ImageTooLargeError, QueryError
from ..query import Filters, Query, Term, parse_date
from ..results import Hit

if TYPE_CHECKING:
    from ..index import Index

#: Longest side of a thumbnail sent as image content, in pixels.
MAX_SIDE = 256
#: Most hits one call returns.
MAX_K = 50
#: Most thumbnails one call returns.
MAX_THUMBNAILS = 8
#: Largest image passed as base64, in bytes (decoded).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Largest image passed, in pixels.
MAX_IMAGE_PIXELS = 50_000_000
#: Most duplicate groups listed.
MAX_GROUPS = 50
#: Most labels or items one classification takes.
MAX_LABELS = 100
MAX_CLASSIFY = 20


class Library:
    """The MCP tools' view of an index.

    Args:
        index: an open index (not closed here).
        lock: serialises calls (default: a lock of its own).
    """

    def __init__(self, index: Index, lock: threading.Lock | None = None) -> None:
        self.index = index
        self.lock = lock or threading.Lock()

    # -- searches -------------------------------------------------------------------------

    def search(
        self,
        query: str,
        k: int = 10,
        target: str = "image",
        filters: dict[str, Any] | None = None,
        dedupe: bool = False,
    ) -> dict[str, Any]:
        """Items matching a text."""
        if not query.strip():
            raise QueryError("empty query: give a text")
        with self.lock:
            hits = self.index.search(
                query, k=_k(k), target=target, filters=_filters(filters), dedupe=dedupe
            )
        return _hits(hits, query=query)

    def search_by_image(
        self,
        item_id: int | None = None,
        image_base64: str | None = None,
        path: str | None = None,
        k: int = 10,
        target: str = "image",
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Items like an image: an indexed item, image bytes, or an indexed file's path."""
        given = [v is not None for v in (item_id, image_base64, path)]
        if sum(given) != 1:
            raise QueryError("give exactly one of item_id, image_base64 or path")
        if path is not None:
            item_id = self._indexed_path(path)
        if item_id is not None:
            return self.similar(item_id, k, target, filters)
        image = decode_image(image_base64 or "")
        with self.lock:
            hits = self.index.search(image, k=_k(k), target=target, filters=_filters(filters))
        return _hits(hits)

    def similar(
        self,
        item_id: int,
        k: int = 10,
        target: str = "image",
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Items like an indexed item (itself left out); its stored embedding is the query."""
        with self.lock:
            hits = self.index.search_item(
                int(item_id), k=_k(k), target=target, filters=_filters(filters)
            )
        return _hits(hits, item_id=int(item_id))

    def refine(
        self,
        session: str,
        query: str | None = None,
        more: Sequence[int] = (),
        less: Sequence[int] = (),
        text: str | None = None,
        k: int = 10,
        target: str = "image",
        filters: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start session ``session`` with ``query``, or add a turn: ids wanted (``more``),
        ids not wanted (``less``), a follow-up ``text``. Only item ids are feedback here."""
        more_ids = [int(i) for i in more]
        less_ids = [int(i) for i in less]
        with self.lock:
            walk = self.index.session(session)
            if query is not None:
                if more_ids or less_ids or text:
                    raise QueryError("start a session with query alone; refine it in later calls")
                if not query.strip():
                    raise QueryError("empty query: give a text")
                parsed = Query((Term("text", query.strip()),), _filters(filters) or Filters())
                hits = walk.query(parsed, k=_k(k), target=target)
            else:
                if not (more_ids or less_ids or (text and text.strip())):
                    raise QueryError("give more, less or text to refine the session")
                hits = walk.refine(more_ids, less_ids, text or None, k=_k(k))
            turns = walk.info().turns
        return {**_hits(hits), "session": session, "turns": turns}

    def explain(self, query: str, k: int = 10, combine: str = "mean") -> dict[str, Any]:
        """A compound query split into parts, each hit scored on every part."""
        with self.lock:
            result = self.index.explain(query, k=_k(k), combine=combine)
        return {
            "query": result.query,
            "whole": result.whole,
            "parts": result.parts,
            "combine": result.combine,
            **_hits(result.hits),
        }

    # -- looking at items -------------------------------------------------------------------

    def describe(self, item_id: int) -> dict[str, Any]:
        """One item's metadata and tags."""
        with self.lock:
            record = self.index.item(int(item_id))
            tags = self.index.item_tags(record.id)
        out: dict[str, Any] = {"id": record.id, "modality": record.modality}
        if record.path:
            out["path"] = record.path
            out["name"] = Path(record.path).name
        for name in ("text", "source", "size", "width", "height"):
            value = getattr(record, name)
            if value is not None:
                out[name] = value
        if record.mtime_ns:
            out["modified"] = _iso(record.mtime_ns / 1e9)
        if record.taken_at:
            out["taken"] = _iso(record.taken_at)
        if tags:
            out["tags"] = [{"tag": t, "score": round(s, 4)} for t, s in tags]
        return out

    def thumbnails(self, item_ids: Sequence[int], size: int = MAX_SIDE) -> list[bytes]:
        """JPEG thumbnails of indexed images (at most MAX_THUMBNAILS, MAX_SIDE px)."""
        if len(item_ids) > MAX_THUMBNAILS:
            raise QueryError(f"at most {MAX_THUMBNAILS} thumbnails per call")
        out = []
        for item_id in item_ids:
            out.append(item_thumbnail(self.index, int(item_id), size))
        return out

    def classify(self, item_ids: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
        """Zero-shot label probabilities of indexed images."""
        labels = [str(label).strip() for label in labels if str(label).strip()]
        if len(labels) < 2 or len(labels) > MAX_LABELS:
            raise QueryError(f"give 2 to {MAX_LABELS} labels")
        if not item_ids or len(item_ids) > MAX_CLASSIFY:
            raise QueryError(f"give 1 to {MAX_CLASSIFY} item ids")
        with self.lock:
            records = [self.index.item(int(i)) for i in item_ids]
            for record in records:
                if record.modality != "image" or not record.path:
                    raise QueryError(f"item {record.id} is a text: only images are classified")
            images = [_item_image(self.index, r.id) for r in records]
            found = self.index.classify(images, labels)
        return {
            "items": [
                {"id": r.id, "path": r.path, "scores": _rounded(c.scores)}
                for r, c in zip(records, found, strict=True)
            ]
        }

    def duplicates(self, threshold: float | None = None, limit: int = 20) -> dict[str, Any]:
        """Groups of near-duplicate images, the suggested keeper first (nothing deleted)."""
        with self.lock:
            groups = (
                self.index.duplicates(threshold=threshold)
                if threshold is not None
                else self.index.duplicates()
            )
        shown = groups[: max(1, min(int(limit), MAX_GROUPS))]
        return {"groups": [g.to_dict() for g in shown], "total_groups": len(groups)}

    def status(self) -> dict[str, Any]:
        """What the index holds."""
        with self.lock:
            info = self.index.info().to_dict()
        info["skipped_files"] = len(info.get("skipped_files") or ())  # may be long: counted
        return info

    # -- helpers --------------------------------------------------------------------------

    def _indexed_path(self, path: str) -> int:
        """The id of the indexed item at ``path``; any other path is refused unread."""
        record = self.index.item_at(path)
        if record is None:
            raise QueryError(f"{path} is not an indexed file: only indexed items can be used")
        return record.id


def item_thumbnail(index: Index, item_id: int, size: int = MAX_SIDE) -> bytes:
    """The JPEG thumbnail of indexed image ``item_id``, longest side at most MAX_SIDE: the
    index's own (made only from a file verified to be the indexed content, cached in the
    index directory). Only that cache file is read here."""
    side = max(16, min(int(size), MAX_SIDE))
    path = index.thumbnail(item_id, side)
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as img:
        if max(img.size) <= MAX_SIDE:
            return data
        small = img.convert("RGB")
    small.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80)
    return out.getvalue()


def _item_image(index: Index, item_id: int) -> Image.Image:
    """An indexed image, read only after its bytes are checked against the catalog."""
    data = item_thumbnail(index, item_id, MAX_SIDE)
    return Image.open(io.BytesIO(data)).convert("RGB")


def decode_image(data: str) -> Image.Image:
    """Base64 image bytes as RGB, with bounded size.

    Raises:
        QueryError: not base64, not an image; ImageTooLargeError: too large.
    """
    if data.startswith("data:"):  # a data URL: the base64 follows the comma
        data = data.partition(",")[2]
    if len(data) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageTooLargeError(f"image over {MAX_IMAGE_BYTES:,} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise QueryError(f"the image is not valid base64: {exc}") from exc
    try:
        img = Image.open(io.BytesIO(raw))
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise ImageTooLargeError(f"image of {img.width}x{img.height} pixels is too large")
        return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise QueryError(f"cannot read the image: {exc}") from exc


def _k(k: int) -> int:
    k = int(k)
    if k < 1:
        raise QueryError("k must be at least 1")
    return min(k, MAX_K)


def _filters(data: dict[str, Any] | None) -> Filters | None:
    """Filters from a tool's argument: path_glob, extensions, after, before (ISO dates),
    min_width, min_height, tags, min_score."""
    if not data:
        return None
    known = set(Filters.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise QueryError(f"unknown filter {unknown[0]!r}: use {', '.join(sorted(known))}")
    values = dict(data)
    for key in ("after", "before"):
        if isinstance(values.get(key), str):
            values[key] = parse_date(values[key])
    for key in ("extensions", "tags"):
        if isinstance(values.get(key), str):
            values[key] = (values[key],)
    return Filters.from_dict(values)


def _hit(hit: Hit) -> dict[str, Any]:
    out: dict[str, Any] = {"id": hit.id, "score": round(hit.score, 4), "modality": hit.modality}
    for name in ("path", "text", "width", "height"):
        value = getattr(hit, name)
        if value is not None:
            out[name] = value
    if hit.tags:
        out["tags"] = list(hit.tags[:5])
    if hit.part_scores is not None:
        out["part_scores"] = [round(s, 4) for s in hit.part_scores]
    if hit.duplicates:
        out["duplicates"] = list(hit.duplicates)
    return out


def _hits(hits: list[Hit], **extra: Any) -> dict[str, Any]:
    return {**extra, "hits": [_hit(h) for h in hits]}


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="seconds")


def _rounded(scores: dict[str, float]) -> dict[str, float]:
    return {label: round(p, 4) for label, p in scores.items()}
