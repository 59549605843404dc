"""Commands for other tools: ``mcp`` (the MCP server over stdio; its code is
:mod:`mmsearch.mcp`), ``export`` and ``import`` of embeddings."""

from __future__ import annotations

from ..mcp.command import mcp_cmd
from .app import cli

cli.add_command(mcp_cmd)
