"""Exit statuses of the ``mmsearch`` command, and which library error maps to which."""

from __future__ import annotations

import enum

from .errors import (
    DependencyError,
    IndexBusyError,
    IndexNotFoundError,
    InputError,
    MMSearchError,
    ModelError,
    ModelMismatchError,
    QueryError,
    StorageError,
)


class ExitStatus(enum.IntEnum):
    """Exit codes of the ``mmsearch`` command."""

    OK = 0
    ERROR = 1  # any other mmsearch error
    USAGE = 2  # bad command line (click's own)
    NO_INDEX = 3  # the index does not exist
    MODEL = 4  # model unknown, weights unavailable, or mismatched with the index
    INPUT = 5  # a query or input file cannot be used
    DEPENDENCY = 6  # an optional dependency is missing
    BUSY = 7  # another process is writing the index (--no-wait)
    STORAGE = 8  # disk full, read-only or forbidden: the index's files cannot be written
    INTERRUPTED = 130  # Ctrl-C


_BY_ERROR: tuple[tuple[type[MMSearchError], ExitStatus], ...] = (
    (IndexNotFoundError, ExitStatus.NO_INDEX),
    (ModelError, ExitStatus.MODEL),
    (ModelMismatchError, ExitStatus.MODEL),
    (QueryError, ExitStatus.INPUT),
    (InputError, ExitStatus.INPUT),
    (DependencyError, ExitStatus.DEPENDENCY),
    (IndexBusyError, ExitStatus.BUSY),
    (StorageError, ExitStatus.STORAGE),
)


def exit_status_for(exc: MMSearchError) -> ExitStatus:
    """The exit status that reports ``exc``."""
    return next((status for kind, status in _BY_ERROR if isinstance(exc, kind)), ExitStatus.ERROR)
