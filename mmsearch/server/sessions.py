"""The search-session endpoints (``/api/sessions``): start a session with a query, continue
it with 👍/👎 feedback and follow-up texts, page through its hits, list, show, drop.

A session lives in the index's catalog (see :mod:`mmsearch.refine`): the same session can
be continued from the command line (``mmsearch refine NAME``) and from the page.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from ..errors import QueryError, SessionNotFoundError
from ..query import Query as SearchQuery
from ..query import Term
from .backend import MAX_DEPTH, Backend, Page, SessionBackend

Target = Literal["image", "text"]
Name = Annotated[str, PathParam(min_length=1, max_length=100, description="Session name.")]
ItemIds = Annotated[list[Annotated[int, Field(ge=1, le=2**62)]], Field(max_length=500)]


class StartIn(BaseModel):
    """A session's starting query: a text (``q``) or an indexed item (``like``)."""

    name: str | None = Field(None, min_length=1, max_length=100, description="default: new")
    q: str | None = Field(None, min_length=1, max_length=1000)
    like: int | None = Field(None, ge=1, le=2**62)
    target: Target = "image"
    k: int = Field(20, ge=1, le=200)


class RefineIn(BaseModel):
    """One turn of feedback: ids marked 👍 (``more``) and 👎 (``less``), a follow-up text."""

    more: ItemIds = []
    less: ItemIds = []
    text: str | None = Field(None, max_length=1000)
    k: int = Field(20, ge=1, le=200)
    show_marked: bool = False


def add_session_api(
    app: FastAPI,
    backend: Backend,
    run_search: Callable[..., Awaitable[Any]],
    out: Callable[[Page, str, int, int], dict[str, Any]],
) -> None:
    """Add the session endpoints; ``run_search`` runs a call in the search thread and
    ``out`` renders a page of hits (the app's own)."""
    sessions = SessionBackend(backend)

    def page_out(info: Any, page: Page, k: int, offset: int = 0) -> dict[str, Any]:
        return {
            "session": info.name,
            "turns": info.turns,
            **out(page, info.target, k, offset),
        }

    @app.post("/api/sessions", tags=["sessions"])
    async def start(body: StartIn) -> dict[str, Any]:
        """Start a session (a new name unless ``name`` is given: then it is restarted)."""
        if (body.q is None) == (body.like is None):
            raise QueryError("give either q (a text) or like (an item id)")
        term = Term("text", body.q) if body.q is not None else Term("item", str(body.like))
        name = body.name or f"web-{secrets.token_hex(4)}"
        info, page = await run_search(sessions.start, name, SearchQuery((term,)), body.target,
                                      body.k)  # fmt: skip
        return page_out(info, page, body.k)

    @app.post("/api/sessions/{name}/refine", tags=["sessions"])
    async def refine(name: Name, body: RefineIn) -> dict[str, Any]:
        """Continue a session with feedback; returns the next hits (marked items left out
        unless ``show_marked``)."""
        info, page = await run_search(
            sessions.refine, name, body.more, body.less, body.text, body.k, body.show_marked
        )
        return page_out(info, page, body.k)

    @app.get("/api/sessions/{name}/hits", tags=["sessions"])
    async def hits(
        name: Name,
        k: Annotated[int, Query(ge=1, le=200)] = 20,
        offset: Annotated[int, Query(ge=0, lt=MAX_DEPTH)] = 0,
        show_marked: bool = False,
    ) -> dict[str, Any]:
        """A page of the session's hits as it stands (adds no turn)."""
        info, page = await run_search(sessions.page, name, k, offset, show_marked)
        return page_out(info, page, k, offset)

    @app.get("/api/sessions", tags=["sessions"])
    def listing() -> list[dict[str, Any]]:
        """Every session, most recently used first."""
        return [s.to_dict() for s in sessions.list()]

    @app.get("/api/sessions/{name}", tags=["sessions"])
    def show(name: Name) -> dict[str, Any]:
        """A session's settings and turns."""
        info, turns = sessions.show(name)
        return {**info.to_dict(), "turns": [t.to_dict() for t in turns]}

    @app.delete("/api/sessions/{name}", tags=["sessions"])
    def drop(name: Name) -> dict[str, Any]:
        """Delete a session."""
        if not sessions.drop(name):
            raise SessionNotFoundError(name)
        return {"dropped": name}
