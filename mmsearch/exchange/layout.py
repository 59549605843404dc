"""Writing and reading the export files (see the package docstring for the layout)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..catalog_base import ItemRecord
from ..errors import InvalidValueError, MMSearchError

MODEL_FILE = "mmsearch_model.json"
#: Item columns exported beside each embedding (and read back by the import).
COLUMNS = (
    "id",
    "modality",
    "image_path",
    "caption",
    "source",
    "content_hash",
    "size",
    "mtime_ns",
    "width",
    "height",
    "taken_at",
)
BATCH = 20000


class CatalogReads(Protocol):
    """What an export reads (the catalog satisfies it)."""

    def ids(self, modality: str) -> np.ndarray: ...

    def records(self, ids: Any) -> dict[int, ItemRecord]: ...

    def embeddings(self, ids: Any, dim: int) -> tuple[list[int], np.ndarray]: ...


@dataclass
class ExportReport:
    """What an export wrote: items per modality and the files."""

    images: int = 0
    texts: int = 0
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"images": self.images, "texts": self.texts, "files": self.files}


@dataclass
class ImportRows:
    """An export read back: the model record it names, and catalog rows with embeddings."""

    model: dict[str, Any] | None
    dim: int
    rows: list[dict[str, Any]]


def _pa() -> Any:
    try:  # pyarrow: a large native library, only for export and import
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MMSearchError("export and import need pyarrow: pip install pyarrow") from exc
    return pa, pq


def _rows(catalog: CatalogReads, modality: str, dim: int) -> Iterator[tuple[list, np.ndarray]]:
    """(records, float32 embeddings) of a modality's items, in id order, in batches."""
    ids = catalog.ids(modality)
    for start in range(0, len(ids), BATCH):
        chunk = [int(i) for i in ids[start : start + BATCH]]
        found, vectors = catalog.embeddings(chunk, dim)
        records = catalog.records(found)
        yield [records[i] for i in found], vectors


def _meta(record: ItemRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "modality": record.modality,
        "image_path": record.path,
        "caption": record.text,
        "source": record.source,
        "content_hash": record.content_hash,
        "size": record.size,
        "mtime_ns": record.mtime_ns,
        "width": record.width,
        "height": record.height,
        "taken_at": record.taken_at,
    }


def _collect(catalog: CatalogReads, modality: str, dim: int) -> tuple[list[dict], np.ndarray]:
    metas: list[dict[str, Any]] = []
    parts = []
    for records, vectors in _rows(catalog, modality, dim):
        metas.extend(_meta(r) for r in records)
        parts.append(vectors)
    return metas, (np.concatenate(parts) if parts else np.zeros((0, dim), np.float32))


def _table(metas: list[dict[str, Any]], url: str | None = None) -> Any:
    pa, _ = _pa()
    columns = {name: [m[name] for m in metas] for name in COLUMNS}
    if url is not None:  # clip-retrieval's front end shows each row's ``url``
        columns["url"] = [url.format(id=m["id"]) for m in metas]
    types = {"size": pa.int64(), "mtime_ns": pa.int64(), "width": pa.int32()}
    types |= {"height": pa.int32(), "taken_at": pa.float64(), "id": pa.int64()}
    arrays = {k: pa.array(v, type=types.get(k, pa.string())) for k, v in columns.items()}
    return pa.table(arrays)


def export_clip_layout(
    catalog: CatalogReads, model: dict[str, Any], out: Path, url: str | None = None
) -> ExportReport:
    """Write the index's embeddings in clip-retrieval's layout under ``out``.

    Args:
        catalog: what to read.
        model: the index's model record (identity, dim …), written beside the files.
        out: the folder (created; existing export files in it are replaced).
        url: a template of each image's ``url`` column, e.g.
            ``http://127.0.0.1:8765/api/items/{id}/thumbnail`` (default: none).
    """
    _, pq = _pa()
    dim = int(model["dim"])
    report = ExportReport()
    for folder in ("img_emb", "text_emb", "metadata"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    for modality, emb, meta in (
        ("image", "img_emb/img_emb_0.npy", "metadata/metadata_0.parquet"),
        ("text", "text_emb/text_emb_0.npy", "metadata/text_metadata_0.parquet"),
    ):
        metas, vectors = _collect(catalog, modality, dim)
        np.save(out / emb, vectors.astype(np.float16))
        pq.write_table(_table(metas, url if modality == "image" else None), out / meta)
        report.files += [str(out / emb), str(out / meta)]
        if modality == "image":
            report.images = len(metas)
        else:
            report.texts = len(metas)
    (out / MODEL_FILE).write_text(json.dumps(model, indent=2) + "\n")
    report.files.append(str(out / MODEL_FILE))
    return report


def export_parquet(catalog: CatalogReads, model: dict[str, Any], out: Path) -> ExportReport:
    """Write every item (images, then texts) with its embedding to one Parquet file: the
    metadata columns, ``embedding`` (a list of float32), and the model record in the
    file's metadata (key ``mmsearch_model``)."""
    pa, pq = _pa()
    dim = int(model["dim"])
    metas_i, vec_i = _collect(catalog, "image", dim)
    metas_t, vec_t = _collect(catalog, "text", dim)
    table = _table(metas_i + metas_t)
    vectors = np.concatenate([vec_i, vec_t]).astype(np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    table = table.append_column("embedding", pa.FixedSizeListArray.from_arrays(flat, dim))
    table = table.replace_schema_metadata({"mmsearch_model": json.dumps(model)})
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return ExportReport(len(metas_i), len(metas_t), [str(out)])


def read_export(source: Path) -> ImportRows:
    """An export (a clip-retrieval folder or one Parquet file) as catalog rows.

    Raises:
        InvalidValueError: not an export, or its rows and embeddings disagree.
    """
    if source.is_dir():
        return _read_folder(source)
    if source.suffix == ".parquet" and source.is_file():
        return _read_parquet(source)
    raise InvalidValueError(f"{source}: neither a clip-retrieval folder nor a .parquet file")


def _read_folder(folder: Path) -> ImportRows:
    _, pq = _pa()
    model_file = folder / MODEL_FILE
    model = json.loads(model_file.read_text()) if model_file.exists() else None
    rows: list[dict[str, Any]] = []
    dim = 0
    for emb_dir, prefix, meta_prefix, modality in (
        ("img_emb", "img_emb_", "metadata_", "image"),
        ("text_emb", "text_emb_", "text_metadata_", "text"),
    ):
        for emb in sorted((folder / emb_dir).glob(f"{prefix}*.npy"), key=_shard):
            vectors = np.load(emb).astype(np.float32)
            meta = folder / "metadata" / f"{meta_prefix}{_shard(emb)}.parquet"
            if not meta.exists():
                raise InvalidValueError(f"{emb} has no metadata file {meta}")
            table = pq.read_table(meta).to_pylist()
            if len(table) != len(vectors):
                raise InvalidValueError(
                    f"{meta}: {len(table)} rows for {len(vectors)} embeddings in {emb}"
                )
            dim = dim or int(vectors.shape[1]) if vectors.ndim == 2 and len(vectors) else dim
            rows += [_row(m, v, modality) for m, v in zip(table, vectors, strict=True)]
    if not rows and not (folder / "img_emb").is_dir():
        raise InvalidValueError(f"{folder}: no img_emb/ folder: not clip-retrieval's layout")
    return ImportRows(model, dim or int((model or {}).get("dim", 0)), rows)


def _read_parquet(path: Path) -> ImportRows:
    _, pq = _pa()
    table = pq.read_table(path)
    raw = (table.schema.metadata or {}).get(b"mmsearch_model")
    model = json.loads(raw) if raw else None
    if "embedding" not in table.column_names:
        raise InvalidValueError(f"{path}: no embedding column")
    vectors = np.array(table.column("embedding").to_pylist(), dtype=np.float32)
    metas = table.drop(["embedding"]).to_pylist()
    rows = [_row(m, v, m.get("modality") or "image") for m, v in zip(metas, vectors, strict=True)]
    dim = int(vectors.shape[1]) if len(vectors) else int((model or {}).get("dim", 0))
    return ImportRows(model, dim, rows)


def _row(meta: dict[str, Any], vector: np.ndarray, modality: str) -> dict[str, Any]:
    """A catalog row from an exported row (its old id is not kept: ids are the catalog's)."""
    row: dict[str, Any] = {"modality": modality, "embedding": vector}
    if modality == "image":
        row["path"] = meta.get("image_path")
    else:
        row["text"] = meta.get("caption")
        row["source"] = meta.get("source")
    for name in ("content_hash", "size", "mtime_ns", "width", "height", "taken_at"):
        if meta.get(name) is not None:
            row[name] = meta[name]
    return row


def _shard(path: Path) -> int:
    digits = path.stem.rsplit("_", 1)[-1]
    return int(digits) if digits.isdigit() else 0
