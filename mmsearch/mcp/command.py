"""The ``mmsearch mcp`` command: the MCP server over stdio, for desktop assistants. Only
click is imported at module level: the SDK and the index load inside the command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from .. import config
from ..click_options import index_option


@click.command("mcp")
@index_option
@click.option("--device", help="cpu, cuda, cuda:1 … [default: cuda when available].")
def mcp_cmd(index_dir: Path | None, device: str | None) -> None:
    """Serve the index to AI assistants over MCP (stdio), until the client disconnects.

    \b
    A desktop assistant's configuration names this command, e.g.
      {"mcpServers": {"photos": {"command": "mmsearch",
                                 "args": ["mcp", "--index", "/home/me/photos-index"]}}}
    Tools: search, search_by_image, similar_items, refine_search, explain_query,
    classify_items, find_duplicates, describe_item, thumbnails, index_status.
    Read-only: only a search session's turns are written.
    """
    from ..errors import MMSearchError
    from ..index import Index
    from ..status import MMSearchException
    from .app import run_stdio
    from .library import Library

    # stdout is the protocol's channel: logs (and anything a library prints) go to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    device = device or os.environ.get(config.ENV_DEVICE)
    try:
        index = Index.open(index_dir, device=device, create=False)
    except MMSearchError as exc:
        raise MMSearchException(exc) from exc
    try:
        run_stdio(Library(index))
    finally:
        index.close()
