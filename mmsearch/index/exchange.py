"""The ``Index`` facade's doors for other tools: items looked up by their file (MCP refuses
any other path), and embeddings exported to / imported from clip-retrieval's layout and
Parquet (:mod:`mmsearch.exchange`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..catalog_base import ItemRecord
from ..errors import InputError, InvalidValueError, MMSearchError, ModelMismatchError
from ..exchange import ExportReport, export_clip_layout, export_parquet, read_export
from ..media import content_hash
from ..models import model_record
from ..results import RunSummary, Skipped
from .common import TARGETS, _writer

if TYPE_CHECKING:
    from .facade import Index


class ExchangeMethods:
    """Mixed into :class:`~mmsearch.index.Index`."""

    def item_at(self: Index, path: str | os.PathLike[str]) -> ItemRecord | None:
        """The indexed item whose file is ``path`` (absolute, symlinks as given), or None:
        callers that must never read a file outside the index (MCP) ask this first."""
        return self._reads.find_path(os.path.abspath(Path(path).expanduser()))

    def item_tags(self: Index, item_id: int) -> list[tuple[str, float]]:
        """The tags of one item with their scores, best first (empty: none)."""
        return self._reads.tags_of([int(item_id)]).get(int(item_id), [])

    # -- embeddings out and in (mmsearch.exchange) -----------------------------------------

    def export_embeddings(
        self: Index,
        out: str | os.PathLike[str],
        format: str = "clip",
        url: str | None = None,
    ) -> ExportReport:
        """Write every item's embedding and metadata: ``format="clip"``, clip-retrieval's
        layout under the folder ``out`` (``url``: a template of each image's ``url``
        column, ``{id}`` replaced); ``"parquet"``, one Parquet file ``out``.

        Raises:
            MMSearchError: an empty index, an unknown format, pyarrow missing.
        """
        self._check_reembed_done()
        model = self.model_info
        if model is None:
            raise MMSearchError("the index is empty: nothing to export")
        path = Path(out).expanduser()
        if format == "clip":
            return export_clip_layout(self._reads, model, path, url)
        if format == "parquet":
            return export_parquet(self._reads, model, path)
        raise InvalidValueError(f"unknown export format {format!r}: use clip or parquet")

    @_writer
    def import_embeddings(self: Index, source: str | os.PathLike[str]) -> RunSummary:
        """Store the items of an export (:meth:`export_embeddings`' clip-retrieval folder or
        Parquet file) with their embeddings, encoding nothing: searchable at once. Items
        already present (same path, same text) are left as they are.

        Raises:
            ModelMismatchError: the export's model is not this index's (or the one asked
                for); MMSearchError: a different dimension, or an export without a model
                record imported into an index with no model.
        """
        self._check_reembed_done()
        data = read_export(Path(source).expanduser())
        record = self._import_model(data.model, data.dim)
        summary = RunSummary()
        known_texts = self.catalog.text_hashes()
        rows = []
        for row in data.rows:
            reason = self._import_reason(row, known_texts)
            if reason:
                summary.skipped.append(Skipped(str(row.get("path") or row.get("text")), reason))
                continue
            rows.append(row)
        self.catalog.claim_model(record)
        for start in range(0, len(rows), 5000):
            self.catalog.add(rows[start : start + 5000])
        summary.added = len(rows)
        self._reload_model_info()
        for modality in TARGETS:
            self.refresh(modality)
        return summary

    def _import_model(self: Index, exported: dict[str, Any] | None, dim: int) -> dict[str, Any]:
        """The model record the imported embeddings are stored under, checked."""
        stored = self.model_info
        asked = None
        if self._requested is not None:  # its real dimension: the model is loaded to know it
            asked = model_record(self._requested, self.encoder().dim)
        record = exported or stored or asked
        if record is None:
            raise MMSearchError(
                "the export names no model and the index has none: give the model "
                "the embeddings were made with (--model)"
            )
        for other in (stored, asked):
            if other is not None and other["identity"] != record["identity"]:
                raise ModelMismatchError(other["display"], record["display"])
        if dim and int(record["dim"]) != dim:
            raise MMSearchError(
                f"the embeddings have {dim} dimensions but model {record['display']} "
                f"makes {record['dim']}: they are not this model's"
            )
        return record

    def _import_reason(self: Index, row: dict[str, Any], known_texts: set[str]) -> str | None:
        """Why ``row`` is not imported (None: it is)."""
        if row["modality"] == "text":
            if not row.get("text") or not row.get("content_hash"):
                return "a text row without its text or content hash"
            if row["content_hash"] in known_texts:
                return "already in the index"
            known_texts.add(row["content_hash"])
            return None
        path = row.get("path")
        if not path:
            return "an image row without image_path"
        if self._reads.find_path(path) is not None:
            return "already in the index"
        if not row.get("content_hash"):
            try:
                row["content_hash"] = content_hash(Path(path), algorithm=self._reads.file_hash)
            except InputError as exc:
                return f"no content_hash and the file cannot be read: {exc.reason}"
        return None
