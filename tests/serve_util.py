"""Helpers shared by the server tests: an index of coloured shapes, a live server."""

from __future__ import annotations

import csv
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY, load_make_shapes


def chromium_or_skip() -> str:
    """Debian's chromium, for the browser tests; the calling test module is skipped when
    it, Playwright or the serve extra (fastapi) is missing."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium is not installed (apt-get install chromium)", allow_module_level=True)
    pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
    return chromium


def shapes_index(root: Path, n: int = 36, size: int = 192) -> Path:
    """An index of ``n`` generated shape images and their captions (texts), tiny model."""
    import mmsearch

    csv_path = load_make_shapes().make_shapes(root / "shapes", n, seed=0, size=size)
    with mmsearch.Index.open(root / "idx", model=TINY) as index:
        index.add_images([root / "shapes" / "images"])
        with csv_path.open() as f:
            index.add_texts([row["caption"] for row in csv.DictReader(f)], source="pairs.csv")
    return root / "idx"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
