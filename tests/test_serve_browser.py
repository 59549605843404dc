"""The web page in real headless Chromium (Debian's ``chromium``, driven by Playwright)
against a real uvicorn server on an index of coloured shapes.

Screenshots are saved in the test's tmp dir; set ``MMSEARCH_SCREENSHOT=docs/screenshot.png``
to also write the README's copy.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest
from serve_util import chromium_or_skip, live_server, shapes_index

CHROMIUM = chromium_or_skip()

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402

from mmsearch.server.app import create_app  # noqa: E402
from mmsearch.server.backend import Backend  # noqa: E402

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("browser")
    backend = Backend.open(shapes_index(root, n=60, size=192), device="cpu")
    with live_server(create_app(backend)) as url:
        yield url, root
    backend.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # Failed requests are logged as console errors too; the tests check those themselves.
    pg.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    yield pg
    ctx.close()
    assert errors == []  # no script errors, no CSP violations


def _until(page: Page, expression: str, timeout: float = 20.0) -> None:
    """Poll a JS expression (page.evaluate goes through the debugger protocol, which the
    page's CSP allows; wait_for_function would need 'unsafe-eval')."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"timed out waiting for {expression}"
        time.sleep(0.1)


def _shot(page: Page, tmp_path: Path, name: str) -> Path:
    out = tmp_path / f"{name}.png"
    page.screenshot(path=str(out))
    return out


def test_empty_state_then_text_query(page: Page, server, tmp_path: Path) -> None:
    url, _ = server
    page.goto(url + "/")
    expect(page.locator("#empty h1")).to_be_visible()
    expect(page.locator("#counts")).to_contain_text("60 images")
    page.keyboard.press("/")
    page.keyboard.type("a red circle")
    page.keyboard.press("Enter")
    expect(page.locator("#grid .card").first).to_be_visible()
    expect(page).to_have_url(url + "/?q=a+red+circle")
    expect(page.locator("#grid .card").nth(29)).to_be_attached()  # a first page of 30
    _until(
        page,
        "[...document.querySelectorAll('#grid img')].slice(0, 12)"
        ".every(i => i.complete && i.naturalWidth > 0)",
    )
    # Thumbnails fill square tiles whatever the picture's own size (a bug once let the
    # <img> height attribute squash wide tiles of small images).
    boxes = page.evaluate(
        "[...document.querySelectorAll('#grid img')].slice(0, 6)"
        ".map(i => { const r = i.getBoundingClientRect(); return [r.width, r.height]; })"
    )
    assert all(abs(w - h) <= 1 and w > 100 for w, h in boxes), boxes
    shot = _shot(page, tmp_path, "grid")
    if os.environ.get("MMSEARCH_SCREENSHOT"):
        shutil.copy(shot, os.environ["MMSEARCH_SCREENSHOT"])
    # More on scroll: 60 images, pages of 30.
    page.mouse.wheel(0, 5000)
    expect(page.locator("#grid .card")).to_have_count(60)
    # Back button returns to the empty state.
    page.go_back()
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#grid .card")).to_have_count(0)


def test_viewer_more_like_this_and_texts(page: Page, server, tmp_path: Path) -> None:
    url, _ = server
    page.goto(url + "/?q=blue+squares")
    first = page.locator("#grid .card").first
    expect(first).to_be_visible()
    first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#viewer")).to_be_visible()
    expect(page.locator("#v-path")).to_contain_text("/shapes/images/")
    expect(page.locator("#v-size")).to_contain_text("192 × 192 px")
    expect(page.locator("#v-date")).not_to_be_empty()
    href = page.locator("#v-open").get_attribute("href")
    assert href and href.startswith("/api/items/") and href.endswith("/file")
    _shot(page, tmp_path, "viewer")
    page.keyboard.press("ArrowRight")
    page.locator("#v-like").click()
    expect(page).to_have_url(re.compile(r"\?like=\d+$"))
    expect(page.locator("#grid .card").first).to_be_visible()
    expect(page.locator("#query-chip")).to_contain_text("More like item")
    # Switch to texts: captions come back, and the URL says so.
    page.locator("#t-text").click()
    expect(page.locator("#grid .card.text").first).to_be_visible()
    assert "target=text" in page.url
    _shot(page, tmp_path, "texts")
    page.go_back()
    expect(page.locator("#t-image")).to_have_attribute("aria-pressed", "true")


def test_upload_image_query(page: Page, server) -> None:
    url, root = server
    page.goto(url + "/")
    query = sorted((root / "shapes" / "images").glob("*.png"))[5]
    page.locator("#file").set_input_files(str(query))
    expect(page.locator("#grid .card").first).to_be_visible()
    expect(page.locator("#query-chip")).to_contain_text("Results for your image")
    assert page.locator("#grid .card .name").first.inner_text() == query.name  # itself, first


def test_errors_are_visible(page: Page, server) -> None:
    url, _ = server
    page.goto(url + "/?like=999999")
    expect(page.locator("#error")).to_contain_text("no item with id 999999")


def test_dark_theme(browser, server, tmp_path: Path) -> None:
    url, _ = server
    ctx = browser.new_context(color_scheme="dark", viewport={"width": 1000, "height": 700})
    pg = ctx.new_page()
    pg.goto(url + "/?q=a+green+triangle")
    expect(pg.locator("#grid .card").first).to_be_visible()
    bg = pg.evaluate("getComputedStyle(document.body).backgroundColor")
    assert bg == "rgb(17, 17, 22)"
    _shot(pg, tmp_path, "dark")
    ctx.close()


def test_feedback_refines_the_search(page: Page, server, tmp_path: Path) -> None:
    """👍/👎 on results and a follow-up text continue a search session."""
    url, _ = server
    page.goto(url + "/?q=a+red+circle")
    expect(page.locator("#grid .card").first).to_be_visible()
    expect(page.locator("#refine")).to_be_visible()
    expect(page.locator("#refine-go")).to_be_disabled()
    ids = page.evaluate("hits.map(h => h.id)")
    items = page.locator("#grid li")
    items.nth(0).locator(".feedback .up").click()
    items.nth(1).locator(".feedback .up").click()
    items.nth(2).locator(".feedback .down").click()
    items.nth(3).locator(".feedback .up").click()
    items.nth(3).locator(".feedback .up").click()  # a second click takes the mark back
    expect(page.locator("#marks")).to_have_text("2 more · 1 less")
    expect(items.nth(0)).to_have_class(re.compile(r"\bmore\b"))
    expect(items.nth(2)).to_have_class(re.compile(r"\bless\b"))
    expect(items.nth(0).locator(".feedback .up")).to_have_attribute("aria-pressed", "true")
    page.locator("#follow").fill("on a grey background")
    _shot(page, tmp_path, "feedback-marked")
    page.locator("#refine-go").click()
    expect(page).to_have_url(re.compile(r"\?session=web-[0-9a-f]{8}$"))
    expect(page.locator("#query-chip")).to_contain_text("1 round of feedback")
    expect(page.locator("#grid .card").nth(29)).to_be_attached()
    refined = page.evaluate("hits.map(h => h.id)")
    assert not set(refined) & set(ids[:3])  # marked items are not shown again
    name = page.url.split("session=")[1]
    turns = page.evaluate(f"fetch('/api/sessions/{name}').then(r => r.json())")["turns"]
    assert turns[1]["more"] == ids[:2] and turns[1]["less"] == [ids[2]]
    assert turns[1]["text"] == "on a grey background"
    _shot(page, tmp_path, "feedback-refined")
    # A second round continues the same session; the follow-up box alone is enough.
    page.locator("#follow").fill("big")
    page.locator("#follow").press("Enter")
    expect(page.locator("#query-chip")).to_contain_text("2 rounds of feedback")
    assert page.url.endswith(f"session={name}")
    # Back shows the session as it stands (its state is in the catalog, not the URL).
    page.go_back()
    expect(page.locator("#grid .card").first).to_be_visible()
