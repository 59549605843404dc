"""Doors for assistants and other tools on ``mmsearch serve``: the MCP server's streamable
HTTP transport at ``/mcp``, behind the same security middleware as every route (Host,
origin and token rules: the MCP SDK's own Host checks are off, these apply instead)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.routing import Route

from .backend import Backend

#: Where the MCP endpoint is served.
MCP_PATH = "/mcp"


def mount_mcp(app: Any, backend: Backend) -> None:
    """Serve MCP over streamable HTTP at :data:`MCP_PATH` of ``app`` (a FastAPI app from
    :func:`.app.create_app`), its tools serialised with the other searches by the
    backend's lock."""
    from ..mcp.app import http_app  # the MCP SDK: loaded only when serving
    from ..mcp.library import Library

    handler, run = http_app(Library(backend.index, backend.lock))
    # Before the static mount at "/", which would otherwise answer first.
    app.router.routes.insert(
        0, Route(MCP_PATH, endpoint=handler, methods=["GET", "POST", "DELETE"])
    )
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with run(), inner(application) as state:
            yield state

    app.router.lifespan_context = lifespan
