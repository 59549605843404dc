"""The FastAPI application: the JSON API under ``/api`` and the web page under ``/``.

Files are only ever addressed by catalogue id: the id is an integer path parameter, the
path of the file comes from the catalog, and no request value is ever joined to a path.
Endpoints are plain ``def`` functions: FastAPI runs them in its thread pool, so encoding
and search (CPU-bound, serialised in the backend) never block the event loop.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
from pathlib import Path
from typing import Annotated, Any, Literal

from anyio import CapacityLimiter, to_thread
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from .. import __version__
from ..errors import (
    FileChangedError,
    FileGoneError,
    ImageTooLargeError,
    ItemNotFoundError,
    MMSearchError,
    QueryError,
    SessionNotFoundError,
)
from ..results import Hit
from .backend import MAX_DEPTH, Backend, Page
from .files import IndexedFileResponse
from .images import MAX_UPLOAD_BYTES, decode_upload
from .security import Policy, SecurityMiddleware
from .sessions import add_session_api

STATIC = Path(__file__).parent / "static"
Target = Literal["image", "text"]
ItemId = Annotated[int, PathParam(ge=1, le=2**62, description="Catalogue id of the item.")]
K = Annotated[int, Query(ge=1, le=200, description="Hits per page.")]
Offset = Annotated[int, Query(ge=0, lt=MAX_DEPTH, description="Hits to skip (paging).")]


class HitOut(BaseModel):
    id: int
    score: float
    modality: str
    path: str | None = None
    text: str | None = None
    source: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = None
    file: str | None = None
    query_score: float | None = None
    part_scores: list[float] | None = None
    duplicates: list[int] | None = None


class PartOut(BaseModel):
    text: str
    negative: bool
    relation: str | None = None


class SearchOut(BaseModel):
    target: str
    k: int
    offset: int
    next_offset: int | None
    hits: list[HitOut]
    text_encoder: str | None = None  # the index's text encoder that encoded a text query
    parts: list[PartOut] | None = None


class ItemOut(BaseModel):
    id: int
    modality: str
    path: str | None = None
    name: str | None = None
    text: str | None = None
    source: str | None = None
    size: int | None = None
    modified: str | None = None
    width: int | None = None
    height: int | None = None
    thumbnail: str | None = None
    file: str | None = None


class ErrorOut(BaseModel):
    error: str
    status: int


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut} for code in (400, 401, 404, 409, 413, 421, 422)
}


def create_app(backend: Backend, policy: Policy | None = None) -> FastAPI:
    """The application serving ``backend``, behind the security middleware.

    Args:
        backend: the open index.
        policy: what the middleware enforces; default loopback names only, no token.
    """
    app = FastAPI(
        title="mmsearch",
        version=__version__,
        description="Search photos and texts by meaning. Files are addressed by item id only.",
        docs_url=None,  # Swagger UI needs inline scripts and a CDN: neither is allowed here
        redoc_url=None,
        openapi_url="/api/openapi.json",
        responses=ERRORS,
    )
    app.state.backend = backend
    _add_error_handlers(app)
    _add_api(app, backend)
    app.mount("/", StaticFiles(directory=STATIC, html=True), name="static")
    policy = policy or Policy(hosts=frozenset({"localhost", "127.0.0.1", "::1"}))
    app.add_middleware(SecurityMiddleware, policy=policy)  # type: ignore[arg-type]
    return app


def _add_api(app: FastAPI, backend: Backend) -> None:
    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness: answers without a token."""
        return {"status": "ok"}

    @app.get("/api/info", tags=["meta"])
    def info() -> dict[str, Any]:
        """What the index holds: model, counts, vector indexes."""
        return {**backend.info().to_dict(), "version": __version__}

    # One search at a time, in one worker thread: the model and FAISS already use both
    # cores, and 16 pool threads contending for the backend's lock cost more than they
    # give (measured with bench/serve.py). The endpoints are async, so queued requests
    # wait as coroutines, not as threads.
    searches = CapacityLimiter(1)

    async def run_search(func: Any, *args: Any) -> Any:
        return await to_thread.run_sync(func, *args, limiter=searches)

    add_session_api(app, backend, run_search, _out)

    @app.get("/api/search", response_model=SearchOut, tags=["search"])
    async def search_text(
        q: Annotated[str, Query(min_length=1, max_length=1000, description="Query text.")],
        target: Target = "image",
        k: K = 20,
        offset: Offset = 0,
        lang: Annotated[
            str | None,
            Query(max_length=16, description="Language of q (zh …) [default: detected]."),
        ] = None,
        text_encoder: Annotated[
            str | None,
            Query(max_length=32, description="The index's text encoder to use (main …)."),
        ] = None,
        explain: Annotated[
            bool, Query(description="Split the query into parts; score hits on each.")
        ] = False,
        dedupe: Annotated[bool, Query(description="Fold near-duplicate images.")] = False,
    ) -> dict[str, Any]:
        """Images (or texts) matching a text (any language: a taught one is encoded by its
        own text encoder). With ``explain``, ranked by how well they match every part of
        the query, with ``parts`` and each hit's ``part_scores``."""
        if explain:
            page = await run_search(backend.explain_text, q, target, k, offset, dedupe)
        elif dedupe:
            page = await run_search(backend.search_text_deduped, q, target, k, offset)
        else:
            page = await run_search(backend.search_text, q, target, k, offset, lang, text_encoder)
        return {**_out(page, target, k, offset), "text_encoder": page.text_encoder}

    @app.post("/api/search/image", response_model=SearchOut, tags=["search"])
    async def search_image(
        file: Annotated[UploadFile, File(description="The query image.")],
        target: Annotated[Target, Form()] = "image",
        k: Annotated[int, Form(ge=1, le=200)] = 20,
        offset: Annotated[int, Form(ge=0, lt=MAX_DEPTH)] = 0,
    ) -> dict[str, Any]:
        """Images (or texts) matching an uploaded image (multipart, field ``file``)."""
        data = await file.read(MAX_UPLOAD_BYTES + 1)
        if len(data) > MAX_UPLOAD_BYTES:
            raise ImageTooLargeError(f"upload over {MAX_UPLOAD_BYTES:,} bytes")
        image = await to_thread.run_sync(decode_upload, data)  # beside searches, not after
        page = await run_search(backend.search_image, image, target, k, offset)
        return _out(page, target, k, offset)

    @app.get("/api/items/{item_id}/similar", response_model=SearchOut, tags=["search"])
    async def similar(
        item_id: ItemId, target: Target = "image", k: K = 20, offset: Offset = 0
    ) -> Any:
        """More like an indexed item (the item itself left out)."""
        page = await run_search(backend.search_item, item_id, target, k, offset)
        return _out(page, target, k, offset)

    @app.get("/api/items/{item_id}", response_model=ItemOut, tags=["items"])
    def item(item_id: ItemId) -> dict[str, Any]:
        """Metadata of one item."""
        rec = backend.item(item_id)
        modified = None
        if rec.mtime_ns:
            stamp = dt.datetime.fromtimestamp(rec.mtime_ns / 1e9, tz=dt.UTC)
            modified = stamp.isoformat(timespec="seconds")
        return {
            "id": rec.id,
            "modality": rec.modality,
            "path": rec.path,
            "name": Path(rec.path).name if rec.path else None,
            "text": rec.text,
            "source": rec.source,
            "size": rec.size,
            "modified": modified,
            "width": rec.width,
            "height": rec.height,
            **_urls(rec.id, rec.modality),
        }

    @app.get(
        "/api/items/{item_id}/thumbnail",
        response_class=FileResponse,
        tags=["items"],
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    def thumb(
        item_id: ItemId,
        size: Annotated[int, Query(ge=16, le=4096, description="Longest side wanted.")] = 256,
    ) -> FileResponse:
        """A JPEG thumbnail, upright (EXIF orientation applied), longest side rounded up to
        one of 128, 256, 512, 1024 pixels; cached in the index directory by content hash,
        and made only from a file that is still the indexed content (else 404 or 409)."""
        _image(backend, item_id)
        path = backend.thumbnail(item_id, size)
        return FileResponse(
            path, media_type="image/jpeg", headers={"cache-control": "private, max-age=86400"}
        )

    @app.get("/api/items/{item_id}/file", response_class=Response, tags=["items"])
    def original(item_id: ItemId, request: Request) -> Response:
        """The original file of an indexed image, only while it is still the content that
        was indexed (404 when gone, 409 when changed: run `mmsearch index`). Single byte
        ranges (``Range: bytes=…``) are answered with 206."""
        rec = _image(backend, item_id)
        name = Path(rec.path or "").name
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if not media.startswith("image/") or media == "image/svg+xml":
            media = "application/octet-stream"  # never let a file run as a page
        source = backend.open_file(item_id)
        return IndexedFileResponse(source, media, request.headers, filename=name)


def _image(backend: Backend, item_id: int) -> Any:
    rec = backend.item(item_id)
    if rec.modality != "image" or not rec.path:
        raise HTTPException(404, f"item {item_id} is a text: it has no file")
    return rec


def _urls(item_id: int, modality: str) -> dict[str, str | None]:
    if modality != "image":
        return {"thumbnail": None, "file": None}
    return {
        "thumbnail": f"/api/items/{item_id}/thumbnail",
        "file": f"/api/items/{item_id}/file",
    }


def _hit(hit: Hit) -> dict[str, Any]:
    return {**hit.to_dict(), "score": round(hit.score, 4), **_urls(hit.id, hit.modality)}


def _out(page: Page, target: str, k: int, offset: int) -> dict[str, Any]:
    return {
        "target": target,
        "k": k,
        "offset": offset,
        "next_offset": page.next_offset,
        "hits": [_hit(h) for h in page.hits],
        **({"parts": page.parts} if page.parts is not None else {}),
    }


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"nothing at {request.url.path}"
        return _error(exc.status_code, detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "path"))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(MMSearchError)
    async def library_error(request: Request, exc: MMSearchError) -> JSONResponse:
        if isinstance(exc, ItemNotFoundError | SessionNotFoundError | FileGoneError):
            return _error(404, str(exc))
        if isinstance(exc, FileChangedError):
            return _error(409, str(exc))
        if isinstance(exc, ImageTooLargeError):
            return _error(413, str(exc))
        if isinstance(exc, QueryError):
            return _error(400, str(exc))
        return _error(500, str(exc))
