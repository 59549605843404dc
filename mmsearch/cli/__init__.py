"""The ``mmsearch`` command line: thin commands, one library call each.

Results go to stdout (plain lines or ``--json``); progress, logs and errors go to stderr.
The group and what every command shares live in :mod:`.app`; each module beside it holds
the commands of one job and registers them on the group when it is imported here.
"""

from __future__ import annotations

from ..server.command import serve_cmd
from . import (  # noqa: F401 - imported for the commands they register
    assistants,
    dups,
    indexing,
    labels,
    languages,
    maintenance,
    querying,
    sessions,
    training,
)
from .app import cli, escape, main, quiet_openmp

cli.add_command(serve_cmd)

__all__ = ["cli", "escape", "main", "quiet_openmp"]
