"""The catalog: one SQLite database (through SQLAlchemy 2.0) that is the index's truth.

It holds one row per item (image or text) whose integer id is also the item's FAISS id,
with its metadata and its embedding (float16), so the ANN indexes can always be rebuilt
without encoding anything again. A ``meta`` table holds the schema version, the model's
identity and a generation counter per modality that the vector indexes compare against.
"""

from __future__ import annotations

import json
import logging
import operator
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy import text as sql_text
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from .catalog_base import (
    FILE_HASH,
    ExampleFile,
    RootRecord,
    SessionRecord,
    SkipRecord,
    TurnRecord,
    decode_path,
    encode_path,
    from_blobs,
    to_blob,
)
from .catalog_base import read_only_uri as _read_only_uri
from .catalog_base import refuse_empty_file as _refuse_empty_file
from .catalog_base import storage_error as _storage_error
from .catalog_base import writable as _writable
from .catalog_reader import CatalogReads
from .config import IndexSettings
from .errors import (
    CatalogWriteError,
    IndexCorruptError,
    IndexNotFoundError,
    ModelMismatchError,
    SessionNotFoundError,
    StorageError,
)

logger = logging.getLogger(__name__)

#: Version of the schema this code writes. Bump it and add a migration when it changes.
SCHEMA_VERSION = 4


class FsText(TypeDecorator[str]):
    """A file system path (or a text holding one) as TEXT, whatever its bytes.

    Python hands undecodable file names over with lone surrogates (``b"\\xff.png"`` is
    ``"\\udcff.png"``), which SQLite's UTF-8 cannot hold. Such a value is stored as
    ``fsbytes:`` + its percent-encoded bytes and read back as the very same str, so the
    file can be found and opened again; every other value is stored as it is.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return encode_path(value)

    def process_result_value(self, value: str | None, dialect: Any) -> str | None:
        return decode_path(value)


class Base(DeclarativeBase):
    pass


class Item(Base):
    """One indexed image or text."""

    __tablename__ = "items"
    # AUTOINCREMENT: ids are never reused, so a stale vector can never point at a new item.
    __table_args__ = (
        Index("ix_items_modality_hash", "modality", "content_hash"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    modality: Mapped[str] = mapped_column(String(8))  # "image" | "text"
    path: Mapped[str | None] = mapped_column(FsText, unique=True)  # images: absolute path
    text: Mapped[str | None] = mapped_column(Text)  # texts: the text
    source: Mapped[str | None] = mapped_column(FsText)  # texts: "file.txt:12"
    size: Mapped[int | None] = mapped_column(Integer)  # bytes on disk
    mtime_ns: Mapped[int | None] = mapped_column(Integer)
    content_hash: Mapped[str] = mapped_column(String(64))  # blake2b of bytes / of the text
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float16, little endian
    added_at: Mapped[float] = mapped_column(Float)
    # images (v2): EXIF DateTimeOriginal, else the file's mtime, in seconds since the
    # epoch; NULL until read (an index built by v1 is back-filled by the next run).
    taken_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Tag(Base):
    """A label the zero-shot tagger gave an item, with its probability (v2)."""

    __tablename__ = "tags"
    __table_args__ = (Index("ix_tags_tag", "tag"),)

    item_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tag: Mapped[str] = mapped_column(Text, primary_key=True)
    score: Mapped[float] = mapped_column(Float)


class Meta(Base):
    """Key/value settings of the index."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class SkippedFile(Base):
    """A file that could not be indexed, remembered so an unchanged one is not decoded
    again on every run (a new table: ``create_all`` adds it to older catalogs)."""

    __tablename__ = "skipped_files"

    path: Mapped[str] = mapped_column(Text, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    mtime_ns: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)


class Root(Base):
    """A folder indexed (v4): its device and mount, how many items it held, and whether
    the last run could see it — a root it could not see is offline, its items kept."""

    __tablename__ = "roots"

    path: Mapped[str] = mapped_column(FsText, primary_key=True)
    device: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mount_point: Mapped[str | None] = mapped_column(FsText, nullable=True)
    items: Mapped[int] = mapped_column(Integer, default=0)
    online: Mapped[int] = mapped_column(Integer, default=1)
    reason: Mapped[str] = mapped_column(Text, default="")
    checked_at: Mapped[float] = mapped_column(Float, default=0.0)


class Trash(Base):
    """An image item that left the index (v4), kept with its embedding and tags for a
    while: the same content coming back — under any path — is restored under its old id
    without encoding, and search sessions that marked it still resolve."""

    __tablename__ = "trash"
    __table_args__ = (Index("ix_trash_hash", "content_hash"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)  # the item's old id
    modality: Mapped[str] = mapped_column(String(8))
    path: Mapped[str | None] = mapped_column(FsText)
    content_hash: Mapped[str] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    taken_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    tags: Mapped[str] = mapped_column(Text, default="[]")  # JSON [[tag, score], …]
    removed_at: Mapped[float] = mapped_column(Float)


class SearchSession(Base):
    """A named search session (v3): what its turns are searched with and against."""

    __tablename__ = "search_sessions"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    model: Mapped[str] = mapped_column(Text)  # identity of the model its vectors come from
    target: Mapped[str] = mapped_column(String(8))  # "image" | "text"
    settings: Mapped[str] = mapped_column(Text)  # JSON: Rocchio weights, k


class SessionTurn(Base):
    """One turn of a session (v3): turn 0 holds the starting query, later turns the
    feedback given (item ids as JSON lists, a follow-up text and its vector)."""

    __tablename__ = "search_session_turns"

    session: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    created: Mapped[float] = mapped_column(Float)
    query: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: Query.to_dict()
    query_vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    text_vector: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    more: Mapped[str] = mapped_column(Text, default="[]")
    less: Mapped[str] = mapped_column(Text, default="[]")
    shown: Mapped[str] = mapped_column(Text, default="[]")  # ids of the hits shown


class SessionFile(Base):
    """An image file (not an indexed item) given as an example in a turn (v3), with its
    vector: the file may change or go, the session must not."""

    __tablename__ = "search_session_files"

    session: Mapped[str] = mapped_column(Text, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    role: Mapped[str] = mapped_column(String(8), primary_key=True)  # "more" | "less"
    path: Mapped[str] = mapped_column(FsText, primary_key=True)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)  # float16, like items'


def _v1_to_v2(s: Session) -> None:
    """Capture dates (``items.taken_at``, NULL: back-filled by the next index run) and the
    ``tags`` table (``create_all`` made it already; kept here so the step is complete)."""
    columns = {c["name"] for c in inspect(s.connection()).get_columns("items")}
    if "taken_at" not in columns:
        s.execute(sql_text("ALTER TABLE items ADD COLUMN taken_at FLOAT"))
    Tag.__table__.create(s.connection(), checkfirst=True)


def _v2_to_v3(s: Session) -> None:
    """Search sessions: three new tables (``create_all`` made them already; kept here so
    the step is complete)."""
    for table in (SearchSession, SessionTurn, SessionFile):
        table.__table__.create(s.connection(), checkfirst=True)  # type: ignore[attr-defined]


def _add_missing_columns(s: Session) -> list[str]:
    """Add every column of the ORM tables that the database lacks (``create_all`` makes
    missing tables, never missing columns). New columns are nullable, so old rows read as
    NULL until a pass fills them. Returns the ``table.column`` names added."""
    inspector = inspect(s.connection())
    dialect = s.get_bind().dialect
    added = []
    for table in Base.metadata.sorted_tables:
        have = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have:
                continue
            if not column.nullable or column.primary_key:
                raise IndexCorruptError(
                    f"catalog column {table.name}.{column.name} is missing and cannot be "
                    "added (not nullable)"
                )
            kind = column.type.compile(dialect=dialect)
            s.execute(sql_text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            added.append(f"{table.name}.{column.name}")
    return added


def _v3_to_v4(s: Session) -> None:
    """Tables and columns added since v3 (each new table by ``create_all``, each new
    nullable column by :func:`_add_missing_columns`, which every writable open runs)."""
    _add_missing_columns(s)


#: Migrations: version N → N+1, run in order inside one transaction.
MIGRATIONS: dict[int, Callable[[Session], None]] = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the indexer
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL makes this durable enough and fast
    cursor.close()


def _interrupted_creation(s: Session, tables: set[str]) -> bool:
    """Whether a catalog with tables but no schema version is one of ours whose creation
    was cut short: a process killed after creating the tables (which SQLite commits one by
    one) and before recording the version. Only our tables, nothing in ``meta``, no items:
    finishing it loses nothing; anything else is refused as not ours."""
    if not tables <= set(Base.metadata.tables):
        return False
    empty = not s.scalar(select(func.count()).select_from(Meta))
    if empty and not s.scalar(select(func.count()).select_from(Item)):
        logger.info("finishing a catalog whose creation was interrupted")
        return True
    return False


class Catalog(CatalogReads):
    """The SQLite catalog of one index directory.

    Args:
        path: the database file.
        create: create it (and its schema) if it does not exist.

    A catalog this process cannot write (read-only media, no permission) is opened
    read-only (:attr:`read_only`): it answers every read, and a write raises StorageError.
    Any storage failure (disk full, I/O error) is raised as StorageError; the transaction
    it hit is rolled back, what was committed before stays.

    Its reads are :class:`~mmsearch.catalog_reader.CatalogReads`' (plain SQL, shared with
    the query path's reader), run on this catalog's engine by :meth:`_all`.
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise IndexNotFoundError(self.path.parent)
        _refuse_empty_file(self.path)
        creating = not self.path.exists()
        self.read_only = not creating and not _writable(self.path)
        if self.read_only:
            uri = _read_only_uri(self.path)
            self.engine: Engine = create_engine(
                "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
            )
        else:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError.from_os_error(exc, "creating the index directory") from exc
            self.engine = create_engine(f"sqlite:///{self.path}")
            event.listen(self.engine, "connect", _set_sqlite_pragmas)
        event.listen(self.engine, "handle_error", self._handle_error)
        try:
            self._init_schema()
        except StorageError:
            self.engine.dispose()
            if creating:  # a catalog this call began (e.g. on a full disk) holds nothing:
                _remove_database(self.path)  # leave none, so the next run can create it
            raise
        except DatabaseError as exc:
            self.engine.dispose()
            raise IndexCorruptError(f"cannot read catalog {self.path}: {exc}") from exc
        except BaseException:
            self.engine.dispose()
            raise

    def _handle_error(self, context: ExceptionContext) -> None:
        """Raise a full, read-only or failing disk as StorageError, not as SQL trouble."""
        error = _storage_error(self.path, context.original_exception)
        if error is not None:
            raise error from context.original_exception

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one read of :class:`CatalogReads` on the engine."""
        with self.engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql, tuple(params))]

    def session(self) -> Session:
        """A new session; use as ``with catalog.session() as s, s.begin(): ...``."""
        return Session(self.engine, expire_on_commit=False)

    # -- schema -------------------------------------------------------------------------

    def _init_schema(self) -> None:
        existed = self.path.exists() and self.path.stat().st_size > 0
        tables = set(inspect(self.engine).get_table_names())
        if existed and not tables:
            # A database file with no tables is not one we created (ours get their schema
            # in the same breath): refuse it rather than write a schema into it.
            raise IndexCorruptError(f"{self.path} is not an mmsearch catalog (no tables)")
        if tables and "meta" not in tables:
            # Another application's database: refuse it rather than write into it.
            raise IndexCorruptError(f"{self.path} is not an mmsearch catalog")
        if not self.read_only:  # a read-only catalog answers reads as it is, unmigrated
            Base.metadata.create_all(self.engine)
        with self.session() as s, s.begin():
            row = s.get(Meta, "schema_version")
            if row is None and tables and not _interrupted_creation(s, tables):
                raise IndexCorruptError(f"{self.path} is not an mmsearch catalog")
            if row is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
                s.add(Meta(key="catalog_id", value=uuid.uuid4().hex))
                s.add(Meta(key="file_hash", value=FILE_HASH))
                return
            version = int(row.value)
            if version > SCHEMA_VERSION:
                raise IndexCorruptError(
                    f"catalog {self.path} has schema version {version}, newer than this "
                    f"mmsearch understands ({SCHEMA_VERSION}): upgrade mmsearch"
                )
            if self.read_only and version < SCHEMA_VERSION:
                logger.info("read-only catalog of schema v%d: not migrated", version)
                return
            while version < SCHEMA_VERSION:
                logger.info("migrating catalog schema %d → %d", version, version + 1)
                MIGRATIONS[version](s)
                version += 1
            row.value = str(version)
            if not self.read_only:
                added = _add_missing_columns(s)
                if added:
                    logger.info("catalog: added columns %s", ", ".join(added))
                if s.get(Meta, "catalog_id") is None:  # catalogs that predate it get one
                    s.add(Meta(key="catalog_id", value=uuid.uuid4().hex))

    # -- meta ---------------------------------------------------------------------------

    def set_meta(self, key: str, value: str, session: Session | None = None) -> None:
        if session is not None:
            session.merge(Meta(key=key, value=value))
            return
        with self.session() as s, s.begin():
            s.merge(Meta(key=key, value=value))

    def set_model_info(self, info: dict[str, Any], session: Session | None = None) -> None:
        self.set_meta("model", json.dumps(info), session)

    def claim_model(self, record: dict[str, Any]) -> None:
        """Record the model whose embeddings are about to be stored, if the catalog has none
        yet; refuse one that is not the catalog's model."""
        with self.session() as s, s.begin():
            row = s.get(Meta, "model")
            if row is None:
                s.add(Meta(key="model", value=json.dumps(record)))
                return
            stored = json.loads(row.value)
            if stored["identity"] != record["identity"]:
                raise ModelMismatchError(stored["display"], record["display"])

    def save_settings(self, settings: IndexSettings) -> None:
        with self.session() as s, s.begin():
            self.set_meta("index_type", settings.index_type, s)
            self.set_meta("memory_budget", str(settings.memory_budget or ""), s)
            self.set_meta("recall_target", str(settings.recall_target), s)

    def _bump(self, s: Session, modalities: Iterable[str]) -> None:
        for modality in set(modalities):
            row = s.get(Meta, f"generation:{modality}")
            if row is None:
                s.add(Meta(key=f"generation:{modality}", value="1"))
            else:
                row.value = str(int(row.value) + 1)

    # -- reads --------------------------------------------------------------------------

    # -- writes -------------------------------------------------------------------------

    def add(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert items in one transaction; returns their new ids. Each row holds Item's
        columns; ``embedding`` may be a float vector or stored bytes."""
        return self.apply(add=rows)

    def update_many(self, changes: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Change columns of items (a renamed file, a new embedding) in one transaction."""
        self.apply(updates=changes)

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items; returns how many existed and were deleted."""
        wanted = _int_ids(ids)
        existing = len(self.records(wanted))
        self.apply(remove=wanted)
        return existing

    def apply(
        self,
        add: Sequence[dict[str, Any]] = (),
        remove: Iterable[int] = (),
        updates: Sequence[tuple[int, dict[str, Any]]] = (),
        new_ids: bool = True,
    ) -> list[int]:
        """Remove, update and add items in ONE transaction (so an interrupted run leaves the
        catalog as it was before the batch or after it, never half-way). Returns the new
        items' ids in the order of ``add`` (none with ``new_ids=False``: SQLite's RETURNING
        takes a statement a row, one ``executemany`` inserts them all at a third of that)."""
        now = time.time()
        removed = _int_ids(remove)
        changes = list(zip(_int_ids(i for i, _ in updates), [v for _, v in updates], strict=True))
        with self.session() as s, s.begin():
            modalities: set[str] = {r["modality"] for r in add}
            touched = removed + [i for i, _ in changes]
            for chunk in _chunks(touched, 500):
                modalities.update(s.scalars(select(Item.modality).where(Item.id.in_(chunk))))
            for chunk in _chunks(removed, 500):
                _to_trash(s, chunk, now)
                s.execute(delete(Item).where(Item.id.in_(chunk)))
                s.execute(delete(Tag).where(Tag.item_id.in_(chunk)))
            for item_id, values in changes:
                result = s.execute(
                    update(Item).where(Item.id == item_id).values(**_prepare(values))
                )
                if result.rowcount != 1:  # rolls the whole batch back: never a silent no-op
                    raise CatalogWriteError(f"update of item {item_id} matched no row")
            s.flush()  # a re-encoded file's old row must be gone before its path is reused
            ids: list[int] = []
            if add:
                # Bulk INSERTs rather than an ORM object per row (125 µs a row): the
                # indexing run's own thread commits every batch, and at GPU rates those
                # commits are much of what holds the GIL.
                if new_ids:
                    rows = [{**_prepare(r), "added_at": now} for r in add]
                    stmt = insert(Item).returning(Item.id, sort_by_parameter_order=True)
                    ids = list(s.scalars(stmt, rows))
                else:
                    self._insert_items(s, add, now)
            if modalities:
                self._bump(s, modalities)
            s.flush()
            return ids

    def _insert_items(self, s: Session, add: Sequence[dict[str, Any]], now: float) -> None:
        """INSERT ``add`` with one ``executemany`` of the driver, each value converted by its
        column type's own bind processor (as SQLAlchemy would): its ORM bulk INSERT spent
        ~45 µs a row in Python, holding the GIL, where the driver binds a row in C."""
        names = sorted({name for row in add for name in row} | {"added_at"})
        unknown = set(names) - _ITEM_COLUMNS
        if unknown:
            raise CatalogWriteError(f"no such item columns: {', '.join(sorted(unknown))}")
        dialect = s.get_bind().dialect
        procs = [Item.__table__.c[name].type.bind_processor(dialect) for name in names]
        columns = []
        for name, proc in zip(names, procs, strict=True):
            if name == "added_at":
                values: list[Any] = [now] * len(add)
            elif name == "embedding":
                values = [_blob(row.get(name)) for row in add]
            else:
                values = [row.get(name) for row in add]
            if proc is not None:
                values = [proc(v) for v in values]
            columns.append(values)
        sql = f"INSERT INTO items ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        s.connection().exec_driver_sql(sql, list(zip(*columns, strict=True)))

    # -- files that could not be indexed -------------------------------------------------

    def restore(self, rows: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Bring trashed items back under their old ids with new file columns (path,
        size, mtime_ns …), their embedding, size and tags as they were — one transaction."""
        if not rows:
            return
        now = time.time()
        with self.session() as s, s.begin():
            for old_id, values in rows:
                t = s.get(Trash, old_id)
                if t is None:
                    raise CatalogWriteError(f"item {old_id} is not in the trash")
                s.add(
                    Item(
                        id=old_id, modality=t.modality, content_hash=t.content_hash,
                        width=t.width, height=t.height, taken_at=t.taken_at,
                        embedding=t.embedding, added_at=now, **values,
                    )
                )  # fmt: skip
                s.add_all(Tag(item_id=old_id, tag=tag, score=sc) for tag, sc in json.loads(t.tags))
                s.delete(t)
            self._bump(s, {"image"})

    def empty_trash(self, older_than: float | None = None) -> int:
        """Forget trashed items removed more than ``older_than`` seconds ago (all: None);
        returns how many."""
        stmt = delete(Trash)
        if older_than is not None:
            stmt = stmt.where(Trash.removed_at < time.time() - older_than)
        with self.session() as s, s.begin():
            return int(s.execute(stmt).rowcount or 0)

    def save_roots(self, records: Iterable[RootRecord]) -> None:
        """Record the roots a run looked at (replacing what was known of them)."""
        with self.session() as s, s.begin():
            for r in records:
                s.merge(
                    Root(
                        path=r.path,
                        device=r.device,
                        mount_point=r.mount_point,
                        items=r.items,
                        online=int(r.online),
                        reason=r.reason,
                        checked_at=r.checked_at,
                    )
                )

    def remember_skipped(self, records: Iterable[SkipRecord]) -> None:
        """Remember (or update) bad files."""
        with self.session() as s, s.begin():
            for r in records:
                s.merge(SkippedFile(path=r.path, size=r.size, mtime_ns=r.mtime_ns, reason=r.reason))

    def forget_skipped(self, paths: Iterable[str]) -> None:
        """Forget bad files (changed, gone, or indexed after all)."""
        wanted = list(paths)
        with self.session() as s, s.begin():
            for chunk in _chunks(wanted, 500):
                s.execute(delete(SkippedFile).where(SkippedFile.path.in_(chunk)))

    def replace_embeddings(self, changes: Sequence[tuple[int, np.ndarray]]) -> None:
        """Store new embeddings for existing items (re-embedding with another model)."""
        self.update_many([(i, {"embedding": v}) for i, v in changes])

    # -- filters, dates, tags (schema v2) ----------------------------------------------

    def set_dates(self, dates: Sequence[tuple[int, float]]) -> None:
        """Record capture dates; not a content change, so no generation is bumped."""
        with self.session() as s, s.begin():
            for item_id, taken in dates:
                s.execute(update(Item).where(Item.id == item_id).values(taken_at=taken))

    def replace_tags(
        self, rows: Sequence[tuple[int, str, float]], clear: Iterable[int] | None = None
    ) -> None:
        """Store (item, tag, score) rows after deleting the tags of ``clear`` (item ids;
        None: every tag) — one transaction."""
        with self.session() as s, s.begin():
            if clear is None:
                s.execute(delete(Tag))
            else:
                for chunk in _chunks([int(i) for i in clear], 500):
                    s.execute(delete(Tag).where(Tag.item_id.in_(chunk)))
            s.add_all(Tag(item_id=i, tag=t, score=sc) for i, t, sc in rows)

    # -- search sessions (schema v3) ----------------------------------------------------

    def start_session(self, record: SessionRecord, first: TurnRecord) -> None:
        """Store a new session with its first turn, replacing any session of that name
        (its turns and files too) — one transaction."""
        with self.session() as s, s.begin():
            _delete_session(s, record.name)
            s.add(
                SearchSession(
                    name=record.name,
                    created=record.created,
                    updated=record.updated,
                    model=record.model,
                    target=record.target,
                    settings=json.dumps(record.settings),
                )
            )
            _add_turn(s, record.name, first)

    def add_turn(self, name: str, turn: TurnRecord) -> int:
        """Append a turn to session ``name``; returns its ``seq`` (``turn.seq`` is ignored:
        the next one is taken).

        Raises:
            SessionNotFoundError: no such session.
        """
        with self.session() as s, s.begin():
            row = s.get(SearchSession, name)
            if row is None:
                raise SessionNotFoundError(name)
            last = s.scalar(select(func.max(SessionTurn.seq)).where(SessionTurn.session == name))
            seq = -1 if last is None else int(last)
            row.updated = turn.created
            _add_turn(s, name, _with_seq(turn, seq + 1))
            return seq + 1

    def set_shown(self, name: str, seq: int, ids: Sequence[int]) -> None:
        """Record which hits turn ``seq`` of session ``name`` showed."""
        with self.session() as s, s.begin():
            s.execute(
                update(SessionTurn)
                .where(SessionTurn.session == name, SessionTurn.seq == seq)
                .values(shown=json.dumps(_int_ids(ids)))
            )

    def session_record(self, name: str) -> SessionRecord:
        """Session ``name`` (without its turns).

        Raises:
            SessionNotFoundError: no such session.
        """
        with self.session() as s:
            row = s.get(SearchSession, name)
            if row is None:
                raise SessionNotFoundError(name)
            count = s.scalar(select(func.count()).where(SessionTurn.session == name))
            return _session_record(row, int(count or 0))

    def list_sessions(self) -> list[SessionRecord]:
        """Every session, most recently used first."""
        counts = select(SessionTurn.session, func.count().label("n")).group_by(SessionTurn.session)
        with self.session() as s:
            found = {name: n for name, n in s.execute(counts)}
            rows = s.scalars(select(SearchSession).order_by(SearchSession.updated.desc()))
            return [_session_record(r, int(found.get(r.name, 0))) for r in rows]

    def session_turns(self, name: str, dim: int) -> list[TurnRecord]:
        """The turns of session ``name``, in order, with their vectors (``dim`` wide).

        Raises:
            SessionNotFoundError: no such session.
        """
        with self.session() as s:
            if s.get(SearchSession, name) is None:
                raise SessionNotFoundError(name)
            turns = s.scalars(
                select(SessionTurn).where(SessionTurn.session == name).order_by(SessionTurn.seq)
            ).all()
            files = s.scalars(select(SessionFile).where(SessionFile.session == name)).all()
            return [_turn_record(t, [f for f in files if f.seq == t.seq], dim) for t in turns]

    def drop_session(self, name: str) -> bool:
        """Delete session ``name`` with its turns; returns whether it existed."""
        with self.session() as s, s.begin():
            return _delete_session(s, name)


def _to_trash(s: Session, ids: Sequence[int], now: float) -> None:
    """Keep the image items about to be deleted (rows, tags) in the trash."""
    rows = s.execute(
        select(Item.id, Item.modality, Item.path, Item.content_hash, Item.width, Item.height,
               Item.taken_at, Item.embedding)
        .where(Item.id.in_(ids), Item.modality == "image")
    ).all()  # fmt: skip
    if not rows:
        return
    tags: dict[int, list[tuple[str, float]]] = {}
    for item_id, tag, score in s.execute(
        select(Tag.item_id, Tag.tag, Tag.score).where(Tag.item_id.in_(ids))
    ):
        tags.setdefault(item_id, []).append((tag, score))
    for r in rows:
        s.merge(
            Trash(
                id=r.id, modality=r.modality, path=r.path, content_hash=r.content_hash,
                width=r.width, height=r.height, taken_at=r.taken_at, embedding=r.embedding,
                tags=json.dumps(tags.get(r.id, [])), removed_at=now,
            )
        )  # fmt: skip


def _delete_session(s: Session, name: str) -> bool:
    for table in (SessionFile, SessionTurn):
        s.execute(delete(table).where(table.session == name))  # type: ignore[attr-defined]
    return bool(s.execute(delete(SearchSession).where(SearchSession.name == name)).rowcount)


def _with_seq(turn: TurnRecord, seq: int) -> TurnRecord:
    from dataclasses import replace

    return replace(turn, seq=seq)


def _add_turn(s: Session, name: str, turn: TurnRecord) -> None:
    def blob(vector: np.ndarray | None) -> bytes | None:
        return None if vector is None else to_blob(vector)

    s.add(
        SessionTurn(
            session=name,
            seq=turn.seq,
            created=turn.created,
            query=None if turn.query is None else json.dumps(turn.query),
            query_vector=blob(turn.query_vector),
            text=turn.text,
            text_vector=blob(turn.text_vector),
            more=json.dumps(_int_ids(turn.more)),
            less=json.dumps(_int_ids(turn.less)),
            shown=json.dumps(_int_ids(turn.shown)),
        )
    )
    for role, examples in (("more", turn.more_files), ("less", turn.less_files)):
        for f in examples:
            s.merge(
                SessionFile(
                    session=name, seq=turn.seq, role=role, path=f.path, embedding=to_blob(f.vector)
                )
            )


def _session_record(row: SearchSession, turns: int) -> SessionRecord:
    return SessionRecord(
        row.name, row.created, row.updated, row.model, row.target, json.loads(row.settings), turns
    )


def _turn_record(row: SessionTurn, files: list[SessionFile], dim: int) -> TurnRecord:
    def vector(blob: bytes | None) -> np.ndarray | None:
        return None if blob is None else from_blobs([blob], dim)[0]

    def examples(role: str) -> tuple[ExampleFile, ...]:
        chosen = sorted((f for f in files if f.role == role), key=lambda f: f.path)
        return tuple(ExampleFile(f.path, from_blobs([f.embedding], dim)[0]) for f in chosen)

    return TurnRecord(
        seq=row.seq,
        created=row.created,
        query=None if row.query is None else json.loads(row.query),
        query_vector=vector(row.query_vector),
        text=row.text,
        text_vector=vector(row.text_vector),
        more=tuple(json.loads(row.more)),
        less=tuple(json.loads(row.less)),
        more_files=examples("more"),
        less_files=examples("less"),
        shown=tuple(json.loads(row.shown)),
    )


def _prepare(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if "embedding" in out:
        out["embedding"] = _blob(out["embedding"])
    return out


def _blob(embedding: Any) -> bytes | None:
    """An embedding as stored: float16 bytes (a vector is converted; None stays None)."""
    if embedding is None or isinstance(embedding, bytes):
        return embedding
    return to_blob(embedding)


#: Columns an added item may set (its id comes from SQLite).
_ITEM_COLUMNS = frozenset(c.name for c in Item.__table__.columns) - {"id"}


def _remove_database(path: Path) -> None:
    """Delete a database file and its WAL companions (a catalog whose creation failed)."""
    for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + "-journal"):
        try:
            path.with_name(name).unlink(missing_ok=True)
        except OSError:
            logger.warning("could not remove %s", path.with_name(name))


def _int_ids(ids: Iterable[Any]) -> list[int]:
    """Item ids as Python ints. A numpy integer would be bound by sqlite3 as a BLOB (it
    offers the buffer protocol) and then match no row; a float or bool id is a bug."""
    out = []
    for i in ids:
        if isinstance(i, bool | float | np.floating):
            raise TypeError(f"item id must be an integer, not {type(i).__name__}")
        out.append(operator.index(i))
    return out


def _chunks(seq: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(seq), size):
        yield seq[start : start + size]
