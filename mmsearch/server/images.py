"""Decoding uploaded query images, with bounded sizes and Pillow's decompression-bomb guard
(thumbnails: :mod:`mmsearch.sources.thumbnails`)."""

from __future__ import annotations

import io
import logging
import warnings

from PIL import Image, ImageOps

from ..errors import ImageTooLargeError, QueryError
from ..sources.thumbnails import rgb

logger = logging.getLogger(__name__)

#: Largest upload accepted, in bytes (the request body is refused beyond it).
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
#: Largest query image accepted, in pixels (a 40-megapixel photo fits).
MAX_UPLOAD_PIXELS = 50_000_000


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
            return rgb(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image refused as a decompression bomb: {exc}") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # what Pillow raises for bad data
        raise QueryError(f"cannot read the uploaded image: {exc}") from exc
