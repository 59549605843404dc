"""Whether a file on disk is still the content that was indexed: the one check every route
that hands out a file's bytes or pixels goes through.

A catalog row names a path, but what lies at that path now may be something else: a link
dropped into a shared folder pointing at ``/etc/passwd``, a text file saved over a
picture, a FIFO. :func:`open_indexed` opens the path once and judges the OPEN file: a
regular file whose size and modification time are the catalog's is taken at once (one
``fstat``: the hot path); otherwise its content is hashed, from the same descriptor, and
only the indexed content passes. The caller then reads from that descriptor, so nothing
can be swapped in between the check and the read.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from ..errors import FileChangedError, FileGoneError
from ..media import new_hasher

#: Bytes read at a time when a file's content must be hashed.
_CHUNK = 1 << 20


@dataclass
class IndexedFile:
    """An open file that is the content an item was indexed with.

    Attributes:
        item_id: the item.
        path: the path it was opened by.
        fd: the open descriptor (read with :func:`os.pread`; close with :meth:`close`).
        size: its size in bytes.
        mtime_ns: its modification time.
        verified_by: ``"stat"`` (size and mtime as indexed) or ``"hash"`` (they differ,
            the content does not).
    """

    item_id: int
    path: str
    fd: int
    size: int
    mtime_ns: int
    verified_by: str

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        """``length`` bytes from ``offset`` (to the end by default)."""
        end = self.size if length is None else min(self.size, offset + length)
        chunks = []
        while offset < end:
            chunk = os.pread(self.fd, min(_CHUNK, end - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> IndexedFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_indexed(
    item_id: int,
    path: str,
    size: int | None,
    mtime_ns: int | None,
    content_hash: str,
    algorithm: str,
) -> IndexedFile:
    """Open ``path`` if it still holds the content item ``item_id`` was indexed with.

    Args:
        item_id: the item (named in errors).
        path: its catalog path (links are followed: what they lead to is what is judged).
        size, mtime_ns: what the catalog recorded.
        content_hash: the indexed content's hash.
        algorithm: how the catalog hashes files (``Catalog.file_hash``).

    Raises:
        FileGoneError: nothing can be opened there.
        FileChangedError: something else is there (another content, a link to another
            file, a directory, a FIFO or device).
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise FileGoneError(item_id) from exc
    except OSError as exc:
        raise FileGoneError(item_id, exc.strerror or str(exc)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileChangedError(item_id)
        opened = IndexedFile(item_id, path, fd, st.st_size, st.st_mtime_ns, "stat")
        if st.st_size == size and st.st_mtime_ns == mtime_ns:
            return opened
        opened.verified_by = "hash"
        if _hash_fd(fd, algorithm) != content_hash:
            raise FileChangedError(item_id)
        return opened
    except BaseException:
        os.close(fd)
        raise


def _hash_fd(fd: int, algorithm: str) -> str:
    """The content hash of an open file, as ``mmsearch.media.content_hash`` gives it."""
    digest = new_hasher(algorithm)
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()
