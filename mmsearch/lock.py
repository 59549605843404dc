"""The writer lock of an index directory: one process writes an index at a time.

An advisory lock (``fcntl.flock``; ``msvcrt.locking`` on Windows) on ``index.lock`` in the
index directory. The kernel drops it when its holder exits, even by ``kill -9``, so a
crashed run never leaves a stale lock behind. The holder writes its pid into the file so
that a waiting process can say whom it waits for. Readers (queries) never take it: SQLite's
WAL lets them read while a writer commits.

The standard library, not the ``filelock`` package: ``flock`` is all filelock does on
POSIX too, but filelock cannot tell a waiter who holds the lock, and saying
"waiting for pid N" is the point of the message.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from .errors import IndexBusyError, StorageError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt

logger = logging.getLogger(__name__)

LOCK_FILE = "index.lock"

#: Seconds between two tries while waiting for the lock.
POLL_SECONDS = 0.2


def _try_lock(fd: int) -> bool:
    """Take the lock without blocking; False if another process holds it."""
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:  # pragma: no cover - Windows
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def _unlock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    else:  # pragma: no cover - Windows
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def holder_pid(path: Path) -> int | None:
    """The pid the lock's holder wrote into the lock file (None if unknown)."""
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


class WriterLock:
    """The re-entrant writer lock of one index directory.

    Args:
        directory: the index directory (the lock file is created in it).
        wait: wait for another writer to finish; if False, raise IndexBusyError at once.
        on_wait: called once, with the holder's pid, when waiting begins (default: a log
            message).
    """

    def __init__(
        self,
        directory: Path,
        wait: bool = True,
        on_wait: Callable[[int | None], None] | None = None,
    ) -> None:
        self.directory = directory
        self.path = directory / LOCK_FILE
        self.wait = wait
        self.on_wait = on_wait or _log_wait
        self._fd: int | None = None
        self._depth = 0

    def acquire(self) -> None:
        """Take the lock (again, if this object already holds it)."""
        if self._depth:
            self._depth += 1
            return
        fd = self._open()
        try:
            self._take(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._depth = fd, 1

    def _open(self) -> int:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError.from_os_error(
                exc, "taking the writer lock of the index", self.path
            ) from exc

    def _take(self, fd: int) -> None:
        if _try_lock(fd):
            return
        pid = holder_pid(self.path)
        if not self.wait:
            raise IndexBusyError(self.directory, pid)
        self.on_wait(pid)
        while not _try_lock(fd):
            time.sleep(POLL_SECONDS)

    def release(self) -> None:
        """Give the lock back (when the outermost holder releases it)."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                _unlock(fd)
            finally:
                os.close(fd)

    def __enter__(self) -> WriterLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _log_wait(pid: int | None) -> None:
    who = f"pid {pid}" if pid else "pid unknown"
    logger.warning("waiting for another mmsearch process (%s) writing this index…", who)
