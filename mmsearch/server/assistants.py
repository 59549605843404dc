"""Doors for assistants and other tools on ``mmsearch serve``: the MCP server's streamable
HTTP transport at ``/mcp``, behind the same security middleware as every route (Host,
origin and token rules: the MCP SDK's own Host checks are off, these apply instead)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
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


# -- clip-retrieval's back-end API ------------------------------------------------------------

#: Most results one /knn-service call returns.
CLIP_MAX_RESULTS = 1000


def add_clip_api(
    app: Any, backend: Backend, name: str | None = None, image_urls: bool = False
) -> None:
    """clip-retrieval's ``clip back`` API: ``POST /knn-service``, ``POST /metadata``,
    ``GET /indices-list``, with the fields its front end and client send (bodies are JSON,
    whatever the content type: the front end posts ``text/plain``). Each image result's
    ``url`` is this server's thumbnail route. ``image_url`` is refused unless
    ``image_urls`` (the server then fetches it; else it fetches nothing from the network),
    ``embedding_input`` always; the safety, aesthetic and mclip fields are accepted and
    have no effect."""
    import json

    from anyio import to_thread

    from ..errors import QueryError
    from .images import MAX_UPLOAD_BYTES, decode_upload

    index_name = name or backend.path.name or "mmsearch"
    router = APIRouter()

    async def body(request: Request) -> dict[str, Any]:
        try:
            data = json.loads(await request.body() or b"{}")
        except ValueError as exc:
            raise QueryError(f"the body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise QueryError("the body must be a JSON object")
        wanted = data.get("indice_name")
        if wanted not in (None, "", index_name):
            raise QueryError(f"no index {wanted!r}: this server has {index_name!r}")
        return data

    def meta(request: Request, item_id: int) -> dict[str, Any]:
        rec = backend.item(item_id)
        if rec.modality != "image":
            return {"caption": rec.text, "source": rec.source}
        base = str(request.base_url).rstrip("/")
        return {
            "url": f"{base}/api/items/{rec.id}/thumbnail",
            "image_path": rec.path,
            "caption": Path(rec.path or "").name,
        }

    @router.get("/indices-list", tags=["clip-retrieval"])
    def indices_list() -> list[str]:
        """The index names (one: this server's index)."""
        return [index_name]

    @router.post("/knn-service", tags=["clip-retrieval"])
    async def knn_service(request: Request) -> list[dict[str, Any]]:
        """Nearest neighbours of a text or a base64 image (clip-retrieval's fields)."""
        data = await body(request)
        if data.get("embedding_input"):
            raise QueryError("embedding_input is not accepted: send text or image (base64)")
        if data.get("image_url") and not image_urls:
            raise QueryError(
                "image_url is not accepted (this server fetches nothing unless started with "
                "--clip-image-url): send image as base64"
            )
        # use_safety_model / use_violence_detector / use_mclip / aesthetic_*: accepted and
        # without effect (no such models here; the front end sends them on by default).
        target = data.get("modality") or "image"
        if target not in ("image", "text"):
            raise QueryError(f"unknown modality {target!r}: image or text")
        num_images = int(data.get("num_images") or 40)
        count = int(data.get("num_result_ids") or num_images)
        k = max(1, min(max(count, num_images), CLIP_MAX_RESULTS))
        dedupe = bool(data.get("deduplicate")) and target == "image"
        text, image = data.get("text"), data.get("image")
        if text:
            search = backend.search_text_deduped if dedupe else backend.search_text
            page = await to_thread.run_sync(search, str(text), target, k, 0)
        elif image:
            raw = _b64(str(image), MAX_UPLOAD_BYTES)
            decoded = await to_thread.run_sync(decode_upload, raw)
            page = await to_thread.run_sync(backend.search_image, decoded, target, k, 0)
        elif data.get("image_url"):
            raw = await to_thread.run_sync(_fetch, str(data["image_url"]), MAX_UPLOAD_BYTES)
            decoded = await to_thread.run_sync(decode_upload, raw)
            page = await to_thread.run_sync(backend.search_image, decoded, target, k, 0)
        else:
            raise QueryError("must fill one of text, image and image_url")
        out = []
        for n, hit in enumerate(page.hits):
            row: dict[str, Any] = meta(request, hit.id) if n < num_images else {}
            out.append({**row, "id": hit.id, "similarity": round(hit.score, 6)})
        return out

    @router.post("/metadata", tags=["clip-retrieval"])
    async def metadata(request: Request) -> list[dict[str, Any]]:
        """Metadata of result ids: ``[{"id", "metadata": {url, caption, image_path}}]``."""
        data = await body(request)
        ids = data.get("ids") or []
        if not isinstance(ids, list) or len(ids) > CLIP_MAX_RESULTS:
            raise QueryError(f"ids must be a list of at most {CLIP_MAX_RESULTS} item ids")
        return [{"id": int(i), "metadata": meta(request, int(i))} for i in ids]

    # Before the static mount at "/", which would otherwise answer first.
    app.router.routes[0:0] = router.routes


def _b64(data: str, limit: int) -> bytes:
    import base64
    import binascii

    from ..errors import ImageTooLargeError, QueryError

    if data.startswith("data:"):
        data = data.partition(",")[2]
    if len(data) > limit * 4 // 3 + 4:
        raise ImageTooLargeError(f"image over {limit:,} bytes")
    try:
        return base64.b64decode(data)
    except (binascii.Error, ValueError) as exc:
        raise QueryError(f"the image is not valid base64: {exc}") from exc


def _fetch(url: str, limit: int) -> bytes:
    """The bytes at an http(s) ``url`` (10 s, at most ``limit`` bytes): ``image_url``."""
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    from ..errors import ImageTooLargeError, QueryError

    if urlsplit(url).scheme not in ("http", "https"):
        raise QueryError("image_url must be an http or https URL")
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - scheme checked
            data = response.read(limit + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise QueryError(f"cannot fetch image_url: {exc}") from exc
    if len(data) > limit:
        raise ImageTooLargeError(f"image_url gives over {limit:,} bytes")
    return data
