"""clip-retrieval's back-end API on ``mmsearch serve`` (``/knn-service``, ``/metadata``,
``/indices-list``), and clip-retrieval's own front end (``front/build`` of its wheel, served
from another origin) searching a shapes index in headless Chromium.

The wheel cannot be downloaded at test time (tests never touch the network) and pip cannot
install a package's files without its dependencies through setup.cfg, so the browser test
reads the front end from a wheel already on disk: ``$MMSEARCH_CLIP_RETRIEVAL_WHEEL``, or
``/work/cache/wheels/clip_retrieval-*.whl``; it is skipped with that reason otherwise.
"""

from __future__ import annotations

import base64
import functools
import glob
import http.server
import io
import json
import os
import threading
import zipfile
from pathlib import Path

import httpx
import pytest
from PIL import Image
from serve_util import free_port, live_server
from shapes_index import ShapesIndex, build_shapes_index

from mmsearch.server.command import build_app


@pytest.fixture(scope="module")
def shapes(shapes_model, tmp_path_factory: pytest.TempPathFactory) -> ShapesIndex:
    model_dir, _, _ = shapes_model
    return build_shapes_index(tmp_path_factory.mktemp("clip"), model_dir, n=120, seed=5)


@pytest.mark.slow  # a shapes index (120 images): ~15 s on 2 busy cores
def test_clip_back_api(shapes: ShapesIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")
    front = "http://127.0.0.1:9"  # another site, allowed
    app = build_app(shapes.index_dir, "127.0.0.1", None, origins=(front,))
    with live_server(app) as base:
        assert httpx.get(f"{base}/indices-list").json() == ["idx"]
        query = {
            "text": "a red circle",
            "modality": "image",
            "num_images": 5,
            "indice_name": "idx",
            "num_result_ids": 5,
            "use_mclip": False,
            "deduplicate": True,
            "use_safety_model": False,
            "use_violence_detector": False,
            "aesthetic_score": "",
            "aesthetic_weight": "0.5",
        }
        # As the front end posts it: a JSON string as text/plain, from its own origin.
        r = httpx.post(
            f"{base}/knn-service",
            content=json.dumps(query),
            headers={"content-type": "text/plain;charset=UTF-8", "origin": front},
        )
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == front
        results = r.json()
        assert len(results) == 5
        assert all({"id", "similarity", "url", "caption"} <= set(x) for x in results)
        assert [shapes.caption(x["image_path"]) for x in results].count("a red circle") >= 4
        thumb = httpx.get(results[0]["url"])  # each url reaches the thumbnail route
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        assert thumb.headers["cross-origin-resource-policy"] == "cross-origin"

        # By image (base64), and metadata by id.
        buf = io.BytesIO()
        Image.open(results[0]["image_path"]).save(buf, "PNG")
        by_image = {**query, "text": None, "image": base64.b64encode(buf.getvalue()).decode()}
        r = httpx.post(f"{base}/knn-service", content=json.dumps(by_image))
        assert r.status_code == 200, r.text
        assert shapes.caption(r.json()[0]["image_path"]) == "a red circle"
        r = httpx.post(
            f"{base}/metadata",
            content=json.dumps({"ids": [results[0]["id"]], "indice_name": "idx"}),
        )
        assert r.json()[0]["metadata"]["url"] == results[0]["url"]

        # Refused: a URL to fetch, an unknown index, a site not allowed.
        r = httpx.post(
            f"{base}/knn-service", content=json.dumps({**query, "image_url": "http://x/"})
        )
        assert r.status_code == 400 and "image_url" in r.json()["error"]
        r = httpx.post(f"{base}/knn-service", content=json.dumps({**query, "indice_name": "nope"}))
        assert r.status_code == 400
        r = httpx.post(
            f"{base}/knn-service",
            content=json.dumps(query),
            headers={"origin": "http://evil.example"},
        )
        assert r.status_code == 403


def clip_front(tmp: Path) -> Path:
    """front/build of the clip-retrieval wheel, unzipped; skips when there is none."""
    wheel = os.environ.get("MMSEARCH_CLIP_RETRIEVAL_WHEEL") or next(
        iter(sorted(glob.glob("/work/cache/wheels/clip_retrieval-*.whl"))), None
    )
    if not wheel or not Path(wheel).exists():
        pytest.skip(
            "no clip-retrieval wheel on disk (set MMSEARCH_CLIP_RETRIEVAL_WHEEL): its front "
            "end cannot be downloaded during tests"
        )
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp, [n for n in z.namelist() if n.startswith("front/build/")])
    return tmp / "front" / "build"


@pytest.mark.slow
@pytest.mark.browser
def test_clip_front_searches_mmsearch(
    shapes: ShapesIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve_util import chromium_or_skip

    chromium = chromium_or_skip()
    from playwright.sync_api import sync_playwright

    build = clip_front(tmp_path)
    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")
    port = free_port()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(build))
    static = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=static.serve_forever, daemon=True).start()
    front = f"http://127.0.0.1:{port}"
    app = build_app(shapes.index_dir, "127.0.0.1", None, origins=(front,))
    requests: list[str] = []
    try:
        with live_server(app) as base, sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            page.on("request", lambda r: requests.append(r.url))
            page.goto(f"{front}/?back={base}&index=idx&query=a%20red%20circle")
            images = page.locator(f'img[src^="{base}/api/items/"]')
            images.first.wait_for(timeout=60_000)
            page.wait_for_function(
                """base => {
                    const found = [];
                    const walk = root => root.querySelectorAll('*').forEach(e => {
                        if (e.tagName === 'IMG' && e.src.startsWith(base)) found.push(e);
                        if (e.shadowRoot) walk(e.shadowRoot);
                    });
                    walk(document);
                    return found.length >= 3 && found.slice(0, 3).every(
                        i => i.complete && i.naturalWidth > 0);
                }""",
                arg=f"{base}/api/items/",
                timeout=60_000,
            )
            srcs = [images.nth(i).get_attribute("src") for i in range(min(5, images.count()))]
            browser.close()
    finally:
        static.shutdown()
    assert any(u.startswith(f"{base}/knn-service") for u in requests), requests
    ids = [int(s.split("/api/items/")[1].split("/")[0]) for s in srcs if s]
    import mmsearch

    with mmsearch.Index.open(shapes.index_dir, create=False) as index:
        captions = [shapes.caption(index.item(i).path) for i in ids]
    assert captions[0] == "a red circle", captions
    assert captions.count("a red circle") >= 3, captions


@pytest.mark.slow  # the shapes index of this module
def test_image_url_only_with_the_flag(shapes: ShapesIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")
    red = next(p for p, c in shapes.captions.items() if c == "a red circle")
    port = free_port()
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(Path(red).parent)
    )
    static = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=static.serve_forever, daemon=True).start()
    query = {
        "image_url": f"http://127.0.0.1:{port}/{Path(red).name}",
        "modality": "image",
        "num_images": 3,
        "indice_name": "idx",
    }
    try:
        for allowed in (False, True):
            app = build_app(shapes.index_dir, "127.0.0.1", None, image_urls=allowed)
            with live_server(app) as base:
                r = httpx.post(f"{base}/knn-service", content=json.dumps(query))
            if not allowed:
                assert r.status_code == 400 and "--clip-image-url" in r.json()["error"]
            else:
                assert r.status_code == 200, r.text
                assert shapes.caption(r.json()[0]["image_path"]) == "a red circle"
    finally:
        static.shutdown()
