"""``mmsearch mcp`` driven by the official MCP client (``mcp.ClientSession``) over stdio, on
a shapes index built with the README's fine-tuned tiny model: the tools are listed, a
three-turn refinement of "a red circle" returns red circles, a thumbnail arrives as image
content, and a path outside the index is refused without being read."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from shapes_index import ShapesIndex, build_shapes_index

pytest.importorskip("mcp")

from mcp.client import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

TOOLS = {
    "search",
    "search_by_image",
    "similar_items",
    "refine_search",
    "explain_query",
    "classify_items",
    "find_duplicates",
    "describe_item",
    "thumbnails",
    "index_status",
}


@pytest.fixture(scope="module")
def shapes(shapes_model, tmp_path_factory: pytest.TempPathFactory) -> ShapesIndex:
    model_dir, _, _ = shapes_model
    return build_shapes_index(tmp_path_factory.mktemp("mcp"), model_dir)


def server_env() -> dict[str, str]:
    """What the spawned server needs (the SDK passes only a safe subset of the env)."""
    keep = ("PYTHONPATH", "HF_HUB_OFFLINE", "HOME", "MMSEARCH_CACHE", "XDG_CACHE_HOME")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["MMSEARCH_QUERY_RUNTIME"] = "torch"  # no ONNX export of this model to wait for
    return env


def text_json(result: Any) -> Any:
    assert not result.is_error, result.content
    texts = [c.text for c in result.content if c.type == "text"]
    return json.loads(texts[0])


async def call(client: ClientSession, name: str, **arguments: Any) -> Any:
    return await client.call_tool(name, arguments)


def run_client(index_dir: Path, body: Any) -> Any:
    mmsearch = shutil.which("mmsearch") or sys.executable
    args = ["mcp", "--index", str(index_dir)]
    if not shutil.which("mmsearch"):
        args = ["-m", "mmsearch", *args]
    params = StdioServerParameters(command=mmsearch, args=args, env=server_env())

    async def main() -> Any:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await body(session)

    return anyio.run(main)


def red_circles(shapes: ShapesIndex, hits: list[dict[str, Any]]) -> int:
    return sum(shapes.caption(h["path"]) == "a red circle" for h in hits)


@pytest.mark.slow  # a shapes index (150 images) and a server process: ~25 s on 2 busy cores
def test_mcp_over_stdio(shapes: ShapesIndex, tmp_path: Path) -> None:
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(outside)
    total_red = sum(c == "a red circle" for c in shapes.captions.values())
    assert total_red >= 5, "the generated corpus must hold red circles to find"

    async def body(session: ClientSession) -> dict[str, Any]:
        out: dict[str, Any] = {}
        out["tools"] = {t.name for t in (await session.list_tools()).tools}
        out["turn0"] = text_json(
            await call(session, "refine_search", session="walk", query="a red circle", k=5)
        )
        shown = out["turn0"]["hits"]
        more = [h["id"] for h in shown if shapes.caption(h["path"]) == "a red circle"]
        less = [h["id"] for h in shown if shapes.caption(h["path"]) != "a red circle"]
        out["turn1"] = text_json(
            await call(session, "refine_search", session="walk", more=more, less=less, k=5)
        )
        out["turn2"] = text_json(
            await call(session, "refine_search", session="walk", text="a red circle", k=5)
        )
        first = out["turn2"]["hits"][0]["id"]
        out["describe"] = await call(session, "describe_item", item_id=first)
        out["outside"] = await call(session, "search_by_image", path=str(outside))
        inside = out["turn2"]["hits"][0]["path"]
        out["inside"] = text_json(await call(session, "search_by_image", path=inside, k=3))
        out["status"] = text_json(await call(session, "index_status"))
        out["too_many"] = await call(session, "thumbnails", item_ids=[h["id"] for h in shown] * 2)
        return out

    out = run_client(shapes.index_dir, body)
    assert out["tools"] >= TOOLS, out["tools"]
    for turn in ("turn0", "turn1", "turn2"):
        hits = out[turn]["hits"]
        assert len(hits) == 5, out[turn]
        # Red circles come first and fill the page, turn after turn.
        assert shapes.caption(hits[0]["path"]) == "a red circle", (turn, hits)
        assert red_circles(shapes, hits) >= 4, (turn, [shapes.caption(h["path"]) for h in hits])
    assert out["turn2"]["turns"] == 3

    described = out["describe"]
    assert not described.is_error, described.content
    meta = json.loads(described.content[0].text)
    assert meta["modality"] == "image" and meta["path"]
    images = [c for c in described.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/jpeg"
    thumb = Image.open(io.BytesIO(base64.b64decode(images[0].data)))
    assert thumb.format == "JPEG" and max(thumb.size) <= 256

    refused = out["outside"]
    assert refused.is_error
    assert "not an indexed file" in refused.content[0].text, refused.content
    assert out["inside"]["item_id"] == out["turn2"]["hits"][0]["id"]
    assert all(h["id"] != out["inside"]["item_id"] for h in out["inside"]["hits"])
    assert out["status"]["images"] == len(shapes.captions)
    assert out["too_many"].is_error  # 10 thumbnails asked: at most 8 per call


@pytest.mark.slow  # the shapes index (shared with the stdio test) and a live server
def test_mcp_over_http_behind_the_token(
    shapes: ShapesIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    from serve_util import live_server

    from mmsearch.server.command import build_app

    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")
    token = "s3cret-token"
    app = build_app(shapes.index_dir, "127.0.0.1", token)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (32, 32), (220, 40, 40)).save(outside)

    async def session_calls(url: str, headers: dict[str, str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        http = create_mcp_http_client(headers=headers)
        async with (
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            out["tools"] = {t.name for t in (await session.list_tools()).tools}
            out["search"] = text_json(await call(session, "search", query="a red circle", k=5))
            out["thumb"] = await call(
                session, "thumbnails", item_ids=[out["search"]["hits"][0]["id"]]
            )
            out["outside"] = await call(session, "search_by_image", path=str(outside))
        return out

    with live_server(app) as base:
        url = f"{base}/mcp"
        init = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"},
            },
        }
        accept = {"accept": "application/json, text/event-stream"}
        assert httpx.post(url, json=init, headers=accept).status_code == 401
        wrong = {**accept, "authorization": "Bearer nope"}
        assert httpx.post(url, json=init, headers=wrong).status_code == 401
        evil = {**accept, "authorization": f"Bearer {token}", "host": "evil.example"}
        assert httpx.post(url, json=init, headers=evil).status_code == 421
        out = anyio.run(session_calls, url, {"authorization": f"Bearer {token}"})
    assert out["tools"] >= TOOLS
    hits = out["search"]["hits"]
    assert shapes.caption(hits[0]["path"]) == "a red circle"
    assert red_circles(shapes, hits) >= 4
    images = [c for c in out["thumb"].content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/jpeg"
    assert out["outside"].is_error and "not an indexed file" in out["outside"].content[0].text
