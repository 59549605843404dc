"""Errors raised by mmsearch.

Every error the library raises on purpose is a subclass of :class:`MMSearchError`, so
callers (the CLI included) can catch one type. Data that explains the error travels as
attributes rather than only inside the message.
"""

from __future__ import annotations

import errno as _errno
import os
from pathlib import Path


class MMSearchError(Exception):
    """Base class of every error mmsearch raises on purpose."""


class DependencyError(MMSearchError):
    """An optional dependency (faiss, a GPU build, ...) is missing."""

    def __init__(self, package: str, hint: str) -> None:
        self.package = package
        self.hint = hint
        super().__init__(f"{package} is not installed: {hint}")


class InvalidValueError(MMSearchError, ValueError):
    """An argument or setting is out of its range (also a ValueError, for callers that
    catch that)."""


class ModelError(MMSearchError):
    """A model name, tag or checkpoint could not be resolved or loaded."""


class WeightsUnavailableError(ModelError):
    """Pretrained weights are neither cached nor downloadable."""

    def __init__(self, model: str, pretrained: str, reason: str) -> None:
        self.model = model
        self.pretrained = pretrained
        self.reason = reason
        super().__init__(
            f"weights for {model} ({pretrained}) are not available: {reason}. "
            "Download them once on a machine with network access (they are cached), or "
            "point at a local checkpoint: --pretrained /path/to/open_clip_model.safetensors, "
            "or --model /path/to/model-dir (a fine-tuned or exported model directory)."
        )


class ModelMismatchError(MMSearchError):
    """The index was built with another model than the one requested."""

    def __init__(self, index_model: str, requested_model: str) -> None:
        self.index_model = index_model
        self.requested_model = requested_model
        super().__init__(
            f"this index was built with model {index_model!r}, not {requested_model!r}; "
            "embeddings of different models cannot be mixed. Use the index's model "
            "(omit --model), or re-embed everything with the new one (--reembed)."
        )


class IndexNotFoundError(MMSearchError):
    """No index exists at the given location."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"no index at {path} (create one with `mmsearch index PATH`)")


class IndexCorruptError(MMSearchError):
    """The catalog or an index file cannot be read."""


class CatalogWriteError(MMSearchError):
    """A catalog write did not find the rows it was meant to change (nothing was written)."""


class QueryError(MMSearchError):
    """A query is empty, malformed, or cannot be answered."""


class InputError(MMSearchError):
    """An input (image, text file, pairs file) cannot be read or parsed."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ExportError(MMSearchError):
    """A model cannot be exported to the query runtime, or the export does not match torch."""


class QueryRuntimeError(MMSearchError):
    """The exported query runtime cannot be used: onnxruntime is missing, or the runtime
    directory is missing, damaged or made for another model. Callers fall back to the
    torch encoder."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"query runtime {path} cannot be used: {reason}")


class ItemNotFoundError(QueryError):
    """No item with the given id is in the catalog (never was, or was removed)."""

    def __init__(self, item_id: int) -> None:
        self.item_id = item_id
        super().__init__(f"no item with id {item_id} in the index")


class PruneRequired(MMSearchError):
    """An index run would remove most of a root's items: it removed none and asks for
    ``--prune`` (files deleted on purpose) — a drive half-mounted must not empty an index."""

    def __init__(self, root: str, removing: int, held: int) -> None:
        self.root, self.removing, self.held = root, removing, held
        super().__init__(
            f"{removing} of the {held} items under {root} are no longer there: nothing was "
            "removed; if they were deleted on purpose, run again with --prune"
        )


class FileGoneError(QueryError):
    """An indexed item's file is no longer there (or cannot be opened)."""

    def __init__(self, item_id: int, reason: str = "") -> None:
        self.item_id = item_id
        super().__init__(f"the file of item {item_id} is gone" + (f": {reason}" if reason else ""))


class FileChangedError(QueryError):
    """An indexed item's file is no longer the content that was indexed (replaced, swapped
    for a link or another kind of file): none of it is served."""

    def __init__(self, item_id: int) -> None:
        self.item_id = item_id
        super().__init__(
            f"the file of item {item_id} changed since it was indexed; run `mmsearch index`"
        )


class ImageTooLargeError(QueryError):
    """A query image exceeds the size or pixel limits (or trips Pillow's bomb guard)."""


#: Plain words for the errnos a full, read-only or forbidden disk gives.
_ERRNO_WORDS = {
    _errno.ENOSPC: "no space left on the device",
    _errno.EDQUOT: "disk quota exceeded",
    _errno.EROFS: "read-only file system",
    _errno.EACCES: "permission denied",
    _errno.EPERM: "operation not permitted",
    _errno.EIO: "input/output error",
}


class StorageError(MMSearchError):
    """The index's files cannot be written (or read): disk full, quota, read-only media,
    permissions, I/O errors. What was committed before stays intact.

    Attributes:
        path: the file or directory concerned.
        action: what failed, e.g. "writing the catalog".
        errno: the OS error number when known (``errno.ENOSPC`` ...), else None.
        reason: the cause in words.
    """

    def __init__(
        self, path: Path | str, action: str, reason: str = "", errno: int | None = None
    ) -> None:
        self.path = os.fsdecode(path) if not isinstance(path, str) else path
        self.action = action
        self.errno = errno
        self.reason = (
            reason
            or _ERRNO_WORDS.get(errno or 0, "")
            or (os.strerror(errno) if errno else "I/O error")
        )
        super().__init__(f"{action} failed: {self.reason} ({self.path})")

    @classmethod
    def from_os_error(
        cls, exc: OSError, action: str, path: Path | str | None = None
    ) -> StorageError:
        """A StorageError for an OSError raised while doing ``action``."""
        where = path if path is not None else (exc.filename or "?")
        return cls(where, action, errno=exc.errno)

    @property
    def read_only(self) -> bool:
        """True when the cause is read-only media or missing write permission."""
        return self.errno in (_errno.EROFS, _errno.EACCES, _errno.EPERM)


class IndexBusyError(MMSearchError):
    """Another process is writing the index (and the caller chose not to wait)."""

    def __init__(self, path: Path | str, pid: int | None) -> None:
        self.path = str(path)
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"another mmsearch process ({who}) is writing the index at {path}; "
            "try again when it is done (or leave out --no-wait to wait for it)"
        )


class RayUnavailableError(DependencyError):
    """``--ray`` was asked for but Ray (with Ray Data) is not installed."""

    def __init__(self) -> None:
        super().__init__("ray", "install it with pip install 'mmsearch[ray]' to encode on Ray")


class DistributedError(MMSearchError):
    """A distributed (Ray) run could not reach its cluster, or its workers failed beyond
    their retries. What was committed before stays; the next run encodes the rest."""


class SessionNotFoundError(QueryError):
    """No search session of the given name is stored in the index."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"no search session named {name!r} (start one with `mmsearch query TEXT "
            f"--session {name}`; `mmsearch session list` lists them)"
        )
