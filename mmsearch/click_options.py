"""click options shared by the command-line entry points: the ``mmsearch`` group
(:mod:`mmsearch.cli`) and ``mmsearch serve`` (:mod:`mmsearch.server.command`), which may
not import each other's layer downwards-up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import config

F = TypeVar("F", bound=Callable[..., Any])


def index_option(func: F) -> F:
    """``--index DIR`` (``$MMSEARCH_INDEX``), passed as ``index_dir``."""
    return click.option(
        "--index",
        "index_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=config.ENV_INDEX,
        show_envvar=True,
        help="Index directory [default: platform data dir, e.g. ~/.local/share/mmsearch/index].",
    )(func)
