"""What the catalog (:mod:`mmsearch.catalog`, SQLAlchemy, reads and writes) and its reader
(:mod:`mmsearch.catalog_reader`, stdlib ``sqlite3``, reads only) share.

The row record handed out, the stored forms of embeddings (float16) and of file paths
(undecodable names as ``fsbytes:`` + percent-encoded bytes), how a catalog this process
cannot write is opened read-only, and which SQLite errors mean the disk is the problem.
Nothing here imports SQLAlchemy, so a query can read the catalog without loading it.
"""

from __future__ import annotations

import errno
import os
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import IndexSettings
from .errors import IndexCorruptError, StorageError

FILE_HASH = "blake3"
"""How a new catalog hashes image files (its ``file_hash`` meta entry; see
``mmsearch.media.FILE_HASHES``)."""
LEGACY_FILE_HASH = "blake2b"
"""How a catalog without that entry (made before it) hashes them."""

#: Stored paths that are not valid UTF-8 start with this (an absolute path never does).
BYTES_PREFIX = "fsbytes:"


@dataclass(frozen=True)
class SkipRecord:
    """A remembered bad file: where, which version of it (size, mtime), and why."""

    path: str
    size: int
    mtime_ns: int
    reason: str


@dataclass(frozen=True)
class RootRecord:
    """A folder given to ``mmsearch index``, as the last run saw it."""

    path: str
    device: int | None  # st_dev of the folder
    mount_point: str | None  # the mount it lay on ("/" for the root file system)
    items: int  # items under it after that run
    online: bool
    reason: str  # why it is offline ("" when online)
    checked_at: float


@dataclass(frozen=True)
class ItemRecord:
    """A catalog row without its embedding, detached from any session."""

    id: int
    modality: str
    path: str | None
    text: str | None
    source: str | None
    size: int | None
    mtime_ns: int | None
    content_hash: str
    width: int | None
    height: int | None
    taken_at: float | None = None  # v2: capture date (seconds since the epoch)


def to_blob(vector: np.ndarray) -> bytes:
    """A float vector as the catalog stores it: float16 little endian."""
    return np.asarray(vector, dtype="<f2").tobytes()


def to_blobs(vectors: np.ndarray) -> list[bytes]:
    """Rows of a float matrix as the catalog stores them (:func:`to_blob` of each)."""
    rows = np.asarray(vectors, dtype="<f2")
    return [row.tobytes() for row in rows]


def from_blobs(blobs: Sequence[bytes], dim: int) -> np.ndarray:
    """Stored float16 blobs back to a (N, dim) float32 matrix."""
    if not blobs:
        return np.zeros((0, dim), dtype=np.float32)
    return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(len(blobs), dim).astype(np.float32)


def settings_from(get_meta: Callable[[str], str | None]) -> IndexSettings:
    """The user's vector-index choices from the catalog's meta values (defaults where
    none were made)."""
    budget = get_meta("memory_budget")
    target = get_meta("recall_target")
    default = IndexSettings()
    return IndexSettings(
        index_type=get_meta("index_type") or default.index_type,
        memory_budget=int(budget) if budget else None,
        recall_target=float(target) if target else default.recall_target,
    )


def encode_path(value: str | None) -> str | None:
    """A path (or a text holding one) as stored: itself, or for a name with undecodable
    bytes (lone surrogates, which SQLite's UTF-8 cannot hold) ``fsbytes:`` + its bytes."""
    if value is None or value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        raw = os.fsencode(value) if os.name != "nt" else value.encode("utf-8", "surrogatepass")
        return BYTES_PREFIX + urllib.parse.quote_from_bytes(raw, safe="/:")


def decode_path(value: str | None) -> str | None:
    """The stored form back to the very same str (see :func:`encode_path`)."""
    if value is None or not value.startswith(BYTES_PREFIX):
        return value
    raw = urllib.parse.unquote_to_bytes(value[len(BYTES_PREFIX) :])
    return os.fsdecode(raw) if os.name != "nt" else raw.decode("utf-8", "surrogatepass")


#: SQLite result codes (``sqlite3.Error.sqlite_errorname``) that mean the disk, not the
#: data, is the problem, with the errno that says the same.
_SQLITE_STORAGE = {
    "SQLITE_FULL": errno.ENOSPC,
    "SQLITE_READONLY": errno.EROFS,
    "SQLITE_PERM": errno.EACCES,
    "SQLITE_CANTOPEN": None,
    "SQLITE_IOERR": errno.EIO,
}


def storage_error(path: Path, exc: BaseException) -> StorageError | None:
    """The StorageError a SQLite error stands for (None if it is not about storage)."""
    if isinstance(exc, OSError):
        return StorageError.from_os_error(exc, "writing the catalog", path)
    name = getattr(exc, "sqlite_errorname", "") or ""
    for prefix, code in _SQLITE_STORAGE.items():
        if name.startswith(prefix):
            action = "opening the catalog" if prefix == "SQLITE_CANTOPEN" else "writing the catalog"
            reason = "" if code is not None else str(exc)
            if prefix == "SQLITE_READONLY":
                reason = "the catalog is read-only"
            if prefix == "SQLITE_IOERR" and _nearly_full(path):
                code = errno.ENOSPC  # SQLite reports a full disk mid-write as an I/O error
            return StorageError(path, action, reason, code)
    return None


def _nearly_full(path: Path) -> bool:
    """Whether the file system holding ``path`` has (next to) no room left."""
    try:
        st = os.statvfs(path.parent)
    except (OSError, AttributeError):  # no statvfs on Windows
        return False
    return st.f_bavail * st.f_frsize < 256 * 1024


def writable(db: Path) -> bool:
    """Whether this process may write the catalog and create files beside it."""
    directory = db.parent
    if directory.exists() and not os.access(directory, os.W_OK):
        return False
    return not db.exists() or os.access(db, os.W_OK)


def read_only_uri(db: Path) -> str:
    """A SQLite URI that reads ``db`` without writing anything.

    A WAL database needs its ``-shm`` file: where it cannot be created (read-only media)
    and no ``-wal`` is left over, nothing can change the file, so it is opened immutable.
    A ``-wal`` left over holds committed transactions: then ``mode=ro`` reads it too.
    """
    uri = "file:" + urllib.parse.quote(os.fsencode(db.absolute())) + "?mode=ro"
    wal = db.with_name(db.name + "-wal")
    shm = db.with_name(db.name + "-shm")
    if not wal.exists() and not shm.exists():
        uri += "&immutable=1"
    return uri


def refuse_empty_file(path: Path) -> None:
    """A 0-byte catalog is a damaged one (SQLite never leaves its file empty once it has
    written a schema), unless its write-ahead log still holds everything."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    wal = path.with_name(path.name + "-wal")
    if size == 0 and not (wal.exists() and wal.stat().st_size > 0):
        raise IndexCorruptError(
            f"catalog {path} is empty (0 bytes): it was truncated or not written; restore "
            "it from a backup, or delete the index directory and index again"
        )


@dataclass(frozen=True)
class ExampleFile:
    """An image file given as a positive or negative example, and its vector."""

    path: str
    vector: np.ndarray


@dataclass(frozen=True)
class TurnRecord:
    """One turn of a search session, as stored.

    Attributes:
        seq: its place in the session (0: the start).
        created: when (seconds since the epoch).
        query: turn 0: the starting query (``Query.to_dict()``: terms and filters).
        query_vector: turn 0: the starting query's vector.
        text: a follow-up text ("at night").
        text_vector: its vector.
        more: ids of items marked as positives.
        less: ids of items marked as negatives.
        more_files: image files given as positives, with their vectors.
        less_files: image files given as negatives.
        shown: ids of the hits this turn showed, in order.
    """

    seq: int
    created: float
    query: dict[str, Any] | None = None
    query_vector: np.ndarray | None = None
    text: str | None = None
    text_vector: np.ndarray | None = None
    more: tuple[int, ...] = ()
    less: tuple[int, ...] = ()
    more_files: tuple[ExampleFile, ...] = ()
    less_files: tuple[ExampleFile, ...] = ()
    shown: tuple[int, ...] = ()


@dataclass(frozen=True)
class SessionRecord:
    """A stored search session (its turns apart)."""

    name: str
    created: float
    updated: float
    model: str
    target: str
    settings: dict[str, Any]
    turns: int = 0
