"""Every read of the catalog, written once in plain SQL (:class:`CatalogReads`), and a
read-only view of the catalog through the stdlib ``sqlite3`` (:class:`CatalogReader`).

Importing SQLAlchemy and declaring the ORM costs about 0.7 s of a cold ``mmsearch query``
(more than the query itself), and a query only reads. :class:`CatalogReads` holds each read
once; :class:`CatalogReader` runs them on a ``sqlite3`` connection and writes nothing; the
full :class:`mmsearch.catalog.Catalog` (SQLAlchemy: schema, migrations, writes) inherits
the same reads and runs them on its engine. No query is written twice.

It opens only a catalog it can read as it is: the schema version it knows, every table
present, a catalog id recorded. Anything else (a catalog to migrate, a damaged or foreign
file) is left to :class:`~mmsearch.catalog.Catalog`, which migrates it or raises the
right error (:meth:`CatalogReader.open` returns None).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .catalog_base import (
    LEGACY_FILE_HASH,
    ItemRecord,
    RootRecord,
    SkipRecord,
    decode_path,
    encode_path,
    from_blobs,
    read_only_uri,
    settings_from,
    storage_error,
    writable,
)
from .config import IndexSettings
from .errors import IndexCorruptError
from .query import Filters

logger = logging.getLogger(__name__)

#: The catalog schema version this reader reads (``mmsearch.catalog.SCHEMA_VERSION``; a
#: test holds them equal). A catalog of any other version is opened by the ORM instead.
SCHEMA_VERSION = 4
#: Tables the schema of :data:`SCHEMA_VERSION` has.
TABLES = frozenset({"items", "meta", "tags", "skipped_files", "roots", "trash"})
#: Columns of an :class:`~mmsearch.catalog_base.ItemRecord`, in its field order.
_RECORD_COLUMNS = (
    "id, modality, path, text, source, size, mtime_ns, content_hash, width, height, taken_at"
)
#: Columns each table must have for the reads below (a catalog missing one is opened by
#: the ORM, which adds it: see ``mmsearch.catalog``).
COLUMNS = {"items": frozenset(c.strip() for c in _RECORD_COLUMNS.split(","))}
_CHUNK = 500  # ids bound per statement


class CatalogReads:
    """Every read of the catalog, as plain SQL run by :meth:`_all`, which a subclass
    provides (a ``sqlite3`` connection; SQLAlchemy's engine). New reads go here."""

    path: Path

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    # -- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._all("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    @property
    def catalog_id(self) -> str:
        """The catalog's random id (present: :meth:`open` checks it)."""
        return self.get_meta("catalog_id") or ""

    @property
    def schema_version(self) -> int:
        return int(self.get_meta("schema_version") or 0)

    @property
    def file_hash(self) -> str:
        """As :attr:`mmsearch.catalog.Catalog.file_hash`."""
        return self.get_meta("file_hash") or LEGACY_FILE_HASH

    def model_info(self) -> dict[str, Any] | None:
        """The model the index was built with: model, pretrained, identity, display, dim."""
        raw = self.get_meta("model")
        return json.loads(raw) if raw else None

    def settings(self) -> IndexSettings:
        """The user's vector-index choices (defaults where none were made)."""
        return settings_from(self.get_meta)

    def generation(self, modality: str) -> int:
        """A counter bumped by every change to ``modality``'s items."""
        return int(self.get_meta(f"generation:{modality}") or 0)

    # -- items --------------------------------------------------------------------------

    def count(self, modality: str | None = None) -> int:
        if modality:
            rows = self._all("SELECT count(id) FROM items WHERE modality = ?", (modality,))
        else:
            rows = self._all("SELECT count(id) FROM items")
        return int(rows[0][0] or 0)

    def ids(self, modality: str) -> np.ndarray:
        rows = self._all("SELECT id FROM items WHERE modality = ? ORDER BY id", (modality,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def records(self, ids: Iterable[int]) -> dict[int, ItemRecord]:
        """Rows by id (missing ids are absent from the result)."""
        out: dict[int, ItemRecord] = {}
        for chunk in _chunks([int(i) for i in ids]):
            sql = f"SELECT {_RECORD_COLUMNS} FROM items WHERE id IN ({_marks(chunk)})"
            for row in self._all(sql, chunk):
                out[row[0]] = _record(row)
        return out

    def find_path(self, path: str) -> ItemRecord | None:
        sql = f"SELECT {_RECORD_COLUMNS} FROM items WHERE path = ?"
        rows = self._all(sql, (encode_path(path),))
        return _record(rows[0]) if rows else None

    def embeddings(
        self, ids: Sequence[int], dim: int, modality: str | None = None
    ) -> tuple[list[int], np.ndarray]:
        """Stored embeddings of ``ids`` (of ``modality``, if given) as float32 rows, in the
        order given; ids not in the catalog are left out. Returns (ids found, matrix)."""
        found: dict[int, bytes] = {}
        for chunk in _chunks([int(i) for i in ids]):
            sql = f"SELECT id, embedding FROM items WHERE id IN ({_marks(chunk)})"
            params: list[Any] = list(chunk)
            if modality is not None:  # "+": look ids up by rowid, not scan the modality index
                sql += " AND +modality = ?"
                params.append(modality)
            found.update(self._all(sql, params))
        present = [int(i) for i in ids if int(i) in found]
        return present, from_blobs([found[i] for i in present], dim)

    def embeddings_by_hash(self, modality: str, hashes: Iterable[str]) -> dict[str, bytes]:
        """For each content hash already stored, one stored embedding (for reuse)."""
        out: dict[str, bytes] = {}
        for chunk in _chunks(sorted(set(hashes))):
            sql = (
                "SELECT content_hash, embedding FROM items "
                f"WHERE modality = ? AND content_hash IN ({_marks(chunk)})"
            )
            for digest, blob in self._all(sql, [modality, *chunk]):
                out.setdefault(digest, blob)
        return out

    def iter_embeddings(
        self, modality: str, dim: int, batch: int = 20000, after: int = -1
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """A modality's (ids, float32 vectors) with id > ``after``, in id order, ``batch``
        rows at a time."""
        last = after
        # "+modality": walk the rowids above ``after`` (none, when the store is caught up)
        # instead of the whole modality index and a sort: 20 ms → 0 at 100k items.
        sql = "SELECT id, embedding FROM items WHERE +modality = ? AND id > ? ORDER BY id LIMIT ?"
        while True:
            rows = self._all(sql, (modality, last, batch))
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            yield ids, from_blobs([r[1] for r in rows], dim)
            last = int(ids[-1])

    def filter_ids(self, modality: str, filters: Filters) -> np.ndarray:
        """Sorted ids of ``modality``'s items that pass ``filters`` (min_score aside)."""
        where, params = ["modality = ?"], [modality]
        glob = filters.glob()
        if glob:
            where.append("path GLOB ?")
            params.append(encode_path(glob))
        exts = filters.normalised_extensions()
        if exts:
            where.append("(" + " OR ".join(["lower(path) LIKE ?"] * len(exts)) + ")")
            params.extend(f"%{e}" for e in exts)
        for column, op, value in (
            ("taken_at", ">=", filters.after),
            ("taken_at", "<", filters.before),
            ("width", ">=", filters.min_width or None),
            ("height", ">=", filters.min_height or None),
        ):
            if value is not None:
                where.append(f"{column} {op} ?")
                params.append(value)
        for tag in filters.tags:
            where.append("id IN (SELECT item_id FROM tags WHERE tag = ?)")
            params.append(tag)
        for folder in filters.exclude_under:  # offline roots' items, unless asked for
            prefix = folder.rstrip("/") + "/"
            where.append("(path IS NULL OR substr(path, 1, ?) != ?)")
            params.extend((len(prefix), encode_path(prefix)))
        sql = f"SELECT id FROM items WHERE {' AND '.join(where)} ORDER BY id"
        rows = self._all(sql, params)
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    # -- tags, skipped files --------------------------------------------------------------

    def tags_of(self, ids: Iterable[int]) -> dict[int, list[tuple[str, float]]]:
        """Each item's tags with their scores, best first (items without tags are absent)."""
        out: dict[int, list[tuple[str, float]]] = {}
        for chunk in _chunks([int(i) for i in ids]):
            sql = (
                "SELECT item_id, tag, score FROM tags "
                f"WHERE item_id IN ({_marks(chunk)}) ORDER BY score DESC"
            )
            for item_id, tag, score in self._all(sql, chunk):
                out.setdefault(item_id, []).append((tag, score))
        return out

    def tag_counts(self) -> dict[str, int]:
        """Items per tag, most frequent first."""
        rows = self._all("SELECT tag, count(*) FROM tags GROUP BY tag")
        return dict(sorted(((t, int(n)) for t, n in rows), key=lambda r: (-r[1], r[0])))

    def skipped_files(self) -> list[SkipRecord]:
        """Every remembered bad file, by path."""
        sql = "SELECT path, size, mtime_ns, reason FROM skipped_files ORDER BY path"
        return [SkipRecord(*row) for row in self._all(sql)]

    def trashed(self, hashes: Iterable[str]) -> dict[str, int]:
        """For each content hash in the trash, the old id of one item that held it (the
        most recently removed)."""
        out: dict[str, int] = {}
        for chunk in _chunks(sorted(set(hashes))):
            sql = (
                "SELECT content_hash, id FROM trash "
                f"WHERE content_hash IN ({_marks(chunk)}) ORDER BY removed_at"
            )
            out.update(self._all(sql, chunk))
        return out

    def trash_hashes(self) -> set[str]:
        return {h for (h,) in self._all("SELECT content_hash FROM trash")}

    def trash_count(self) -> int:
        return int(self._all("SELECT count(*) FROM trash")[0][0])

    def roots(self) -> list[RootRecord]:
        """Every folder indexed, as the last run saw it, by path."""
        sql = (
            "SELECT path, device, mount_point, items, online, reason, checked_at "
            "FROM roots ORDER BY path"
        )
        return [
            RootRecord(decode_path(p) or "", d, decode_path(m), int(n or 0), bool(o), r or "", t)
            for p, d, m, n, o, r, t in self._all(sql)
        ]

    def offline_roots(self) -> list[str]:
        """The folders the last run could not see: their items are kept, and left out of
        results unless asked for."""
        rows = self._all("SELECT path FROM roots WHERE online = 0 ORDER BY path")
        return [decode_path(p) or "" for (p,) in rows]

    def count_under(self, folder: str) -> int:
        """Image items whose path lies under ``folder``."""
        prefix = folder.rstrip("/") + "/"
        sql = "SELECT count(*) FROM items WHERE modality = 'image' AND substr(path, 1, ?) = ?"
        return int(self._all(sql, (len(prefix), encode_path(prefix)))[0][0])

    def image_files(self) -> list[ItemRecord]:
        """Every image item, without embeddings."""
        sql = f"SELECT {_RECORD_COLUMNS} FROM items WHERE modality = 'image' ORDER BY id"
        return [_record(row) for row in self._all(sql)]

    def text_hashes(self) -> set[str]:
        return {h for (h,) in self._all("SELECT content_hash FROM items WHERE modality = 'text'")}

    def undated_images(self) -> list[ItemRecord]:
        """Images whose capture date was never read (e.g. indexed by schema v1)."""
        sql = (
            f"SELECT {_RECORD_COLUMNS} FROM items "
            "WHERE modality = 'image' AND taken_at IS NULL ORDER BY id"
        )
        return [_record(row) for row in self._all(sql)]

    def dates(self, ids: Iterable[int]) -> dict[int, float | None]:
        out: dict[int, float | None] = {}
        for chunk in _chunks([int(i) for i in ids]):
            sql = f"SELECT id, taken_at FROM items WHERE id IN ({_marks(chunk)})"
            out.update((i, t) for i, t in self._all(sql, chunk))
        return out


class CatalogReader(CatalogReads):
    """Reads of one catalog file, without SQLAlchemy. Use :meth:`open`.

    Safe to share between threads: one connection, one read at a time.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._db = connection
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path) -> CatalogReader | None:
        """The reader of the catalog at ``path``, or None when the ORM catalog must open
        it (missing, empty, damaged, foreign, older or newer schema, no catalog id)."""
        path = Path(path)
        try:
            if path.stat().st_size == 0:
                return None
            if writable(path):
                connection = sqlite3.connect(path, check_same_thread=False)
            else:
                connection = sqlite3.connect(read_only_uri(path), uri=True, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            logger.debug("catalog reader: cannot open %s: %s", path, exc)
            return None
        reader = cls(path, connection)
        try:
            connection.execute("PRAGMA busy_timeout=10000")
            why = reader._unreadable()
        except sqlite3.Error as exc:
            why = str(exc)
        if why:
            logger.debug("catalog reader: %s: %s; opening it with the ORM", path, why)
            reader.close()
            return None
        return reader

    def _unreadable(self) -> str | None:
        """Why this reader cannot serve the file (None when it can)."""
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        missing = TABLES - {name for (name,) in rows}
        if missing:
            return f"no table {', '.join(sorted(missing))}"
        version = self.get_meta("schema_version")
        if version != str(SCHEMA_VERSION):
            return f"schema version {version}, this reader reads {SCHEMA_VERSION}"
        if not self.get_meta("catalog_id"):
            return "no catalog id yet"
        for table, wanted in COLUMNS.items():
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if wanted - have:
                return f"table {table} lacks {', '.join(sorted(wanted - have))}"
        return None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> CatalogReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, held by this thread; SQLite errors raised as the catalog's."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                error = storage_error(self.path, exc)
                if error is not None:
                    raise error from exc
                if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
                    exc, sqlite3.OperationalError
                ):
                    raise IndexCorruptError(f"cannot read catalog {self.path}: {exc}") from exc
                raise

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._reading() as db:
            return db.execute(sql, params).fetchall()


def _record(row: tuple[Any, ...]) -> ItemRecord:
    values = list(row)
    values[2], values[4] = decode_path(values[2]), decode_path(values[4])  # path, source
    return ItemRecord(*values)


def _marks(chunk: Sequence[Any]) -> str:
    return ", ".join("?" * len(chunk))


def _chunks(seq: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), _CHUNK):
        yield seq[start : start + _CHUNK]
