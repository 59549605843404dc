"""The HTTP API in-process (TestClient): every endpoint, every refusal."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx (TestClient) is not installed")

from conftest import exif_rotated_jpeg  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402
from serve_util import shapes_index  # noqa: E402

from mmsearch.catalog import Catalog  # noqa: E402
from mmsearch.server.app import create_app  # noqa: E402
from mmsearch.server.backend import Backend  # noqa: E402
from mmsearch.server.images import MAX_UPLOAD_BYTES  # noqa: E402
from mmsearch.server.security import Policy, allowed_hosts  # noqa: E402
from mmsearch.sources.thumbnails import THUMB_DIR  # noqa: E402

BASE = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    idx = shapes_index(root, n=24)
    # One EXIF-rotated photo (landscape pixels, portrait when upright) for the thumbnail test.
    extra = root / "extra"
    extra.mkdir()
    exif_rotated_jpeg(extra / "rotated.jpg", 7)
    import mmsearch

    with mmsearch.Index.open(idx) as index:
        index.add_images([extra])
    return idx


@pytest.fixture(scope="module")
def backend(index_dir: Path) -> Backend:
    b = Backend.open(index_dir, device="cpu")
    yield b
    b.close()


@pytest.fixture(scope="module")
def client(backend: Backend) -> TestClient:
    return TestClient(create_app(backend), base_url=BASE)


def _catalog(index_dir: Path) -> Catalog:
    return Catalog(index_dir / "catalog.sqlite", create=False)


def _ids(index_dir: Path, modality: str) -> list[int]:
    with _catalog(index_dir) as cat:
        return cat.ids(modality).tolist()


def _png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# -- endpoints --------------------------------------------------------------------------


def test_health_and_info(client: TestClient, index_dir: Path) -> None:
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/info").json()
    assert info["images"] == len(_ids(index_dir, "image")) == 25
    assert info["texts"] == len(_ids(index_dir, "text")) > 0
    assert info["model"] == "mmsearch-tiny"


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    for path in (
        "/api/health",
        "/api/info",
        "/api/search",
        "/api/search/image",
        "/api/items/{item_id}",
        "/api/items/{item_id}/similar",
        "/api/items/{item_id}/thumbnail",
        "/api/items/{item_id}/file",
    ):
        assert path in paths


def test_text_search_ids_match_catalog(client: TestClient, index_dir: Path) -> None:
    body = client.get("/api/search", params={"q": "a red circle", "k": 5}).json()
    assert len(body["hits"]) == 5 and body["next_offset"] == 5
    with _catalog(index_dir) as cat:
        records = cat.records(h["id"] for h in body["hits"])
    for hit in body["hits"]:
        assert hit["modality"] == "image"
        assert hit["path"] == records[hit["id"]].path
        assert hit["thumbnail"] == f"/api/items/{hit['id']}/thumbnail"
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_text_to_text_finds_the_exact_caption(client: TestClient) -> None:
    caption = client.get("/api/search", params={"q": "x", "target": "text", "k": 1}).json()
    text = caption["hits"][0]["text"]
    hits = client.get("/api/search", params={"q": text, "target": "text", "k": 3}).json()["hits"]
    assert hits[0]["text"] == text and hits[0]["score"] > 0.99


def test_paging_is_consistent(client: TestClient, index_dir: Path) -> None:
    full = client.get("/api/search", params={"q": "blue", "k": 12}).json()["hits"]
    first = client.get("/api/search", params={"q": "blue", "k": 6}).json()
    second = client.get("/api/search", params={"q": "blue", "k": 6, "offset": 6}).json()
    assert [h["id"] for h in first["hits"] + second["hits"]] == [h["id"] for h in full]
    n = len(_ids(index_dir, "image"))
    last = client.get("/api/search", params={"q": "blue", "k": 10, "offset": n - 3}).json()
    assert len(last["hits"]) == 3 and last["next_offset"] is None


def test_image_upload_finds_itself(client: TestClient, index_dir: Path) -> None:
    with _catalog(index_dir) as cat:
        rec = cat.records([_ids(index_dir, "image")[3]])[_ids(index_dir, "image")[3]]
    data = Path(rec.path).read_bytes()
    r = client.post(
        "/api/search/image", files={"file": ("q.png", data, "image/png")}, data={"k": "3"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["id"] == rec.id
    r = client.post(
        "/api/search/image", files={"file": ("q.png", data)}, data={"target": "text", "k": "2"}
    )
    assert [h["modality"] for h in r.json()["hits"]] == ["text", "text"]


def test_more_like_this_leaves_the_item_out(client: TestClient, index_dir: Path) -> None:
    item = _ids(index_dir, "image")[0]
    hits = client.get(f"/api/items/{item}/similar", params={"k": 30}).json()["hits"]
    assert item not in [h["id"] for h in hits]
    assert len(hits) == len(_ids(index_dir, "image")) - 1
    texts = client.get(f"/api/items/{item}/similar", params={"target": "text", "k": 2}).json()
    assert [h["modality"] for h in texts["hits"]] == ["text", "text"]
    # From a text item, its nearest text is another text (cosine of the identical text is
    # left out with the item itself).
    text_id = _ids(index_dir, "text")[0]
    near = client.get(f"/api/items/{text_id}/similar", params={"target": "text", "k": 1}).json()
    assert near["hits"][0]["id"] != text_id


def test_item_metadata(client: TestClient, index_dir: Path) -> None:
    item = _ids(index_dir, "image")[0]
    body = client.get(f"/api/items/{item}").json()
    with _catalog(index_dir) as cat:
        rec = cat.records([item])[item]
    assert body["path"] == rec.path and body["size"] == rec.size
    assert body["width"] == rec.width and body["modified"].endswith("+00:00")
    text = client.get(f"/api/items/{_ids(index_dir, 'text')[0]}").json()
    assert text["modality"] == "text" and text["thumbnail"] is None


def test_thumbnail_bounded_upright_and_cached(client: TestClient, index_dir: Path) -> None:
    rotated = _ids(index_dir, "image")[-1]  # the EXIF-rotated JPEG, added last
    r = client.get(f"/api/items/{rotated}/thumbnail", params={"size": 100})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(r.content))
    assert img.height > img.width  # 120x60 landscape pixels, upright portrait
    assert max(img.size) <= 128
    cached = list((index_dir / THUMB_DIR / "128").glob(f"{rotated}-*.jpg"))
    assert len(cached) == 1
    big = client.get(f"/api/items/{rotated}/thumbnail", params={"size": 4096})
    assert big.status_code == 200  # capped to the largest size, never upscaled past it
    assert client.get(f"/api/items/{rotated}/thumbnail", params={"size": 5000}).status_code == 422


def test_original_file(client: TestClient, index_dir: Path) -> None:
    item = _ids(index_dir, "image")[0]
    r = client.get(f"/api/items/{item}/file")
    with _catalog(index_dir) as cat:
        path = Path(cat.records([item])[item].path)
    assert r.status_code == 200 and r.content == path.read_bytes()
    assert r.headers["content-type"] == "image/png"


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<script src="app.js"' in page.text
    assert "<script>" not in page.text  # no inline script: the CSP forbids it
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/app.js").status_code == 200
    assert client.get("/style.css").status_code == 200


# -- refusals ---------------------------------------------------------------------------


def test_errors_are_json_with_status(client: TestClient, index_dir: Path) -> None:
    missing = max(_ids(index_dir, "image") + _ids(index_dir, "text")) + 1000
    for url, status in [
        (f"/api/items/{missing}", 404),
        (f"/api/items/{missing}/similar", 404),
        (f"/api/items/{missing}/thumbnail", 404),
        (f"/api/items/{_ids(index_dir, 'text')[0]}/file", 404),
        (f"/api/items/{_ids(index_dir, 'text')[0]}/thumbnail", 404),
        ("/api/items/abc", 422),
        ("/api/items/0", 422),
        ("/api/search?q=", 422),
        ("/api/search?q=%20%20", 400),
        ("/api/search?q=a&target=video", 422),
        ("/api/search?q=a&k=0", 422),
        ("/api/search?q=a&k=10&offset=995", 400),
        ("/api/nothing-here", 404),
    ]:
        r = client.get(url)
        assert r.status_code == status, (url, r.text)
        body = r.json()
        assert body["status"] == status and body["error"], url


def test_gone_file_is_404(client: TestClient, index_dir: Path, tmp_path: Path) -> None:
    import mmsearch

    folder = tmp_path / "gone"
    folder.mkdir()
    (folder / "g.png").write_bytes(_png())
    with mmsearch.Index.open(index_dir) as index:
        index.add_images([folder])
        item = index.catalog.find_path(str(folder / "g.png")).id
    (folder / "g.png").unlink()
    assert client.get(f"/api/items/{item}/file").status_code == 404
    assert client.get(f"/api/items/{item}/thumbnail").json()["error"].endswith("is gone")


def test_foreign_host_refused(client: TestClient) -> None:
    for host in ("evil.example", "evil.example:8765", "127.0.0.1.evil.example", "localhost:x"):
        r = client.get("/api/health", headers={"host": host})
        assert r.status_code == 421, host
        assert "does not answer" in r.json()["error"]
    assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200
    assert client.get("/", headers={"host": "[::1]:8765"}).status_code == 200


def test_cross_origin_refused_and_no_cors(client: TestClient) -> None:
    r = client.get("/api/info", headers={"origin": "https://evil.example"})
    assert r.status_code == 403
    r = client.options(
        "/api/search", headers={"origin": BASE, "access-control-request-method": "GET"}
    )
    assert "access-control-allow-origin" not in r.headers
    ok = client.get("/api/info", headers={"origin": BASE})
    assert ok.status_code == 200 and "access-control-allow-origin" not in ok.headers


def test_oversized_upload_413(client: TestClient) -> None:
    big = b"\0" * (MAX_UPLOAD_BYTES + 100_000)
    r = client.post("/api/search/image", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "bytes" in r.json()["error"]

    def chunks():  # no Content-Length: the middleware counts
        for _ in range(25):
            yield b"\0" * (1024 * 1024)

    r = client.post(
        "/api/search/image",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert r.status_code == 413


def test_too_many_pixels_413(client: TestClient) -> None:
    data = _png_header_only(8000, 8000)  # 64 Mpx: under Pillow's guard, over ours
    r = client.post("/api/search/image", files={"file": ("wide.png", data, "image/png")})
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_decompression_bomb_413(client: TestClient) -> None:
    data = _png_header_only(100_000, 100_000)  # 10 Gpx in ~100 bytes
    assert len(data) < 200
    r = client.post("/api/search/image", files={"file": ("bomb.png", data, "image/png")})
    assert r.status_code == 413 and "bomb" in r.json()["error"]


def test_not_an_image_400(client: TestClient) -> None:
    r = client.post("/api/search/image", files={"file": ("a.png", b"not an image", "image/png")})
    assert r.status_code == 400 and "cannot read" in r.json()["error"]
    assert client.post("/api/search/image").status_code == 422  # no file at all


TRAVERSALS = [
    "..",
    "../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%252e%252e%252fetc%252fpasswd",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "..\\..\\windows\\win.ini",
    "1%2f..%2f..%2fetc%2fpasswd",
    "1/../../../etc/passwd",
]


@pytest.mark.parametrize("attempt", TRAVERSALS)
def test_path_traversal_impossible(client: TestClient, attempt: str) -> None:
    secret = Path("/etc/passwd").read_bytes() if Path("/etc/passwd").exists() else b"root:"
    urls = [
        f"/api/items/{attempt}",
        f"/api/items/{attempt}/file",
        f"/api/items/{attempt}/thumbnail",
        f"/api/items/{attempt}/similar",
        f"/{attempt}",
        f"/static/{attempt}",
        f"/api/items/1/thumbnail?size={attempt}",
        f"/api/search?q=a&target={attempt}",
    ]
    page = client.get("/").content
    for url in urls:
        r = client.get(url)
        assert secret[:20] not in r.content
        if r.status_code == 200:  # the client resolved the dot segments to our own page
            assert r.content == page, url
            continue
        assert r.status_code in (400, 404, 422), (url, r.status_code)
        assert r.headers["content-type"].startswith("application/json"), url


def test_token_policy(backend: Backend) -> None:
    policy = Policy(hosts=allowed_hosts("0.0.0.0", ["photos.lan"]), token="s3cret", any_ip=True)
    c = TestClient(create_app(backend, policy), base_url="http://photos.lan:8765")
    assert c.get("/api/health").status_code == 200  # liveness needs no token
    r = c.get("/api/info")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/info", headers={"authorization": "Bearer s3cret"}).status_code == 200
    assert c.get("/?token=wrong", follow_redirects=False).status_code == 401
    login = c.get("/?token=s3cret", follow_redirects=False)
    assert login.status_code == 303 and login.headers["location"] == "/"
    assert (
        "HttpOnly" in login.headers["set-cookie"]
        and "SameSite=Strict" in login.headers["set-cookie"]
    )
    assert c.get("/api/info").status_code == 200  # the cookie now carries the token
    # Any IP literal is fine on a wildcard bind (rebinding needs a name); other names are not.
    assert c.get("/api/health", headers={"host": "192.168.1.20:8765"}).status_code == 200
    assert c.get("/api/health", headers={"host": "evil.example"}).status_code == 421


# -- search sessions ------------------------------------------------------------------------


def test_session_start_refine_page_show_drop(client: TestClient, index_dir: Path) -> None:
    r = client.post("/api/sessions", json={"q": "a red circle", "k": 5})
    assert r.status_code == 200, r.text
    started = r.json()
    name = started["session"]
    assert name.startswith("web-") and started["turns"] == 1 and len(started["hits"]) == 5
    assert all(h["thumbnail"] == f"/api/items/{h['id']}/thumbnail" for h in started["hits"])
    ids = [h["id"] for h in started["hits"]]
    r = client.post(
        f"/api/sessions/{name}/refine",
        json={"more": ids[:2], "less": ids[2:3], "text": "on grey", "k": 5},
    )
    assert r.status_code == 200, r.text
    refined = r.json()
    assert refined["turns"] == 2 and len(refined["hits"]) == 5
    assert not {h["id"] for h in refined["hits"]} & set(ids[:3])  # marked: not shown again
    # Paging adds no turn and agrees with the first page.
    page = client.get(f"/api/sessions/{name}/hits", params={"k": 3, "offset": 0}).json()
    more = client.get(f"/api/sessions/{name}/hits", params={"k": 3, "offset": 3}).json()
    assert [h["id"] for h in page["hits"] + more["hits"]][:5] == [h["id"] for h in refined["hits"]]
    assert page["turns"] == 2 and more["offset"] == 3
    shown = client.get(f"/api/sessions/{name}").json()
    assert [t["seq"] for t in shown["turns"]] == [0, 1]
    assert shown["turns"][1]["more"] == ids[:2] and shown["turns"][1]["text"] == "on grey"
    assert shown["turns"][0]["shown"] == ids
    assert name in [s["name"] for s in client.get("/api/sessions").json()]
    assert client.delete(f"/api/sessions/{name}").json() == {"dropped": name}
    assert name not in [s["name"] for s in client.get("/api/sessions").json()]


def test_session_from_an_item_and_shared_with_the_cli(client: TestClient, index_dir: Path) -> None:
    item = _ids(index_dir, "image")[0]
    r = client.post("/api/sessions", json={"like": item, "name": "shared", "k": 4})
    assert r.status_code == 200 and r.json()["session"] == "shared"
    assert item not in [h["id"] for h in r.json()["hits"]]  # the query item is never a hit
    import mmsearch

    with mmsearch.Index.open(index_dir) as index:  # the same session, from the Python API
        turns = index.session("shared").turns
        assert turns[0].query is not None and turns[0].query.terms[0].value == str(item)
        index.session("shared").refine(less=[turns[0].shown[0]])
    assert client.get("/api/sessions/shared").json()["turns"][1]["less"] == [turns[0].shown[0]]
    client.delete("/api/sessions/shared")


def test_session_errors(client: TestClient) -> None:
    r = client.post("/api/sessions/nobody/refine", json={"more": [1]})
    assert r.status_code == 404 and "no search session named 'nobody'" in r.json()["error"]
    assert client.get("/api/sessions/nobody").status_code == 404
    assert client.get("/api/sessions/nobody/hits").status_code == 404
    assert client.delete("/api/sessions/nobody").status_code == 404
    name = client.post("/api/sessions", json={"q": "a blue square", "k": 3}).json()["session"]
    r = client.post(f"/api/sessions/{name}/refine", json={"more": [999999]})
    assert r.status_code == 404 and "no item with id 999999" in r.json()["error"]
    r = client.post(f"/api/sessions/{name}/refine", json={})
    assert r.status_code == 400 and "give feedback" in r.json()["error"]
    r = client.post(f"/api/sessions/{name}/refine", json={"more": ["x"]})
    assert r.status_code == 422
    assert client.post("/api/sessions", json={"k": 3}).status_code == 400  # neither q nor like
    r = client.post("/api/sessions", json={"q": "x", "name": "a b"})
    assert r.status_code == 400 and "cannot name a session" in r.json()["error"]
    r = client.post("/api/sessions", json={"q": "x"}, headers={"origin": "https://evil.example"})
    assert r.status_code == 403  # a cross-site page cannot drive a session
    client.delete(f"/api/sessions/{name}")
