"""Serve only what was indexed: an indexed picture swapped for a link to a secret file, a
non-image file or another picture is never served by the file and thumbnail routes, over a
real server; ranges; the one check (:func:`mmsearch.sources.files.open_indexed`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")

from conftest import TINY, noise_image  # noqa: E402
from serve_util import live_server  # noqa: E402

import mmsearch  # noqa: E402
from mmsearch.errors import FileChangedError, FileGoneError  # noqa: E402
from mmsearch.media import content_hash  # noqa: E402
from mmsearch.server.app import create_app  # noqa: E402
from mmsearch.server.backend import Backend  # noqa: E402
from mmsearch.server.files import parse_range  # noqa: E402
from mmsearch.sources.files import open_indexed  # noqa: E402

SECRET = b"root:x:0:0:SECRET-LINE-7f3a9c:/root:/bin/bash\n" * 40


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read(), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), {k.lower(): v for k, v in exc.headers.items()}


def _index(root: Path, photos: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "mmsearch", "-q", "index", str(photos), "--index",
         str(root / "idx"), "--model", TINY],
        check=True, capture_output=True,
    )  # fmt: skip
    return root / "idx"


def _ids(idx: Path) -> dict[str, int]:
    with mmsearch.Index.open(idx) as index:
        return {Path(r.path or "").name: r.id for r in index.catalog.image_files()}


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, Path, Path]:
    photos = tmp_path / "photos"
    photos.mkdir()
    for n, name in enumerate(("a.jpg", "b.jpg", "c.jpg", "d.jpg")):
        noise_image(n, size=(160, 120)).save(photos / name, "JPEG", quality=92)
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    return photos, secret, _index(tmp_path, photos)


def test_a_swapped_file_never_leaks_and_a_new_picture_waits_for_indexing(
    library: tuple[Path, Path, Path],
) -> None:
    photos, secret, idx = library
    ids = _ids(idx)
    original_b = (photos / "b.jpg").read_bytes()
    (photos / "a.jpg").unlink()
    (photos / "a.jpg").symlink_to(secret)  # (a) a link to a file outside the roots
    (photos / "b.jpg").write_bytes(SECRET)  # (b) a regular file that is not a picture
    noise_image(40, size=(200, 100)).save(photos / "c.jpg", "JPEG")  # (c) another picture
    new_c = (photos / "c.jpg").read_bytes()
    backend = Backend.open(idx)
    try:
        with live_server(create_app(backend)) as base:
            for name in ("a.jpg", "b.jpg"):
                for route in ("file", "thumbnail", "thumbnail?size=1024"):
                    status, body, _ = _get(f"{base}/api/items/{ids[name]}/{route}")
                    assert status == 409, (name, route, status)
                    assert b"SECRET-LINE" not in body and b"root:x" not in body
                status, body, _ = _get(
                    f"{base}/api/items/{ids[name]}/file", {"Range": "bytes=0-10"}
                )
                assert status == 409 and b"root:x" not in body
            status, body, _ = _get(f"{base}/api/items/{ids['c.jpg']}/file")
            assert status == 409 and new_c not in body
            assert _get(f"{base}/api/items/{ids['c.jpg']}/thumbnail")[0] == 409
            status, body, _ = _get(f"{base}/api/items/{ids['d.jpg']}/file")
            assert status == 200 and body == (photos / "d.jpg").read_bytes()
    finally:
        backend.close()
    assert original_b != SECRET
    # Indexed again: the new picture is served under its new item, the old ids are gone.
    _index(idx.parent, photos)
    after = _ids(idx)
    backend = Backend.open(idx)
    try:
        with live_server(create_app(backend)) as base:
            status, body, _ = _get(f"{base}/api/items/{after['c.jpg']}/file")
            assert status == 200 and body == new_c
            assert _get(f"{base}/api/items/{after['c.jpg']}/thumbnail")[0] == 200
            assert _get(f"{base}/api/items/{ids['c.jpg']}/file")[0] == 404
            assert "b.jpg" not in after  # not a picture any more: left the index
    finally:
        backend.close()


def test_a_touched_file_with_the_same_content_is_served_and_a_gone_one_is_404(
    library: tuple[Path, Path, Path],
) -> None:
    photos, _, idx = library
    ids = _ids(idx)
    later = time.time() + 3600
    os.utime(photos / "a.jpg", (later, later))  # same bytes, another mtime: hashed
    (photos / "b.jpg").unlink()
    backend = Backend.open(idx)
    try:
        with live_server(create_app(backend)) as base:
            status, body, headers = _get(f"{base}/api/items/{ids['a.jpg']}/file")
            assert status == 200 and body == (photos / "a.jpg").read_bytes()
            assert headers["content-type"] == "image/jpeg"
            assert headers["accept-ranges"] == "bytes"
            assert _get(f"{base}/api/items/{ids['b.jpg']}/file")[0] == 404
            assert _get(f"{base}/api/items/{ids['b.jpg']}/thumbnail")[0] == 404
    finally:
        backend.close()


def test_ranges_are_served_from_the_verified_file(library: tuple[Path, Path, Path]) -> None:
    photos, _, idx = library
    ids = _ids(idx)
    data = (photos / "d.jpg").read_bytes()
    size = len(data)
    backend = Backend.open(idx)
    try:
        with live_server(create_app(backend)) as base:
            url = f"{base}/api/items/{ids['d.jpg']}/file"
            status, body, headers = _get(url, {"Range": "bytes=10-99"})
            assert status == 206 and body == data[10:100]
            assert headers["content-range"] == f"bytes 10-99/{size}"
            assert headers["content-length"] == "90"
            status, body, _ = _get(url, {"Range": "bytes=100-"})
            assert status == 206 and body == data[100:]
            status, body, _ = _get(url, {"Range": "bytes=-50"})
            assert status == 206 and body == data[-50:]
            status, body, headers = _get(url, {"Range": f"bytes={size}-"})
            assert status == 416 and headers["content-range"] == f"bytes */{size}"
    finally:
        backend.close()


def test_parse_range() -> None:
    assert parse_range(None, 100) is None
    assert parse_range("bytes=0-0", 100) == (0, 0)
    assert parse_range("bytes=90-200", 100) == (90, 99)
    assert parse_range("bytes=-200", 100) == (0, 99)
    assert parse_range("bytes=0-1,5-6", 100) is None  # several: the whole file
    assert parse_range("items=1-2", 100) is None
    assert parse_range("bytes=100-", 100) == "unsatisfiable"
    assert parse_range("bytes=-0", 100) == "unsatisfiable"
    assert parse_range("bytes=5-2", 100) == "unsatisfiable"


def test_open_indexed_judges_the_open_file(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"indexed content")
    st = path.stat()
    digest = content_hash(path)
    with open_indexed(1, str(path), st.st_size, st.st_mtime_ns, digest, "blake3") as f:
        assert f.verified_by == "stat" and f.read() == b"indexed content"
        assert f.read(8, 3) == b"con"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with open_indexed(1, str(path), st.st_size, st.st_mtime_ns, digest, "blake3") as f:
        assert f.verified_by == "hash"
    path.write_bytes(b"other content!!")  # same size, another content
    with pytest.raises(FileChangedError):
        open_indexed(1, str(path), st.st_size, st.st_mtime_ns, digest, "blake3")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(FileChangedError):  # opened without blocking, refused
        open_indexed(1, str(fifo), st.st_size, st.st_mtime_ns, digest, "blake3")
    folder = tmp_path / "dir"
    folder.mkdir()
    with pytest.raises(FileChangedError):
        open_indexed(1, str(folder), st.st_size, st.st_mtime_ns, digest, "blake3")
    with pytest.raises(FileGoneError):
        open_indexed(1, str(tmp_path / "none"), 1, 1, digest, "blake3")
    shutil.rmtree(folder)
