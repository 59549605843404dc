"""A plain JPEG's header read by walking its markers, for the GPU path's header probe.

Pillow's JPEG opener parses every quantisation and Huffman table in Python (~115 µs of the
GIL for a 2 MP photo). The GPU path needs only the frame's size and components and the
EXIF orientation and date, so :func:`read` walks the markers up to the scan and reads just
those — for the common case only. Anything else (a second EXIF block, XMP, which Pillow
reads an orientation from, a multi-picture file, other than 8 bits or 1 or 3 components,
an unknown or misplaced marker, a header that ends early) returns None, and the caller
asks Pillow, so every verdict stays Pillow's. ``tests/test_media.py`` checks the two
agree across orientations, dates, grey and colour, progressive, ICC, XMP, MPO and broken
files.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SKIPPED = frozenset({0xC4, 0xCC, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)})  # DHT DAC DQT DRI COM APPn
_SOS = 0xDA
_MODES = {1: "L", 3: "RGB"}
_EXIF = b"Exif\x00\x00"


@dataclass(frozen=True)
class JpegHeader:
    """What :func:`read` found: the stored (unrotated) size, Pillow's mode, and the EXIF
    block as Pillow keeps it (``info["exif"]``), if any."""

    width: int
    height: int
    mode: str
    exif: bytes | None


def read(data: bytes | bytearray) -> JpegHeader | None:
    """The header of a plain JPEG (see the module's docstring), or None to ask Pillow."""
    end = len(data)
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos, frame, exif = 2, None, None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        body = pos + 4
        stop = pos + 2 + length
        if length < 2 or stop > end:
            return None
        if marker == _SOS:
            if frame is None:
                return None
            width, height, mode = frame
            return JpegHeader(width, height, mode, exif)
        if marker in _SOF:
            if frame is not None or length < 8 or data[body] != 8:
                return None
            height = (data[body + 1] << 8) | data[body + 2]
            width = (data[body + 3] << 8) | data[body + 4]
            mode = _MODES.get(data[body + 5])
            if mode is None or not width or not height:
                return None
            frame = (width, height, mode)
        elif marker == 0xE1:  # APP1: EXIF, else XMP or another kind: Pillow's business
            if exif is not None or bytes(data[body : body + 6]) != _EXIF:
                return None
            exif = bytes(data[body:stop])
        elif marker == 0xE2 and bytes(data[body : body + 4]) == b"MPF\x00":
            return None  # a multi-picture file: Pillow opens it as MPO
        elif marker not in _SKIPPED:
            return None
        pos = stop
    return None


def exif_of(header: JpegHeader) -> Image.Exif:
    """The EXIF tags as Pillow's ``getexif()`` gives them for the same file."""
    exif = Image.Exif()
    if header.exif is not None:
        exif.load(header.exif)
    return exif
