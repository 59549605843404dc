"""Exit statuses of the ``mmsearch`` command, and which library error maps to which."""

from __future__ import annotations

import enum

import click

from .errors import (
    DependencyError,
    IndexBusyError,
    IndexCorruptError,
    IndexNotFoundError,
    InputError,
    MMSearchError,
    ModelError,
    ModelMismatchError,
    PruneRequired,
    QueryError,
    RayUnavailableError,
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
    CORRUPT = 7  # the catalog is damaged, or `check` found problems it did not repair
    BUSY = 8  # another process is writing the index (--no-wait)
    STORAGE = 9  # disk full, read-only or forbidden: the index's files cannot be written
    INTERRUPTED = 130  # Ctrl-C


_BY_ERROR: tuple[tuple[type[MMSearchError], ExitStatus], ...] = (
    (IndexNotFoundError, ExitStatus.NO_INDEX),
    (ModelError, ExitStatus.MODEL),
    (ModelMismatchError, ExitStatus.MODEL),
    (QueryError, ExitStatus.INPUT),
    (PruneRequired, ExitStatus.INPUT),
    (InputError, ExitStatus.INPUT),
    (RayUnavailableError, ExitStatus.DEPENDENCY),  # --ray without ray installed
    (DependencyError, ExitStatus.DEPENDENCY),
    (IndexCorruptError, ExitStatus.CORRUPT),
    (IndexBusyError, ExitStatus.BUSY),
    (StorageError, ExitStatus.STORAGE),
)


def exit_status_for(exc: MMSearchError) -> ExitStatus:
    """The exit status that reports ``exc``."""
    return next((status for kind, status in _BY_ERROR if isinstance(exc, kind)), ExitStatus.ERROR)


class MMSearchException(click.ClickException):
    """A library error shown by a command as one line, with its own exit code."""

    def __init__(self, exc: MMSearchError) -> None:
        super().__init__(str(exc))
        self.exit_code = int(exit_status_for(exc))
