"""The MCP server on the official SDK (``mcp``): :class:`.library.Library`'s methods as
tools, served over stdio (:func:`run_stdio`) or streamable HTTP (:func:`http_app`).

The SDK is imported here only: ``mmsearch`` without MCP never loads it (the CLI imports
this module inside the ``mcp`` command, the server only when it mounts ``/mcp``).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Annotated, Any, Literal, TypeVar

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.utilities.types import Image
from mcp.server.transport_security import TransportSecuritySettings
from mcp_types import ToolAnnotations
from pydantic import Field

from .. import __version__
from ..errors import MMSearchError
from .library import MAX_K, MAX_THUMBNAILS, Library

F = TypeVar("F", bound=Callable[..., Any])
Target = Literal["image", "text"]
K = Annotated[int, Field(ge=1, le=MAX_K, description=f"Number of hits (at most {MAX_K}).")]
FiltersArg = Annotated[
    dict[str, Any] | None,
    Field(
        description="Conditions on the hits: path_glob, extensions (list), after, before "
        "(ISO dates, capture time), min_width, min_height, tags (list), min_score."
    ),
]
READ_ONLY = ToolAnnotations(readOnlyHint=True, openWorldHint=False)
INSTRUCTIONS = (
    "Search a personal photo and text library by meaning. Hits are item ids with paths "
    "and scores; use describe_item to see one (with a thumbnail), refine_search to narrow "
    "a search over several turns by marking ids as wanted (more) or not (less)."
)


def _tool_errors(func: F) -> F:
    """Library errors become tool errors: the assistant reads the one-line reason."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MMSearchError as exc:
            raise ToolError(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


def build_server(library: Library) -> MCPServer:
    """An ``MCPServer`` whose tools search ``library``'s index."""
    server = MCPServer(
        "mmsearch", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING"
    )

    @_tool_errors
    def search(
        query: Annotated[str, Field(min_length=1, max_length=1000, description="What to find.")],
        k: K = 10,
        target: Target = "image",
        filters: FiltersArg = None,
        dedupe: Annotated[bool, Field(description="Fold near-duplicate images.")] = False,
    ) -> dict[str, Any]:
        """Search images (or texts) by the meaning of a text, e.g. "a red bike at night"."""
        return library.search(query, k, target, filters, dedupe)

    @_tool_errors
    def search_by_image(
        item_id: Annotated[int | None, Field(description="An indexed item's id.")] = None,
        image_base64: Annotated[
            str | None, Field(description="Image bytes (JPEG, PNG …) as base64.")
        ] = None,
        path: Annotated[
            str | None, Field(description="The path of an indexed file (others are refused).")
        ] = None,
        k: K = 10,
        target: Target = "image",
        filters: FiltersArg = None,
    ) -> dict[str, Any]:
        """Search by an image: an indexed item, image bytes, or an indexed file's path."""
        return library.search_by_image(item_id, image_base64, path, k, target, filters)

    @_tool_errors
    def similar_items(
        item_id: Annotated[int, Field(description="An indexed item's id.")],
        k: K = 10,
        target: Target = "image",
        filters: FiltersArg = None,
    ) -> dict[str, Any]:
        """Items like an indexed item ("more like this"), the item itself left out."""
        return library.similar(item_id, k, target, filters)

    @_tool_errors
    def refine_search(
        session: Annotated[
            str, Field(pattern=r"^[A-Za-z0-9_.:@+-]{1,100}$", description="Session name.")
        ],
        query: Annotated[
            str | None, Field(description="Start (or restart) the session with this text.")
        ] = None,
        more: Annotated[list[int], Field(description="Ids of hits that are wanted.")] = [],  # noqa: B006 - pydantic copies defaults
        less: Annotated[list[int], Field(description="Ids of hits that are not wanted.")] = [],  # noqa: B006
        text: Annotated[str | None, Field(description="A follow-up text, e.g. 'at night'.")] = None,
        k: K = 10,
        target: Target = "image",
        filters: FiltersArg = None,
    ) -> dict[str, Any]:
        """A search refined over turns: start it with `query`, then call again with the
        same session and `more`/`less` ids from the hits, or a follow-up `text`."""
        return library.refine(session, query, more, less, text, k, target, filters)

    @_tool_errors
    def explain_query(
        query: Annotated[
            str, Field(min_length=1, max_length=1000, description="e.g. 'a dog and a ball'.")
        ],
        k: K = 10,
        combine: Literal["mean", "min", "softmin", "geomean", "whole"] = "mean",
    ) -> dict[str, Any]:
        """A compound query split into parts; each hit scored on every part."""
        return library.explain(query, k, combine)

    @_tool_errors
    def classify_items(
        item_ids: Annotated[list[int], Field(min_length=1, max_length=20)],
        labels: Annotated[list[str], Field(min_length=2, max_length=100)],
    ) -> dict[str, Any]:
        """Zero-shot label probabilities of indexed images over the labels given."""
        return library.classify(item_ids, labels)

    @_tool_errors
    def find_duplicates(
        threshold: Annotated[
            float | None, Field(ge=0.5, le=1.0, description="Least embedding cosine.")
        ] = None,
        limit: Annotated[int, Field(ge=1, le=50)] = 20,
    ) -> dict[str, Any]:
        """Groups of near-duplicate images, the suggested keeper first. Nothing is deleted."""
        return library.duplicates(threshold, limit)

    @_tool_errors
    def describe_item(
        item_id: Annotated[int, Field(description="An indexed item's id.")],
        thumbnail: Annotated[bool, Field(description="Include a small JPEG (images).")] = True,
    ) -> list[Any]:
        """One item's metadata and tags, with a thumbnail (at most 256 px) for an image."""
        meta = library.describe(item_id)
        out: list[Any] = [meta]
        if thumbnail and meta["modality"] == "image":
            out.append(Image(data=library.thumbnails([item_id])[0], format="jpeg"))
        return out

    @_tool_errors
    def thumbnails(
        item_ids: Annotated[list[int], Field(min_length=1, max_length=MAX_THUMBNAILS)],
    ) -> list[Any]:
        """Small JPEG thumbnails (at most 256 px) of up to 8 indexed images, in order."""
        return [Image(data=d, format="jpeg") for d in library.thumbnails(item_ids)]

    @_tool_errors
    def index_status() -> dict[str, Any]:
        """What the index holds: model, item counts, vector indexes, tags."""
        return library.status()

    for tool in (
        search,
        search_by_image,
        similar_items,
        refine_search,
        explain_query,
        classify_items,
        find_duplicates,
        describe_item,
        thumbnails,
        index_status,
    ):
        # refine_search writes session state (search state), never the library itself.
        server.add_tool(tool, annotations=READ_ONLY, structured_output=False)
    return server


def run_stdio(library: Library) -> None:
    """Serve ``library`` over stdin/stdout until the client closes it."""
    build_server(library).run("stdio")


ASGI = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def http_app(library: Library) -> tuple[ASGI, Callable[[], AbstractAsyncContextManager[Any]]]:
    """The streamable HTTP transport as a bare ASGI app, and the context manager that must
    run around it (the SDK's session manager) for the life of the server.

    The app does no Host or origin checks of its own: ``mmsearch serve`` mounts it behind
    its security middleware, which enforces the server's Host, origin and token rules.
    """
    server = build_server(library)
    server.streamable_http_app(
        stateless_http=True,  # sessions live in the catalog: nothing to keep per connection
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = server.session_manager
    return _Endpoint(manager), manager.run


class _Endpoint:
    """The transport as an ASGI app (an object, not a function: Starlette's ``Route``
    calls a plain function with a Request, an ASGI object with scope, receive, send)."""

    def __init__(self, manager: Any) -> None:
        self._manager = manager

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self._manager.handle_request(scope, receive, send)
