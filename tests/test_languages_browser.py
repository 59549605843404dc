"""The web page with Chinese: a typed Chinese query is sent intact, the Chinese texts come
back and render as they are (headless Debian chromium through Playwright)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlparse

import pytest
from serve_util import chromium_or_skip, live_server

CHROMIUM = chromium_or_skip()

from conftest import TINY, load_make_shapes  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402
from test_serve_browser import ARGS  # noqa: E402

from mmsearch.server.app import create_app  # noqa: E402
from mmsearch.server.backend import Backend  # noqa: E402

pytestmark = pytest.mark.browser

QUERY = "两个蓝色的正方形"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    import mmsearch

    root = tmp_path_factory.mktemp("browser-zh")
    ms = load_make_shapes()
    ms.make_shapes(root / "shapes", 12, seed=0)
    texts = sorted({ms.make_sample(0, i).scene.caption_zh for i in range(40)} | {QUERY})
    with mmsearch.Index.open(root / "idx", model=TINY, device="cpu") as index:
        index.add_images([root / "shapes" / "images"])
        index.add_texts(texts, source="zh")
    backend = Backend.open(root / "idx", device="cpu")
    with live_server(create_app(backend)) as url:
        yield url
    backend.close()


def test_chinese_query_in_the_page(server) -> None:
    url = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/?target=text")
        page.locator("#q").click()
        page.keyboard.type(QUERY)
        with page.expect_response(lambda r: "/api/search?" in r.url) as response:
            page.keyboard.press("Enter")
        sent = parse_qs(urlparse(response.value.url).query)
        assert sent["q"] == [QUERY] and sent["target"] == ["text"]
        body = json.loads(response.value.body())
        assert body["hits"][0]["text"] == QUERY and body["text_encoder"] == "main"
        # The same text is its own best match, and the card shows it as typed.
        first = page.locator("#grid .card.text").first
        expect(first).to_contain_text(QUERY)
        assert parse_qs(urlparse(page.url).query)["q"] == [QUERY]
        # A lang in the page's URL goes to the API (here: no zh encoder, so main answers).
        # (Matched on lang=: the previous page may still be fetching its next page; a page
        # that dropped lang would time out here.)
        with page.expect_response(lambda r: "/api/search?" in r.url and "lang=" in r.url) as again:
            page.goto(url + "/?target=text&lang=zh&q=" + QUERY)
        assert parse_qs(urlparse(again.value.url).query)["lang"] == ["zh"]
        expect(page.locator("#grid .card.text").first).to_contain_text(QUERY)
        browser.close()
        assert errors == []
