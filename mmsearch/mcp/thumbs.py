"""Small JPEG thumbnails of indexed images, made in memory for MCP image content.

Only a path the catalog holds for an indexed image is ever opened, and only when its bytes
still hash to the indexed content (a file replaced since indexing is refused, so a path
swapped for another file never leaks it).
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from ..catalog_base import ItemRecord
from ..errors import MMSearchError, QueryError
from ..media import hash_bytes

#: Longest side of a thumbnail sent as image content, in pixels.
MAX_SIDE = 256
#: Largest original file read to make one, in bytes.
MAX_FILE_BYTES = 64 * 1024 * 1024


def thumbnail_jpeg(record: ItemRecord, file_hash: str, size: int = MAX_SIDE) -> bytes:
    """The JPEG bytes of ``record``'s image, longest side at most ``size`` (≤ MAX_SIDE).

    Args:
        record: an indexed image's catalog record (its path is the only one read).
        file_hash: the catalog's content-hash algorithm (``Index`` knows it).
        size: longest side wanted.

    Raises:
        QueryError: a text item, a file gone, changed since indexing, or undecodable.
    """
    if record.modality != "image" or not record.path:
        raise QueryError(f"item {record.id} is a text: it has no image")
    try:
        with open(record.path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise QueryError(f"the file of item {record.id} cannot be read: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise QueryError(f"the file of item {record.id} is over {MAX_FILE_BYTES:,} bytes")
    try:
        same = hash_bytes(data, file_hash) == record.content_hash
    except (MMSearchError, ValueError) as exc:
        raise QueryError(f"cannot check the file of item {record.id}: {exc}") from exc
    if not same:
        raise QueryError(f"the file of item {record.id} changed since it was indexed")
    side = max(16, min(int(size), MAX_SIDE))
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.draft("RGB", (side, side))
            small = ImageOps.exif_transpose(img).convert("RGB")
            small.thumbnail((side, side), Image.Resampling.LANCZOS)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise QueryError(f"cannot make a thumbnail of item {record.id}: {exc}") from exc
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80)
    return out.getvalue()
