"""Decoding uploaded query images and making thumbnails, with bounded sizes and Pillow's
decompression-bomb guard on both."""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageOps

from ..errors import ImageTooLargeError, QueryError

logger = logging.getLogger(__name__)

#: Largest upload accepted, in bytes (the request body is refused beyond it).
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest query image accepted, in pixels (a 40-megapixel photo fits).
MAX_UPLOAD_PIXELS = 50_000_000
#: Thumbnail sides served; a requested size is rounded up to one of these, so the disk
#: cache holds at most this many files per item.
THUMB_SIZES = (128, 256, 512, 1024)
#: Folder of the thumbnail cache inside the index directory.
THUMB_DIR = "thumbnails"


def decode_upload(data: bytes, max_pixels: int = MAX_UPLOAD_PIXELS) -> Image.Image:
    """An uploaded image as upright RGB.

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels, or a decompression bomb.
        QueryError: not an image Pillow can read.
    """
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS: treat it as the bomb it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.width * img.height > max_pixels:
                raise ImageTooLargeError(
                    f"image of {img.width}x{img.height} pixels: at most {max_pixels:,} allowed"
                )
            img = ImageOps.exif_transpose(img)
            return _rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for bad data
        raise QueryError(f"cannot read the uploaded image: {exc}") from exc


def thumb_size(requested: int) -> int:
    """The served side for a requested one: the smallest of THUMB_SIZES that covers it."""
    return next((s for s in THUMB_SIZES if s >= requested), THUMB_SIZES[-1])


def thumbnail(index_dir: Path, item_id: int, content_hash: str, source: str, size: int) -> Path:
    """The JPEG thumbnail (longest side ``size``) of an indexed image, made once and then
    read from the cache in the index directory.

    The cache key holds the content hash, so a file that changed never gets a stale
    thumbnail. Only ids and hashes from the catalog name cache files.

    Raises:
        FileNotFoundError: the original is gone.
        QueryError: it cannot be decoded any more.
    """
    folder = index_dir / THUMB_DIR / str(size)
    path = folder / f"{int(item_id)}-{content_hash[:16]}.jpg"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with Image.open(source) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at 1/2..1/8 scale, much faster
            small = _rgb(ImageOps.exif_transpose(img))
            small.thumbnail((size, size), Image.Resampling.LANCZOS)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise QueryError(f"cannot make a thumbnail of item {item_id}: {exc}") from exc
    # Written under a temporary name and renamed: concurrent requests never see half a file.
    fd, tmp = tempfile.mkstemp(suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            small.save(f, "JPEG", quality=85, optimize=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (black behind a logo looks broken)."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return img.convert("RGB")
