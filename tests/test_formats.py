"""Image formats: every picture format Pillow opens is scanned and indexed, HEIC through
pillow-heif, camera RAW through rawpy (a fake one: real RAW files cannot be generated), and
without the ``formats`` extra such files are skipped with a reason that names it."""

from __future__ import annotations

import io
import struct
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import noise_image
from PIL import Image, features
from test_pipeline import FakeEncoder

from indexer.pipeline import index_images
from indexer.scan import scan
from mmsearch import media
from mmsearch.errors import InputError
from mmsearch.media import FORMATS_EXTRA_REASON, image_extensions, load_image

SIZE = (64, 48)

# (format, extension, mode, save options, lossless): files Pillow itself can write.
WRITABLE = [
    ("BLP", ".blp", "P", {}, False),
    ("BMP", ".bmp", "RGB", {}, True),
    ("DDS", ".dds", "RGB", {}, True),
    ("DIB", ".dib", "RGB", {}, True),
    ("GIF", ".gif", "P", {}, False),
    ("MSP", ".msp", "1", {}, False),
    ("PCX", ".pcx", "RGB", {}, True),
    ("PNG", ".apng", "RGB", {}, True),
    ("PPM", ".pnm", "RGB", {}, True),
    ("QOI", ".qoi", "RGB", {}, True),
    ("SGI", ".sgi", "RGB", {}, True),
    ("TGA", ".tga", "RGB", {}, True),
    ("TIFF", ".tif", "RGB", {}, True),
    ("WEBP", ".webp", "RGB", {"lossless": True}, True),
    ("XBM", ".xbm", "1", {}, False),
]
if features.check_codec("jpg_2000"):
    WRITABLE.append(("JPEG2000", ".jp2", "RGB", {"irreversible": False}, True))
if features.check("avif"):
    WRITABLE.append(("AVIF", ".avif", "RGB", {"quality": 90}, False))


def _psd(path: Path, image: Image.Image) -> None:
    """A minimal uncompressed RGB Photoshop file (Pillow reads PSD but cannot write it)."""
    arr = np.asarray(image)
    height, width = arr.shape[:2]
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, height, width, 8, 3)
    sections = struct.pack(">III", 0, 0, 0)  # colour mode data, resources, layers: empty
    planes = b"".join(arr[:, :, c].tobytes() for c in range(3))
    path.write_bytes(header + sections + struct.pack(">H", 0) + planes)


def _mpo(path: Path, image: Image.Image) -> None:
    """A two-picture MPO (a stereo camera's file); the first picture is the one indexed."""
    image.save(path, "MPO", save_all=True, append_images=[noise_image(99, SIZE)], quality=95)


def test_extension_set_covers_pillow_and_leaves_out_what_needs_tools() -> None:
    exts = image_extensions()
    wanted = {".qoi", ".pcx", ".sgi", ".dds", ".mpo", ".psd", ".jp2", ".tga", ".apng", ".ico"}
    assert wanted | {".heic", ".heif", ".cr2", ".nef", ".dng", ".arw"} <= exts
    for ext in (".pdf", ".eps", ".ps", ".wmf", ".mpg", ".fit", ".gbr", ".cur", ".icns", ".h5"):
        assert ext not in exts, ext
    assert ".avif" in exts or not features.check("avif")
    assert all(e.startswith(".") and e == e.lower() for e in exts)


def test_every_writable_format_psd_and_mpo_are_scanned_and_indexed(tmp_path, catalog):
    root = tmp_path / "formats"
    root.mkdir()
    sources: dict[str, Image.Image] = {}
    for n, (fmt, ext, mode, options, _) in enumerate(WRITABLE):
        sources[f"{fmt}{ext}"] = noise_image(n, SIZE)
        sources[f"{fmt}{ext}"].convert(mode).save(root / f"{fmt}{ext}", fmt, **options)
    sources["photoshop.psd"] = noise_image(50, SIZE)
    _psd(root / "photoshop.psd", sources["photoshop.psd"])
    sources["stereo.mpo"] = noise_image(51, SIZE)
    _mpo(root / "stereo.mpo", sources["stereo.mpo"])

    assert {Path(f.path).name for f in scan([root]).files} == set(sources)
    enc = FakeEncoder()
    summary = index_images(catalog, [root], lambda: enc)
    assert summary.skipped == []
    assert (summary.added, enc.images_encoded) == (len(sources), len(sources))
    stored = {Path(r.path).name: (r.width, r.height) for r in catalog.image_files()}
    assert stored == {name: SIZE for name in sources}


@pytest.mark.parametrize(("fmt", "ext"), [(f, e) for f, e, _, _, ok in WRITABLE if ok])
def test_lossless_formats_decode_to_the_pixels_written(tmp_path, fmt, ext):
    source = noise_image(7, SIZE)
    path = tmp_path / f"x{ext}"
    options = next(o for f, e, _, o, _ in WRITABLE if (f, e) == (fmt, ext))
    source.save(path, fmt, **options)
    assert np.array_equal(np.asarray(load_image(path).image), np.asarray(source))


def test_psd_written_by_hand_decodes_to_its_pixels(tmp_path):
    source = noise_image(8, SIZE)
    _psd(tmp_path / "x.psd", source)
    assert np.array_equal(np.asarray(load_image(tmp_path / "x.psd").image), np.asarray(source))


# -- HEIC / HEIF (pillow-heif) ----------------------------------------------------------


def test_heic_written_by_pillow_heif_is_indexed(tmp_path, catalog):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()  # to write it; mmsearch registers it to read
    root = tmp_path / "phone"
    root.mkdir()
    source = noise_image(3, SIZE)
    source.save(root / "IMG_0001.HEIC", "HEIF", quality=95)
    enc = FakeEncoder()
    summary = index_images(catalog, [root], lambda: enc)
    assert (summary.added, summary.skipped) == (1, [])
    (row,) = catalog.image_files()
    assert (row.width, row.height) == SIZE
    decoded = np.asarray(load_image(root / "IMG_0001.HEIC").image, dtype=np.float32)
    assert np.abs(decoded - np.asarray(source, dtype=np.float32)).mean() < 12  # lossy


def test_without_the_extra_heic_and_raw_files_are_skipped_naming_it(tmp_path, catalog, monkeypatch):
    root = tmp_path / "mixed"
    root.mkdir()
    noise_image(1, SIZE).save(root / "ok.png")
    (root / "phone.heic").write_bytes(b"not read")
    (root / "camera.NEF").write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # import fails: not installed
    monkeypatch.setitem(sys.modules, "rawpy", None)
    hashed: list[str] = []
    real_read = media.read_file
    monkeypatch.setattr(
        media, "read_file", lambda p, *a, **k: hashed.append(Path(p).name) or real_read(p, *a, **k)
    )
    for _ in range(2):  # not remembered: installing the extra is enough to index them
        summary = index_images(catalog, [root], lambda: FakeEncoder())
        reasons = {Path(s.path).name: s.reason for s in summary.skipped}
        assert reasons == {"phone.heic": FORMATS_EXTRA_REASON, "camera.NEF": FORMATS_EXTRA_REASON}
        assert not any(s.remembered for s in summary.skipped)
    assert hashed == ["ok.png"]  # the skipped files were not even read
    assert catalog.skipped_files() == []
    with pytest.raises(InputError, match=r"mmsearch\[formats\]"):
        load_image(root / "phone.heic")


# -- camera RAW (rawpy, faked) -----------------------------------------------------------


class FakeRaw:
    """What ``rawpy.imread`` returns, for a 4000×3000 sensor."""

    def __init__(self, flip: int = 0, thumb: Any = None, sensor: tuple[int, int] = (4000, 3000)):
        self.sizes = SimpleNamespace(width=sensor[0], height=sensor[1], flip=flip)
        self.thumb = thumb
        self.postprocessed: list[dict[str, Any]] = []
        self.closed = False

    def extract_thumb(self) -> Any:
        if self.thumb is None:
            raise RuntimeError("LibRawNoThumbnailError")
        return self.thumb

    def postprocess(self, **options: Any) -> np.ndarray:
        self.postprocessed.append(options)
        # LibRaw returns the half-size image already turned by the flip.
        w, h = self.sizes.width // 2, self.sizes.height // 2
        if self.sizes.flip & 4:
            w, h = h, w
        return np.asarray(noise_image(5, (w, h)))

    def close(self) -> None:
        self.closed = True


def _jpeg_thumb(size: tuple[int, int], orientation: int = 1) -> SimpleNamespace:
    """A JPEG preview as rawpy gives it (bytes); left half dark, right half bright."""
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    arr[:, size[0] // 2 :] = 255
    buf = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    Image.fromarray(arr).save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return SimpleNamespace(format="jpeg", data=buf.getvalue())


@pytest.fixture
def fake_rawpy(monkeypatch, tmp_path):
    """Installs a fake rawpy whose ``imread`` returns the FakeRaw set in ``state.raw``."""
    state = SimpleNamespace(raw=FakeRaw(), opened=[])

    def imread(path: Any) -> FakeRaw:  # a path or a file object, like rawpy's
        data = path.read() if hasattr(path, "read") else Path(path).read_bytes()
        if data == b"garbage":
            raise RuntimeError("LibRawFileUnsupportedError: unsupported file format")
        state.opened.append(path)
        return state.raw

    monkeypatch.setitem(sys.modules, "rawpy", SimpleNamespace(imread=imread))
    state.path = tmp_path / "IMG_0001.CR2"
    state.path.write_bytes(b"raw bytes")
    return state


def test_raw_large_preview_is_used_and_turned_by_the_flip(fake_rawpy):
    fake_rawpy.raw = FakeRaw(flip=6, thumb=_jpeg_thumb((1600, 1200)))  # rotate 90° cw
    loaded = load_image(fake_rawpy.path, draft_size=448)
    assert fake_rawpy.raw.postprocessed == []  # no demosaic
    assert (loaded.width, loaded.height) == (3000, 4000)  # the sensor, portrait
    img = loaded.image
    assert img.height > img.width and min(img.size) >= 448
    # Turned clockwise: the bright right half of the preview is now the bottom half.
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    assert arr[-10:].mean() > 200 and arr[:10].mean() < 50
    assert fake_rawpy.raw.closed


@pytest.mark.parametrize("flip", [6, 0])
def test_raw_preview_with_its_own_orientation_follows_it_once(fake_rawpy, flip):
    fake_rawpy.raw = FakeRaw(flip=flip, thumb=_jpeg_thumb((1600, 1200), orientation=6))
    img = load_image(fake_rawpy.path, draft_size=448).image
    arr = np.asarray(img.convert("L"), dtype=np.float32)
    assert img.height > img.width and arr[-10:].mean() > 200 and arr[:10].mean() < 50


def test_raw_small_preview_falls_back_to_a_half_size_demosaic(fake_rawpy):
    fake_rawpy.raw = FakeRaw(flip=5, thumb=_jpeg_thumb((160, 120)))  # smaller than 448
    loaded = load_image(fake_rawpy.path, draft_size=448)
    assert [o.get("half_size") for o in fake_rawpy.raw.postprocessed] == [True]
    # LibRaw turned it already: taken as it comes, not turned again.
    assert loaded.image.size == (1500, 2000) and (loaded.width, loaded.height) == (3000, 4000)


def test_raw_without_draft_size_needs_a_preview_as_large_as_the_demosaic(fake_rawpy):
    fake_rawpy.raw = FakeRaw(thumb=_jpeg_thumb((1600, 1200)))  # < 3000/2 on the short side
    load_image(fake_rawpy.path)
    assert len(fake_rawpy.raw.postprocessed) == 1
    fake_rawpy.raw = FakeRaw(thumb=_jpeg_thumb((4000, 3000)))
    assert load_image(fake_rawpy.path).image.size == (2000, 1500)  # JPEG draft at 1/2
    assert fake_rawpy.raw.postprocessed == []


def test_raw_bitmap_preview_and_missing_preview(fake_rawpy):
    bitmap = np.asarray(noise_image(4, (800, 600)))
    fake_rawpy.raw = FakeRaw(flip=3, thumb=SimpleNamespace(format="bitmap", data=bitmap))
    img = load_image(fake_rawpy.path, draft_size=448).image
    assert np.array_equal(np.asarray(img), bitmap[::-1, ::-1])  # turned 180°
    fake_rawpy.raw = FakeRaw(thumb=None)  # extract_thumb raises
    assert load_image(fake_rawpy.path, draft_size=448).image.size == (2000, 1500)


def test_raw_failures_become_reasons(fake_rawpy):
    fake_rawpy.path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a readable RAW file"):
        load_image(fake_rawpy.path)
    fake_rawpy.path.write_bytes(b"raw bytes")
    fake_rawpy.raw = FakeRaw(thumb=None)
    with pytest.raises(InputError, match="too large"):
        load_image(fake_rawpy.path, max_pixels=1_000_000)
    assert fake_rawpy.raw.closed


def test_raw_files_are_indexed_through_the_pipeline(fake_rawpy, catalog):
    fake_rawpy.raw = FakeRaw(flip=6, thumb=_jpeg_thumb((1600, 1200)))
    enc = FakeEncoder()
    summary = index_images(catalog, [fake_rawpy.path.parent], lambda: enc)
    assert (summary.added, summary.skipped, enc.images_encoded) == (1, [], 1)
    (row,) = catalog.image_files()
    assert (Path(row.path).name, row.width, row.height) == ("IMG_0001.CR2", 3000, 4000)
