"""Image files: which formats can be decoded, decode one (EXIF orientation, any mode to
RGB, size limits, reasons for failures) or many in a thread pool, and hash their bytes.

Every picture format Pillow opens is decoded (:func:`image_extensions`), HEIC/HEIF through
pillow-heif and camera RAW files through rawpy when the ``formats`` extra is installed;
without it such files are refused with a reason that names the extra
(:func:`missing_decoder`).

:func:`load_image` turns every way a file can be unusable (missing, empty, not an image,
truncated, too large, unreadable) into an :class:`~mmsearch.errors.InputError` with a short
human reason, so a run can skip the file, count it and go on. :func:`load_many` decodes in
a thread pool (Pillow releases the GIL while decoding) and yields results in input order.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import logging
import os
import re
import stat
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, TypeVar

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from . import jpeg_header
from .config import cpu_cores
from .errors import InputError, InvalidValueError

T = TypeVar("T")
logger = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 100_000_000
"""Images with more pixels than this (width × height, from the header) are refused."""

_EXIF_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_DATE_TIME_ORIGINAL = 0x9003
_DATE_TIME = 0x0132
_ROTATING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transposes that swap width and height
_ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
_HIGH_DEPTH_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_WHITE = (255, 255, 255, 255)

HEIF_EXTENSIONS: frozenset[str] = frozenset({".heic", ".heif", ".hif"})
"""HEIC/HEIF photos (phones), decoded by pillow-heif."""

RAW_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".k25",
        ".kdc", ".mef", ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".rw2",
        ".rwl", ".sr2", ".srf", ".srw", ".x3f",
    }
)  # fmt: skip
"""Camera RAW files, decoded by rawpy (LibRaw). ``.raw`` is left out: too many tools use it
for headerless pixel dumps."""

FORMATS_EXTRA_REASON = "install mmsearch[formats] to index HEIC/RAW files"
"""Why a HEIC/HEIF or RAW file is skipped when the optional packages are missing."""

# Formats Pillow registers but that are not scanned: they need external tools, are not
# pictures, or their extension mostly names something else.
_NOT_SCANNED_FORMATS = frozenset(
    {
        "EPS",  # .eps/.ps: rendered by Ghostscript, an external program
        "PDF",  # documents (and Pillow only writes them)
        "WMF",  # .wmf/.emf: vector drawings Pillow renders only on Windows
        "MPEG",  # .mpg/.mpeg: video; Pillow identifies it but decodes nothing
        "BUFR", "GRIB", "HDF5",  # scientific data; stubs that need an external handler
        "FITS",  # astronomy data arrays; .fit is also Garmin's activity file
        "IPTC",  # .iim: metadata records, not a picture
        "CUR",  # mouse cursors: application resources
        "GBR",  # GIMP brushes; .gbr is also a Gerber (circuit board) file
        "ICNS",  # macOS icon bundles: thousands inside every .app, not photos
    }
)  # fmt: skip
# Opened by another format's plugin (MPO by the JPEG one), so absent from Image.OPEN.
_EXTRA_PILLOW_EXTENSIONS = frozenset({".mpo"})

# LibRaw's ``sizes.flip`` (dcraw's flip) as the transpose that displays the image upright:
# bit 4 swaps the axes, so flips 4-7 turn a landscape sensor into a portrait picture.
_RAW_FLIP_TRANSPOSE = {
    1: Image.Transpose.FLIP_LEFT_RIGHT,
    2: Image.Transpose.FLIP_TOP_BOTTOM,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.TRANSPOSE,
    5: Image.Transpose.ROTATE_90,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
}
_plugins_ready = False
_plugins_lock = threading.Lock()


@dataclass
class LoadedImage:
    """A decoded image, ready for an encoder's preprocessing."""

    path: str
    image: Image.Image  # mode RGB, EXIF orientation applied (maybe reduced by draft_size)
    width: int  # of the oriented full-resolution image
    height: int
    taken: float | None = None  # EXIF DateTimeOriginal (seconds since the epoch), if any


def image_extensions() -> frozenset[str]:
    """The lower-case extensions (with the dot) of the files worth decoding.

    Every format Pillow can open (and pillow-heif, when installed) except those in
    ``_NOT_SCANNED_FORMATS``, plus HEIC/HEIF and RAW even when their packages are missing,
    so that such files are reported with :data:`FORMATS_EXTRA_REASON` rather than
    silently left out. Loads Pillow's plugins on first use (a fraction of a second).
    """
    _ensure_plugins()
    exts = {
        ext
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _NOT_SCANNED_FORMATS
    }
    return frozenset(exts | _EXTRA_PILLOW_EXTENSIONS | HEIF_EXTENSIONS | RAW_EXTENSIONS)


def missing_decoder(path: str | os.PathLike) -> str | None:
    """Why files like ``path`` cannot be decoded here, judged by the extension alone: the
    optional package their format needs is not installed. None when nothing is missing.

    Cheap enough to call before reading a file (an import that already happened is a
    dictionary look-up).
    """
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in RAW_EXTENSIONS and _optional("rawpy") is None:
        return FORMATS_EXTRA_REASON
    if ext in HEIF_EXTENSIONS and _optional("pillow_heif") is None:
        return FORMATS_EXTRA_REASON
    return None


def _optional(name: str) -> Any:
    """The module ``name``, or None when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _ensure_plugins() -> None:
    """Load Pillow's plugins and register pillow-heif's opener, once per process.

    Done at the first decode or extension query rather than at import: importing every
    Pillow plugin and pillow-heif costs about 0.4 s that a query never needs.
    """
    global _plugins_ready
    if _plugins_ready:
        return
    with _plugins_lock:
        if _plugins_ready:
            return
        Image.init()
        heif = _optional("pillow_heif")
        if heif is not None:
            heif.register_heif_opener()
            # pillow-heif < 1.0 also decodes AVIF, which older Pillow builds cannot.
            if "AVIF" not in Image.OPEN and hasattr(heif, "register_avif_opener"):
                heif.register_avif_opener()
            logger.debug("pillow-heif %s registered", getattr(heif, "__version__", "?"))
        _plugins_ready = True


def load_image(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    data: FileBytes | None = None,
) -> LoadedImage:
    """Decode an image file to RGB with its EXIF orientation applied.

    Transparent images are composited on white; 16-bit and float images have their actual
    value range scaled to 0-255.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels than this (checked on the header,
            before decoding). Pillow's own decompression-bomb error (at twice
            ``Image.MAX_IMAGE_PIXELS``) is reported the same way.
        draft_size: For JPEG, let the decoder downscale by 2, 4 or 8 while both sides stay
            at least this large: much faster for big photos. ``width``/``height`` still
            describe the full-resolution image.
        data: The file's bytes as :func:`read_file` read them: decoded from memory, the
            file is not opened again.

    Returns:
        The decoded image and its full-resolution oriented size.

    Raises:
        InputError: The file is missing, unreadable, empty, not an image, corrupt or
            truncated, or too large; ``reason`` says which.
    """
    path = os.fspath(path)
    if data is None or data.data is None:
        size = _check_file(path)
    elif not data.data:
        raise InputError(path, "empty file")
    else:
        size = len(data.data)
    missing = missing_decoder(path)
    if missing is not None:
        raise InputError(path, missing)
    buffer = data.data if data is not None else None
    if os.path.splitext(path)[1].lower() in RAW_EXTENSIONS:
        return _load_raw(path, max_pixels, draft_size, buffer)
    _ensure_plugins()
    try:
        with open(path, "rb") if buffer is None else io.BytesIO(buffer) as fp:
            img = _open(path, fp)
            with img:
                _read_in_one_block(img, size)
                return _decode(path, img, max_pixels, draft_size)
    except OSError as exc:  # open() failed; decoding errors are InputErrors already
        raise InputError(path, os_reason(exc)) from exc


@dataclass
class FileBytes:
    """A file read once: its bytes (to decode from memory) and their content hash."""

    path: str
    digest: str  # content_hash of the bytes
    data: bytes | None  # None for a file over READ_LIMIT: decoded from the path


NOT_REGULAR = "not a regular file"
"""The reason given for a path that is not a regular file (a FIFO, a device)."""

DECODE_BLOCK_LIMIT = 32 << 20
"""The most bytes of a file handed to the decoder at once (see ``_read_in_one_block``)."""

READ_LIMIT = 256 << 20
"""Files larger than this are hashed in chunks and decoded from the path (read twice)
rather than held in memory whole: a 600 MB 16-bit TIFF times the decoding threads."""


FILE_HASHES = ("blake3", "blake2b")
"""How file content is hashed: BLAKE3 in catalogs made since it was added (3.7 GB/s on one
core here, against BLAKE2b's 0.5–0.8: 1 ms instead of 7 for a 12 MP JPEG), BLAKE2b in
those made before (``Catalog.file_hash`` says which). Both as 16 bytes, 32 hex digits."""


def read_file(
    path: str | os.PathLike, limit: int = READ_LIMIT, algorithm: str = "blake3"
) -> FileBytes:
    """Read a file once and hash its bytes (the same digest as :func:`content_hash`).

    Args:
        path: The file.
        limit: Larger files are hashed in chunks and not kept (``data`` is None).
        algorithm: One of :data:`FILE_HASHES` (the catalog's ``file_hash``).

    Returns:
        The bytes and their digest.

    Raises:
        InputError: The file cannot be read (missing, permission denied, a directory),
            or is not a regular file (a FIFO would block the read).
    """
    path = os.fspath(path)
    try:
        with open(path, "rb", buffering=0) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):  # checked before reading: a FIFO would block
                raise InputError(path, NOT_REGULAR)
            if st.st_size > limit:
                return FileBytes(path, content_hash(path, algorithm=algorithm), None)
            # Into new bytes, not a zeroed bytearray: their memory is first touched by the
            # kernel's copy, with the GIL released. Zeroing a bytearray faulted its pages
            # in holding the GIL: ~400 µs for a 2 MP JPEG on the test machine's VM, more
            # than everything else a GPU run does with a file under the GIL.
            data = f.read(st.st_size)
            if len(data) != st.st_size or f.read(1):  # changed while read: take what is there
                f.seek(0)
                data = f.readall()
    except OSError as exc:
        raise InputError(path, os_reason(exc)) from exc
    return FileBytes(path, hash_bytes(data, algorithm), data)


def read_soon(path: str | os.PathLike) -> None:
    """Ask the kernel to start reading ``path`` into the page cache now, so that a later
    :func:`read_file` finds it there (``posix_fadvise(WILLNEED)``: the disk works while
    this process computes). Nothing happens where that is unsupported or fails."""
    if not hasattr(os, "posix_fadvise"):
        return
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass
    finally:
        os.close(fd)


def hash_bytes(data: bytes | bytearray | memoryview, algorithm: str = "blake3") -> str:
    """The content hash of bytes in memory (what :func:`content_hash` gives for a file)."""
    hasher = _hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


def new_hasher(algorithm: str = "blake3") -> Any:
    """An incremental hash object (``update``, ``hexdigest``) of :data:`FILE_HASHES`, giving
    what :func:`content_hash` gives for the same bytes."""
    return _hasher(algorithm)


def _hasher(algorithm: str) -> Any:
    """A new hash object of ``algorithm`` (16-byte digests; both release the GIL while
    they hash a large buffer)."""
    if algorithm == "blake3":
        return _Blake3()
    if algorithm == "blake2b":
        return hashlib.blake2b(digest_size=16)
    raise InvalidValueError(f"unknown file hash {algorithm!r}: one of {FILE_HASHES}")


class _Blake3:
    """BLAKE3 with a 16-byte hex digest (its own default is 32)."""

    def __init__(self) -> None:
        from blake3 import blake3

        self._hash = blake3()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(data)

    def hexdigest(self) -> str:
        return str(self._hash.hexdigest(length=16))


@dataclass
class ImageHeader:
    """What a picture file's header says, read without decoding its pixels."""

    format: str  # Pillow's format name ("JPEG", "PNG", ...)
    mode: str  # Pillow's mode as stored ("RGB", "L", "CMYK", ...)
    width: int  # oriented, full resolution
    height: int
    orientation: int  # the EXIF orientation tag (1 when absent)
    taken: float | None  # EXIF DateTimeOriginal, if any


def probe_image(
    path: str | os.PathLike, data: FileBytes, max_pixels: int = DEFAULT_MAX_PIXELS
) -> ImageHeader:
    """Read an image's header from bytes in memory, checking its size like
    :func:`load_image` does, without decoding its pixels (for a decoder elsewhere: a GPU).

    Raises:
        InputError: Empty, not an image, a malformed header, or too large.
    """
    path = os.fspath(path)
    if not data.data:
        raise InputError(path, "empty file")
    fast = jpeg_header.read(data.data)  # a plain JPEG's, without Pillow's table parsing
    bomb = Image.MAX_IMAGE_PIXELS
    if fast is not None and not (bomb and fast.width * fast.height > bomb):
        _check_pixels(path, fast.width, fast.height, max_pixels)
        exif = _once(lambda: jpeg_header.exif_of(fast))
        return _oriented_header("JPEG", fast.mode, (fast.width, fast.height), exif)
    _ensure_plugins()
    with _open(path, io.BytesIO(data.data)) as img:  # shares the bytes: no copy
        _check_pixels(path, *img.size, max_pixels)
        return _oriented_header(img.format or "", img.mode, img.size, img)


def _oriented_header(
    fmt: str, mode: str, size: tuple[int, int], tags: Image.Image | Callable[[], Image.Exif]
) -> ImageHeader:
    """The header of a picture of stored ``size`` whose EXIF tags are ``tags`` (an image,
    or a callable giving them): its size as displayed, orientation and date."""
    width, height = size
    orientation = _orientation(tags)
    if orientation in _ROTATING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(fmt, mode, width, height, orientation, _exif_date(tags))


def _once(make: Callable[[], T]) -> Callable[[], T]:
    """``make``, called at most once (until it returns): ``functools.cache`` built an
    ``lru_cache`` wrapper for it, ~10 µs of every GPU-path file's header under the GIL."""
    made: list[T] = []

    def get() -> T:
        if not made:
            made.append(make())
        return made[0]

    return get


def _check_pixels(path: str, width: int, height: int, max_pixels: int) -> None:
    """Refuse a picture of more than ``max_pixels``, from its header's size."""
    if width * height > max_pixels:
        raise InputError(
            path, f"too large: {width}×{height} pixels exceeds the limit of {max_pixels}"
        )


@dataclass
class PreparedImage:
    """An image ready for an encoder: its oriented full-resolution size, capture date, and
    ``payload``, whatever the encoder takes (a preprocessed tensor, or undecoded bytes for
    a GPU decoder)."""

    width: int
    height: int
    taken: float | None
    payload: Any


@dataclass
class EncodedImages:
    """What an encoder made of a batch of :class:`PreparedImage`: the embeddings of those
    it could decode, in batch order, and why the others failed (position → error)."""

    vectors: Any  # (len(batch) - len(failed), dim) float32, unit rows
    failed: dict[int, InputError]


_Result = tuple[LoadedImage | None, Any, InputError | None]  # what a worker returns


def load_many(
    paths: Sequence[str],
    transform: Callable[[Image.Image], Any] | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
    prefetch: int = 64,
) -> Iterator[tuple[str, LoadedImage | None, Any, InputError | None]]:
    """Load images in a thread pool and yield them in input order.

    At most ``prefetch`` images are decoded ahead of the consumer, which bounds memory.
    Closing the generator early cancels what is queued and shuts the pool down.

    Args:
        paths: Image files.
        transform: Applied to each decoded image in the worker (e.g. an encoder's
            preprocessing); an exception it raises becomes an InputError for that path.
        workers: Threads; defaults to ``min(8, cpu_cores())``.
        max_pixels: See :func:`load_image`.
        draft_size: See :func:`load_image`.
        prefetch: Most images in flight at once (at least 1).

    Yields:
        ``(path, loaded, transformed, error)``: ``loaded`` (and ``transformed`` when a
        transform is given) on success, else ``error``; ``transformed`` is None without a
        transform.

    Raises:
        ValueError: ``workers`` or ``prefetch`` is less than 1.
    """
    workers = workers if workers is not None else min(8, cpu_cores())
    if workers < 1 or prefetch < 1:
        raise InvalidValueError(f"workers and prefetch must be >= 1, got {workers} and {prefetch}")
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mmsearch-load")
    pending: deque[tuple[str, Future[_Result]]] = deque()
    todo = iter(paths)

    def submit(p: str) -> None:
        pending.append((p, pool.submit(_load_one, p, transform, max_pixels, draft_size)))

    try:
        for p in islice(todo, prefetch):
            submit(p)
        while pending:
            path, future = pending.popleft()
            result = future.result()
            for p in islice(todo, 1):  # refill before yielding so workers stay busy
                submit(p)
            yield (path, *result)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load_one(
    path: str,
    transform: Callable[[Image.Image], Any] | None,
    max_pixels: int,
    draft_size: int | None,
) -> _Result:
    """Worker body: load one image and transform it, turning failures into an InputError."""
    try:
        loaded = load_image(path, max_pixels=max_pixels, draft_size=draft_size)
    except InputError as exc:
        logger.debug("skipping %s", exc)
        return None, None, exc
    if transform is None:
        return loaded, None, None
    try:
        return loaded, transform(loaded.image), None
    except Exception as exc:  # a bad image must not abort the run
        logger.debug("transform failed for %s", path, exc_info=True)
        return None, None, InputError(path, f"transform failed: {exc}")


def _load_raw(
    path: str, max_pixels: int, draft_size: int | None, data: bytes | None = None
) -> LoadedImage:
    """Decode a camera RAW file with rawpy: its embedded JPEG preview when that is large
    enough (fast), else a half-size demosaic; oriented like the camera held it."""
    rawpy = _optional("rawpy")
    try:
        raw = rawpy.imread(path if data is None else io.BytesIO(data))
    except Exception as exc:  # LibRawFileUnsupportedError, LibRawIOError, ...
        raise InputError(path, f"not a readable RAW file: {exc}") from exc
    try:
        sizes = raw.sizes
        width, height, flip = int(sizes.width), int(sizes.height), int(sizes.flip)
        _check_pixels(path, width, height, max_pixels)
        # The half-size demosaic is the fallback, so a preview at least that large (or at
        # least the draft size the model asks for) loses nothing.
        wanted = draft_size or min(width, height) // 2
        image = _raw_preview(path, raw, wanted, flip)
        if image is None:
            # LibRaw applies the flip to the processed image itself.
            image = Image.fromarray(raw.postprocess(half_size=True, use_camera_wb=True))
    except InputError:
        raise
    except Exception as exc:  # LibRawDataError on a corrupt file, ...
        raise InputError(path, f"corrupt or truncated RAW file: {exc}") from exc
    finally:
        raw.close()
    if flip & 4:
        width, height = height, width
    return LoadedImage(path=path, image=_to_rgb(image), width=width, height=height)


def _raw_preview(path: str, raw: Any, wanted: int, flip: int) -> Image.Image | None:
    """The embedded preview, upright, when its short side is at least ``wanted``."""
    try:
        thumb = raw.extract_thumb()
    except Exception as exc:  # LibRawNoThumbnailError, LibRawUnsupportedThumbnailError
        logger.debug("%s: no usable preview (%s), demosaicing", path, exc)
        return None
    try:
        # rawpy gives a JPEG preview as bytes and a bitmap one as an RGB array.
        if isinstance(thumb.data, bytes):
            preview = Image.open(io.BytesIO(thumb.data))
            if min(preview.size) < wanted:
                return None
            preview.draft("RGB", (wanted, wanted))
            preview.load()
            if _orientation(preview) != 1:  # the preview says how to turn itself
                return _oriented(path, preview)
        else:
            preview = Image.fromarray(thumb.data)
            if min(preview.size) < wanted:
                return None
    except Exception as exc:  # a broken preview: the sensor data may still be fine
        logger.debug("%s: unreadable preview (%s), demosaicing", path, exc)
        return None
    # Previews are stored as the sensor saw the scene, unrotated: turn them like LibRaw
    # turns the processed image.
    transpose = _RAW_FLIP_TRANSPOSE.get(flip)
    return preview.transpose(transpose) if transpose is not None else preview


def draft_size(image_size: int) -> int:
    """The side JPEGs are decoded at for a model whose input is ``image_size`` pixels
    square: reduced-scale decoding down to twice the input side is much faster for camera
    photos, and the resize to the input side hides the difference."""
    return 2 * image_size


def content_hash(
    path: str | os.PathLike, chunk_size: int = 1 << 20, algorithm: str = "blake3"
) -> str:
    """Hash a file's bytes (16-byte digest), reading it in chunks.

    Args:
        path: The file.
        chunk_size: Bytes read at a time.
        algorithm: One of :data:`FILE_HASHES` (the catalog's ``file_hash``).

    Returns:
        The digest as 32 lower-case hex characters.

    Raises:
        InputError: The file cannot be read.
    """
    digest = _hasher(algorithm)  # the same digest as hash_bytes
    try:
        with open(path, "rb") as f:
            while chunk := f.read(chunk_size):
                digest.update(chunk)
    except OSError as exc:
        raise InputError(path, os_reason(exc)) from exc
    return digest.hexdigest()


def _read_in_one_block(img: Image.Image, size: int) -> None:
    """Let the decoder take the file's data in one block (up to ``DECODE_BLOCK_LIMIT``)
    rather than Pillow's 64 KB ones: after each block the decoding thread comes back into
    Python and waits for the GIL. Beside a thread that holds it (the model being imported
    while the first files decode) a 12 MP JPEG took 141 ms instead of 59 ms that way; the
    pixels are the same (the decoder releases the GIL for each whole block)."""
    if isinstance(img, ImageFile.ImageFile):
        img.decodermaxblock = max(ImageFile.MAXBLOCK, min(size, DECODE_BLOCK_LIMIT))


def _check_file(path: str) -> int:
    """Raise for a missing, non-regular or empty file (cheap, before opening it); its size
    otherwise."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(path, os_reason(exc)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise InputError(path, NOT_REGULAR)
    if st.st_size == 0:
        raise InputError(path, "empty file")
    return st.st_size


_MAGIC_FORMATS = ((b"\xff\xd8\xff", ["JPEG"]), (b"\x89PNG\r\n\x1a\n", ["PNG"]))


def _open(path: str, fp: Any) -> Image.Image:
    """Identify the format and read the header. Bytes that begin as a JPEG or PNG does
    are opened as that format first: Pillow tries the formats in its own order, and for a
    JPEG three other openers ran before its own (80 µs of a file's 250 µs header read,
    holding the GIL). Should that fail, every format is tried as before, so what is
    refused is refused with the same reason."""
    head = fp.read(8)
    fp.seek(0)
    hint = next((formats for magic, formats in _MAGIC_FORMATS if head.startswith(magic)), None)
    if hint is not None:
        try:
            return Image.open(fp, formats=hint)
        except Image.DecompressionBombError as exc:
            raise InputError(path, _bomb_reason(exc)) from exc
        except Exception:  # noqa: BLE001 - every format below, with the usual errors
            fp.seek(0)
    try:
        return Image.open(fp)
    except UnidentifiedImageError as exc:
        raise InputError(path, "not an image (cannot identify format)") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(path, _bomb_reason(exc)) from exc
    except Exception as exc:  # Pillow plugins raise many types on malformed headers
        raise InputError(path, f"corrupt or truncated image: {exc}") from exc


def _decode(path: str, img: Image.Image, max_pixels: int, draft_size: int | None) -> LoadedImage:
    """Check the size, decode fully, orient and convert to RGB."""
    width, height = img.size
    _check_pixels(path, width, height, max_pixels)
    if draft_size and img.format == "JPEG":
        img.draft("RGB", (draft_size, draft_size))
    try:
        # The full decode comes first, before anything else touches the pixels: reading
        # EXIF decodes a PNG as a side effect, and a decode error swallowed there would
        # leave a later load() with nothing to do and a garbled image looking fine.
        img.load()
    except Image.DecompressionBombError as exc:
        raise InputError(path, _bomb_reason(exc)) from exc
    except Exception as exc:  # OSError (truncated), SyntaxError, ValueError, ...
        raise InputError(path, f"corrupt or truncated image: {exc}") from exc
    if _orientation(img) in _ROTATING_ORIENTATIONS:
        width, height = height, width
    try:
        rgb = _to_rgb(_oriented(path, img))
    except Exception as exc:  # a mode Pillow cannot convert
        raise InputError(path, f"corrupt or truncated image: {exc}") from exc
    if not draft_size:
        width, height = rgb.size
    return LoadedImage(path=path, image=rgb, width=width, height=height, taken=_exif_date(img))


def _orientation(img: Image.Image | Callable[[], Image.Exif]) -> int:
    """The EXIF orientation tag (1 when absent or unreadable) of an image, or of the
    tags a callable gives."""
    try:
        exif = img() if callable(img) else img.getexif()
        return int(exif.get(_EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF is not a reason to refuse the image
        return 1


def _exif_date(img: Image.Image | Callable[[], Image.Exif]) -> float | None:
    """EXIF DateTimeOriginal (else DateTime) as local time in seconds since the epoch;
    None when absent or malformed. Of an image, or of the tags a callable gives."""
    try:
        exif = img() if callable(img) else img.getexif()
        raw = exif.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL) or exif.get(_DATE_TIME)
        if not raw:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return datetime.strptime(text.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S").timestamp()
    except Exception:  # malformed EXIF is not a reason to refuse the image
        return None


def date_taken(path: str | os.PathLike) -> float:
    """When a photo was taken: its EXIF DateTimeOriginal, read from the header only (no
    pixels are decoded), else the file's modification time.

    Raises:
        InputError: The file cannot be read.
    """
    path = os.fspath(path)
    try:
        mtime = os.stat(path).st_mtime
        with Image.open(path) as img:
            taken = _exif_date(img)
    except UnidentifiedImageError:  # not an image Pillow knows: the mtime is all there is
        taken = None
    except OSError as exc:
        raise InputError(path, os_reason(exc)) from exc
    except Exception:  # Pillow plugins raise many types on malformed headers
        taken = None
    return taken if taken is not None else mtime


def _oriented(path: str, img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation; keep the image as stored when the EXIF is malformed."""
    try:
        return ImageOps.exif_transpose(img)
    except Exception as exc:  # malformed EXIF is not a reason to refuse the image
        logger.warning("%s: ignoring unreadable EXIF orientation: %s", path, exc)
        return img.copy()


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB without losing the picture."""
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in _HIGH_DEPTH_MODES:
        img = _scale_to_8bit(img)
    if img.mode in _ALPHA_MODES:
        background = Image.new("RGBA", img.size, _WHITE)
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _scale_to_8bit(img: Image.Image) -> Image.Image:
    """Map the actual value range of an I/I;16/F image onto 0-255 (mode L)."""
    img = img.convert("F") if img.mode == "F" else img.convert("I").convert("F")
    low, high = img.getextrema()
    if high > low:
        scale = 255.0 / (high - low)
        img = img.point(lambda v: v * scale - low * scale)
    else:  # flat image: black when zero or less, white otherwise
        img = Image.new("F", img.size, 0.0 if high <= 0 else 255.0)
    return img.convert("L")


_BOMB_PIXELS = re.compile(r"\((\d+) pixels\) exceeds limit of (\d+)")


def _bomb_reason(exc: Image.DecompressionBombError) -> str:
    """Phrase Pillow's decompression-bomb error like our own size check."""
    match = _BOMB_PIXELS.search(str(exc))
    if match is None:
        return f"too large: {exc}"
    return f"too large: {match[1]} pixels exceeds the limit of {match[2]}"


def os_reason(exc: OSError) -> str:
    """A short human reason for an OS error."""
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    return exc.strerror or str(exc)
