"""The server's one door into the index: searches and item look-ups, safe to call from the
thread pool that runs FastAPI's sync endpoints.

Everything the server needs from :class:`mmsearch.Index` goes through :class:`Backend`,
which uses only the facade's public methods (``search``, ``search_item``, ``item``,
``info``, ``query_encoder``, ``vectors``).

Thread safety: the ``Index`` holds the model, the in-memory FAISS indexes and the
embedding store, and refreshes them when another process adds items; none of that is
meant for concurrent use, so searches are serialised by one lock. Encoding and search are
CPU-bound and use every core already (torch and faiss thread internally), so parallel
searches would not finish sooner on a small machine — ``bench/serve.py`` measures it.
Catalog reads (metadata, thumbnails, files) need no lock: each opens its own session on
SQLAlchemy's thread-safe engine, and SQLite's WAL lets them read while an indexer writes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..catalog_base import ItemRecord
from ..errors import QueryError
from ..index import TARGETS, Index
from ..query import Query
from ..refine import SessionInfo, Turn
from ..results import Hit, IndexInfo
from ..sources.files import IndexedFile

logger = logging.getLogger(__name__)

#: Largest ``offset + k`` a search may ask for: deep pages cost as much as one big page.
MAX_DEPTH = 1000


@dataclass(frozen=True)
class Page:
    """One page of hits and where the next starts (None when there is no more)."""

    hits: list[Hit]
    next_offset: int | None
    text_encoder: str | None = None  # which text encoder encoded a text query
    parts: list[dict[str, Any]] | None = None  # an explained query's parts


class Backend:
    """Thread-safe searches over one open index.

    Args:
        index: an open index (the backend closes it in :meth:`close`).
    """

    def __init__(self, index: Index) -> None:
        self.index = index
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None, device: str | None = None) -> Backend:
        """Open an existing index and load its model and vector indexes now, so the first
        request does not pay for them.

        Raises:
            IndexNotFoundError: no index at ``path``.
        """
        backend = cls(Index.open(path, device=device, create=False))
        backend.warm_up()
        return backend

    @property
    def path(self) -> Path:
        return self.index.path

    @property
    def lock(self) -> threading.Lock:
        """The lock that serialises searches (other doors to the index share it)."""
        return self._lock

    def warm_up(self) -> None:
        """Load the model and each modality's vector index (nothing while empty)."""
        with self._lock:
            if self.index.model_info is None:
                return
            # The query encoder (ONNX when exported, else torch), its text tower opened now
            # rather than on the first request.
            self.index.query_encoder().encode_texts(["warm up"])
            for modality in TARGETS:
                self.index.vectors(modality)

    def close(self) -> None:
        with self._lock:
            self.index.close()

    # -- searches -----------------------------------------------------------------------

    def search_text(
        self,
        text: str,
        target: str,
        k: int,
        offset: int,
        lang: str | None = None,
        text_encoder: str | None = None,
    ) -> Page:
        """Items matching a text query; ``lang``/``text_encoder`` choose the index's text
        encoder (default: detected from the text's script)."""
        if not text.strip():
            raise QueryError("empty query: give a text or an image")
        depth = _depth(k, offset)
        with self._lock:
            hits = self.index.search(
                text, k=depth, target=target, lang=lang, text_encoder=text_encoder
            )
            tower = self.index.choose_text_encoder(text.strip(), lang, text_encoder)
        return dataclasses.replace(_page(hits, k, offset, depth), text_encoder=tower)

    def explain_text(
        self, text: str, target: str, k: int, offset: int, dedupe: bool = False
    ) -> Page:
        """Items matching a compound text query, ranked part-wise, each hit with its
        score on every part (see :meth:`mmsearch.Index.explain`)."""
        if not text.strip():
            raise QueryError("empty query: give a text or an image")
        depth = _depth(k, offset)
        with self._lock:
            result = self.index.explain(text, k=depth, target=target, dedupe=dedupe)
        page = _page(result.hits, k, offset, depth)
        return Page(page.hits, page.next_offset, parts=result.parts)

    def search_text_deduped(self, text: str, target: str, k: int, offset: int) -> Page:
        """:meth:`search_text` with near-duplicates folded into the best hit."""
        if not text.strip():
            raise QueryError("empty query: give a text or an image")
        depth = _depth(k, offset)
        with self._lock:
            hits = self.index.search(text, k=depth, target=target, dedupe=True)
        return _page(hits, k, offset, depth)

    def search_image(self, image: Image.Image, target: str, k: int, offset: int) -> Page:
        """Items matching a query image (already decoded, RGB)."""
        depth = _depth(k, offset)
        with self._lock:
            hits = self.index.search(image, k=depth, target=target)
        return _page(hits, k, offset, depth)

    def search_item(self, item_id: int, target: str, k: int, offset: int) -> Page:
        """Items like an indexed item ("more like this"), the item itself left out.

        Raises:
            ItemNotFoundError: no item ``item_id``.
        """
        depth = _depth(k, offset)
        with self._lock:
            hits = self.index.search_item(item_id, k=depth, target=target)
        return _page(hits, k, offset, depth)

    # -- look-ups -----------------------------------------------------------------------

    def item(self, item_id: int) -> ItemRecord:
        """The catalog record of ``item_id``.

        Raises:
            ItemNotFoundError: no such item.
        """
        return self.index.item(item_id)

    def open_file(self, item_id: int) -> IndexedFile:
        """The verified open file of an item (see :meth:`mmsearch.Index.open_item_file`);
        no lock: it reads the catalog and the disk only."""
        return self.index.open_item_file(item_id)

    def thumbnail(self, item_id: int, size: int) -> Path:
        """The cached thumbnail of an item, made from its verified file if needed."""
        return self.index.thumbnail(item_id, size)

    def info(self) -> IndexInfo:
        """What the index holds (refreshes stale vector indexes, hence the lock)."""
        with self._lock:
            return self.index.info()


def _depth(k: int, offset: int) -> int:
    if k < 1 or offset < 0:
        raise QueryError("k must be at least 1 and offset at least 0")
    if k + offset > MAX_DEPTH:
        raise QueryError(f"offset + k may be at most {MAX_DEPTH}")
    return k + offset


def _page(hits: list[Hit], k: int, offset: int, depth: int) -> Page:
    """Hits ``offset`` to ``offset + k`` of a search for ``depth`` hits."""
    more = len(hits) >= depth and depth < MAX_DEPTH
    return Page(hits[offset : offset + k], offset + k if more else None)


# -- search sessions -------------------------------------------------------------------------


class SessionBackend:
    """Search sessions over the backend's index (relevance feedback, see mmsearch.refine),
    serialised by the backend's lock like every search."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def start(self, name: str, query: Query, target: str, k: int) -> tuple[SessionInfo, Page]:
        """Start (or restart) session ``name`` with ``query``; its first page of hits."""
        depth = _depth(k, 0)
        with self._backend._lock:
            session = self._backend.index.session(name)
            hits = session.query(query, k=depth, target=target)
            return session.info(), _page(hits, k, 0, depth)

    def refine(
        self,
        name: str,
        more: Sequence[int],
        less: Sequence[int],
        text: str | None,
        k: int,
        show_marked: bool,
    ) -> tuple[SessionInfo, Page]:
        """Add a turn of feedback to session ``name``; the next first page of hits."""
        depth = _depth(k, 0)
        with self._backend._lock:
            session = self._backend.index.session(name)
            hits = session.refine(more, less, text, k=depth, show_marked=show_marked)
            return session.info(), _page(hits, k, 0, depth)

    def page(self, name: str, k: int, offset: int, show_marked: bool) -> tuple[SessionInfo, Page]:
        """A page of the session's hits as it stands (no turn is added)."""
        depth = _depth(k, offset)
        with self._backend._lock:
            session = self._backend.index.session(name)
            hits = session.search(k=depth, show_marked=show_marked)
            return session.info(), _page(hits, k, offset, depth)

    def show(self, name: str) -> tuple[SessionInfo, list[Turn]]:
        with self._backend._lock:
            session = self._backend.index.session(name)
            return session.info(), session.turns

    def list(self) -> list[SessionInfo]:
        with self._backend._lock:
            return self._backend.index.sessions()

    def drop(self, name: str) -> bool:
        with self._backend._lock:
            return self._backend.index.drop_session(name)
