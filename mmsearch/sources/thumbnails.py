"""Thumbnails of indexed images, made from the verified file and cached by content hash.

The cache key holds the item id and its content hash, so a file that changed never gets a
stale thumbnail, and a thumbnail is only ever made from bytes that passed
:func:`mmsearch.sources.files.open_indexed` (the caller hands them over).
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import QueryError
from .files import IndexedFile

#: Thumbnail sides served; a requested size is rounded up to one of these, so the disk
#: cache holds at most this many files per item.
THUMB_SIZES = (128, 256, 512, 1024)
#: Folder of the thumbnail cache inside the index directory.
THUMB_DIR = "thumbnails"


def thumb_size(requested: int) -> int:
    """The served side for a requested one: the smallest of THUMB_SIZES that covers it."""
    return next((s for s in THUMB_SIZES if s >= requested), THUMB_SIZES[-1])


def cached_thumbnail(index_dir: Path, item_id: int, content_hash: str, size: int) -> Path:
    """Where the thumbnail of this content at ``size`` is (or will be) cached."""
    return index_dir / THUMB_DIR / str(size) / f"{int(item_id)}-{content_hash[:16]}.jpg"


def make_thumbnail(source: IndexedFile, target: Path, size: int) -> Path:
    """Decode the verified ``source`` and write its JPEG thumbnail (longest side ``size``,
    upright) to ``target``, atomically.

    Raises:
        QueryError: the bytes cannot be decoded as an image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(source.read())) as img:
                img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, much faster
                small = rgb(ImageOps.exif_transpose(img))
                small.thumbnail((size, size), Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:  # fmt: skip
        raise QueryError(f"cannot make a thumbnail of item {source.item_id}: {exc}") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written under a temporary name and renamed: concurrent requests never see half a file.
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            small.save(f, "JPEG", quality=85, optimize=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (black behind a logo looks broken)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return img.convert("RGB")
