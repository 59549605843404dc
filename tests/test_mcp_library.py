"""The MCP tools' library (:class:`mmsearch.mcp.library.Library`) on a tiny index: the caps,
the refusals (a path outside the index is never opened), thumbnails from the verified
file. Fast; the end-to-end tests over stdio and HTTP are in test_mcp.py."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest
from PIL import Image
from serve_util import shapes_index

import mmsearch
from mmsearch.errors import QueryError
from mmsearch.mcp.library import MAX_K, MAX_SIDE, MAX_THUMBNAILS, Library


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("mcplib")
    index = mmsearch.Index.open(shapes_index(root, n=12, size=400), create=False)
    yield Library(index)
    index.close()


def test_outside_paths_are_refused_unread(library: Library, tmp_path: Path, monkeypatch) -> None:
    outside = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(outside)
    opened: list[str] = []
    real_open = open

    def spy(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(QueryError, match="not an indexed file"):
        library.search_by_image(path=str(outside))
    with pytest.raises(QueryError, match="not an indexed file"):
        library.search_by_image(path="/etc/passwd")
    assert not [p for p in opened if p.endswith(("x.png", "passwd"))]


def test_by_indexed_path_bytes_and_caps(library: Library) -> None:
    first = library.search("a red circle", k=1000)
    assert len(first["hits"]) == min(MAX_K, 12)  # k capped, never an error
    path = first["hits"][0]["path"]
    by_path = library.search_by_image(path=path, k=3)
    assert by_path["item_id"] == first["hits"][0]["id"]
    buf = io.BytesIO()
    Image.open(path).save(buf, "PNG")
    by_bytes = library.search_by_image(image_base64=base64.b64encode(buf.getvalue()).decode())
    assert by_bytes["hits"][0]["id"] == first["hits"][0]["id"]  # itself, best
    with pytest.raises(QueryError, match="base64"):
        library.search_by_image(image_base64="not base64!")
    with pytest.raises(QueryError, match="exactly one"):
        library.search_by_image(item_id=1, path=path)
    with pytest.raises(QueryError, match="unknown filter"):
        library.search("a circle", filters={"path": "/"})
    ids = [h["id"] for h in first["hits"]][: MAX_THUMBNAILS + 1]
    with pytest.raises(QueryError, match="at most"):
        library.thumbnails(ids)
    (thumb,) = library.thumbnails(ids[:1], size=4096)
    img = Image.open(io.BytesIO(thumb))
    assert img.format == "JPEG" and max(img.size) <= MAX_SIDE


def test_changed_file_gives_no_thumbnail(library: Library) -> None:
    # The last hit: no thumbnail of it made yet (a cached one is of the indexed content).
    hit = library.search("a red circle", k=12)["hits"][-1]
    described = library.describe(hit["id"])
    assert described["path"] == hit["path"] and described["modality"] == "image"
    Image.new("RGB", (50, 50), (1, 2, 3)).save(hit["path"])  # replaced since indexing
    with pytest.raises(mmsearch.MMSearchError):
        library.thumbnails([hit["id"]])
