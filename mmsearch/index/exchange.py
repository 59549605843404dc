"""The ``Index`` facade's doors for other tools: items looked up by their file (MCP refuses
any other path), and embeddings exported to / imported from clip-retrieval's layout and
Parquet (:mod:`mmsearch.exchange`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..catalog_base import ItemRecord

if TYPE_CHECKING:
    from .facade import Index


class ExchangeMethods:
    """Mixed into :class:`~mmsearch.index.Index`."""

    def item_at(self: Index, path: str | os.PathLike[str]) -> ItemRecord | None:
        """The indexed item whose file is ``path`` (absolute, symlinks as given), or None:
        callers that must never read a file outside the index (MCP) ask this first."""
        return self._reads.find_path(os.path.abspath(Path(path).expanduser()))

    @property
    def file_hash(self: Index) -> str:
        """The content-hash algorithm of this index's catalog (``blake3`` …)."""
        return self._reads.file_hash

    def item_tags(self: Index, item_id: int) -> list[tuple[str, float]]:
        """The tags of one item with their scores, best first (empty: none)."""
        return self._reads.tags_of([int(item_id)]).get(int(item_id), [])
