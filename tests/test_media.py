"""Tests of indexer.load: decoding, RGB conversion, orientation, failure reasons, the pool."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from PIL import Image

import mmsearch.media as load_module
from mmsearch.errors import InputError
from mmsearch.media import LoadedImage, load_image, load_many

RED = (255, 0, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], tol: int = 12) -> bool:
    """Whether two colours match within a tolerance (lossy formats)."""
    return all(abs(a - e) <= tol for a, e in zip(actual, expected, strict=True))


def save(img: Image.Image, path: Path, **params) -> Path:
    img.save(path, **params)
    return path


def noise_jpeg(path: Path, size: int = 256) -> Path:
    """A JPEG that compresses badly, so that cutting it truncates real image data."""
    return save(Image.effect_noise((size, size), 64).convert("RGB"), path, quality=95)


@pytest.mark.parametrize(
    ("name", "params"),
    [("a.png", {}), ("a.jpg", {"quality": 95}), ("a.webp", {"lossless": True}), ("a.bmp", {})],
)
def test_rgb_formats_decode_to_rgb(tmp_path: Path, name: str, params: dict) -> None:
    img = Image.new("RGB", (30, 20), BLUE)
    img.paste(RED, (0, 0, 10, 10))
    loaded = load_image(save(img, tmp_path / name, **params))
    assert isinstance(loaded, LoadedImage)
    assert loaded.path == str(tmp_path / name)
    assert (loaded.image.mode, loaded.width, loaded.height) == ("RGB", 30, 20)
    assert close_to(loaded.image.getpixel((2, 2)), RED)
    assert close_to(loaded.image.getpixel((25, 15)), BLUE)


def test_gif_palette_transparency_becomes_white(tmp_path: Path) -> None:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black, index 1 blue
    img.paste(1, (5, 0, 10, 10))
    path = save(img, tmp_path / "a.gif", transparency=0)
    rgb = load_image(path).image
    assert rgb.getpixel((1, 1)) == WHITE
    assert rgb.getpixel((8, 8)) == BLUE


def test_palette_without_transparency_keeps_colours(tmp_path: Path) -> None:
    img = Image.new("RGB", (10, 10), RED).convert("P", palette=Image.Palette.ADAPTIVE)
    assert load_image(save(img, tmp_path / "a.png")).image.getpixel((0, 0)) == RED


@pytest.mark.parametrize("name", ["a.tif", "a.png"])
def test_16_bit_keeps_its_value_range(tmp_path: Path, name: str) -> None:
    img = Image.new("I;16", (256, 4))
    for x in range(256):
        for y in range(4):
            img.putpixel((x, y), x * 257)  # 0 .. 65535
    rgb = load_image(save(img, tmp_path / name)).image
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (0, 0, 0)
    assert rgb.getpixel((255, 0)) == WHITE
    assert close_to(rgb.getpixel((128, 0)), (128, 128, 128), tol=2)


def test_16_bit_dark_image_is_stretched_not_white(tmp_path: Path) -> None:
    img = Image.new("I;16", (2, 1))
    img.putpixel((1, 0), 4095)  # 12-bit sensor data in a 16-bit container
    rgb = load_image(save(img, tmp_path / "a.tif")).image
    assert [rgb.getpixel((x, 0)) for x in range(2)] == [(0, 0, 0), WHITE]


def test_float_image_is_scaled(tmp_path: Path) -> None:
    img = Image.new("F", (3, 1))
    for x, v in enumerate([-1.0, 0.0, 1.0]):
        img.putpixel((x, 0), v)
    rgb = load_image(save(img, tmp_path / "a.tif")).image
    assert [rgb.getpixel((x, 0))[0] for x in range(3)] == [0, 127, 255]


def test_cmyk_jpeg_is_converted(tmp_path: Path) -> None:
    path = save(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), tmp_path / "a.jpg", quality=95)
    loaded = load_image(path)
    assert loaded.image.mode == "RGB"
    assert close_to(loaded.image.getpixel((8, 8)), RED, tol=20)


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGBA", (255, 0, 0, 0), WHITE),
        ("RGBA", (255, 0, 0, 255), RED),
        ("RGBA", (255, 0, 0, 128), (255, 127, 127)),
        ("LA", (0, 0), WHITE),
        ("LA", (0, 255), (0, 0, 0)),
    ],
)
def test_alpha_is_composited_on_white(
    tmp_path: Path, mode: str, colour: tuple, expected: tuple
) -> None:
    rgb = load_image(save(Image.new(mode, (4, 4), colour), tmp_path / "a.png")).image
    assert close_to(rgb.getpixel((1, 1)), expected, tol=1)


@pytest.mark.parametrize("mode", ["1", "L"])
def test_bilevel_and_grey_become_rgb(tmp_path: Path, mode: str) -> None:
    rgb = load_image(save(Image.new(mode, (4, 4), 1 if mode == "1" else 255), tmp_path / "a.png"))
    assert (rgb.image.mode, rgb.image.getpixel((0, 0))) == ("RGB", WHITE)


def rotated_jpeg(path: Path, size: tuple[int, int] = (40, 20)) -> Path:
    """A JPEG stored landscape with a red top-left corner and EXIF orientation 6."""
    img = Image.new("RGB", size, BLUE)
    img.paste(RED, (0, 0, size[0] // 4, size[1] // 2))
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90° clockwise
    return save(img, path, exif=exif.tobytes(), quality=95)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    loaded = load_image(rotated_jpeg(tmp_path / "a.jpg"))
    assert (loaded.width, loaded.height) == (20, 40) == loaded.image.size
    assert close_to(loaded.image.getpixel((17, 2)), RED)  # top-left went to top-right
    assert close_to(loaded.image.getpixel((2, 2)), BLUE)


def test_draft_size_decodes_smaller_but_reports_full_size(tmp_path: Path) -> None:
    loaded = load_image(rotated_jpeg(tmp_path / "a.jpg", (800, 400)), draft_size=100)
    assert (loaded.width, loaded.height) == (400, 800)
    assert loaded.image.size == (100, 200)
    assert close_to(loaded.image.getpixel((90, 5)), RED)


def test_draft_size_ignored_for_png(tmp_path: Path) -> None:
    loaded = load_image(save(Image.new("RGB", (400, 200)), tmp_path / "a.png"), draft_size=50)
    assert loaded.image.size == (400, 200) == (loaded.width, loaded.height)


def decoder_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the blocks the JPEG decoder is fed, as it is fed them."""
    from PIL import JpegImagePlugin

    reads: list[int] = []
    original = JpegImagePlugin.JpegImageFile.load_read

    def counted(self: JpegImagePlugin.JpegImageFile, read_bytes: int) -> bytes:
        block = original(self, read_bytes)
        reads.append(len(block))
        return block

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load_read", counted)
    return reads


@pytest.mark.parametrize("from_memory", [True, False])
def test_a_jpeg_is_decoded_in_one_block_with_the_same_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, from_memory: bool
) -> None:
    # Pillow feeds its decoders 64 KB at a time, and the decoding thread waits for the GIL
    # after each block: beside a thread holding it (the model's import) a 12 MP photo took
    # 2.4x as long to decode. A ~1 MB JPEG must go to the decoder in one block.
    path = noise_jpeg(tmp_path / "a.jpg", size=1024)
    size = path.stat().st_size
    assert size > 4 * (64 << 10)
    with Image.open(path) as reference:  # Pillow's own 64 KB blocks
        reference.draft("RGB", (256, 256))
        expected = reference.convert("RGB").tobytes()
    reads = decoder_reads(monkeypatch)
    data = load_module.read_file(path) if from_memory else None
    loaded = load_image(path, draft_size=256, data=data)
    assert loaded.image.tobytes() == expected
    assert reads[0] == size  # the whole file (the decoder reads its headers again)
    assert len(reads) <= 2  # the block, then the end of the file


def test_a_truncated_jpeg_from_memory_is_still_refused(tmp_path: Path) -> None:
    data = noise_jpeg(tmp_path / "full.jpg", size=1024).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="corrupt or truncated image"):
        load_image(tmp_path / "cut.jpg", data=load_module.read_file(tmp_path / "cut.jpg"))


def reason_of(path: Path | str, **kwargs) -> str:
    with pytest.raises(InputError) as info:
        load_image(path, **kwargs)
    assert info.value.path == str(path)
    return info.value.reason


def test_zero_byte_file(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(b"")
    assert reason_of(tmp_path / "a.jpg") == "empty file"


def test_missing_file(tmp_path: Path) -> None:
    assert reason_of(tmp_path / "nope.jpg") == "no such file"


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.jpg").mkdir()
    assert reason_of(tmp_path / "dir.jpg") == "not a regular file"


def test_text_file_named_jpg(tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_text("this is not a picture\n")
    assert reason_of(tmp_path / "a.jpg") == "not an image (cannot identify format)"


def test_truncated_jpeg(tmp_path: Path) -> None:
    data = noise_jpeg(tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert reason_of(tmp_path / "cut.jpg").startswith("corrupt or truncated image: ")


def test_decompression_bomb_checked_on_header(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (20, 10)), tmp_path / "a.png")
    assert reason_of(path, max_pixels=199) == "too large: 20×10 pixels exceeds the limit of 199"
    assert load_image(path, max_pixels=200).width == 20


def test_pillow_bomb_error_maps_to_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow errors above 2 × 50
    path = save(Image.new("RGB", (20, 10)), tmp_path / "a.png")
    assert reason_of(path) == "too large: 200 pixels exceeds the limit of 100"


def test_permission_denied(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    path = save(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    path.chmod(0)
    assert reason_of(path) == "permission denied"


def test_permission_denied_simulated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def deny(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", file)

    monkeypatch.setattr(load_module, "open", deny, raising=False)  # shadows the builtin
    path = save(Image.new("RGB", (4, 4)), tmp_path / "a.png")
    assert reason_of(path) == "permission denied"


def make_images(tmp_path: Path, n: int) -> list[str]:
    return [str(save(Image.new("RGB", (8 + i, 8), RED), tmp_path / f"{i}.png")) for i in range(n)]


def test_load_many_keeps_order_and_reports_errors(tmp_path: Path) -> None:
    good = make_images(tmp_path, 6)
    (tmp_path / "bad.jpg").write_text("nope")
    paths = [*good[:3], str(tmp_path / "bad.jpg"), str(tmp_path / "missing.png"), *good[3:]]

    def width(img: Image.Image) -> int:
        if img.width == 10:
            raise RuntimeError("boom")
        return img.width

    results = list(load_many(paths, transform=width, workers=3, prefetch=2))
    assert [r[0] for r in results] == paths
    for path, loaded, transformed, error in results:
        assert (loaded is None) != (error is None)
        if error is not None:
            assert error.path == path and transformed is None
        else:
            assert loaded.path == path and transformed == loaded.width
    errors = {path: error.reason for path, _, _, error in results if error is not None}
    assert errors == {
        good[2]: "transform failed: boom",
        str(tmp_path / "bad.jpg"): "not an image (cannot identify format)",
        str(tmp_path / "missing.png"): "no such file",
    }


def test_load_many_without_transform(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 3)
    results = list(load_many(paths))
    assert [(r[1].width, r[2], r[3]) for r in results] == [
        (8, None, None),
        (9, None, None),
        (10, None, None),
    ]


def test_load_many_early_close_stops_work_and_pool(tmp_path: Path) -> None:
    paths = make_images(tmp_path, 1) * 40
    calls = []
    gen = load_many(paths, transform=calls.append, workers=2, prefetch=3)
    assert next(gen)[3] is None
    gen.close()
    assert len(calls) <= 1 + 3 + 2  # the one consumed, the prefetched, the ones running
    assert not [t for t in threading.enumerate() if t.name.startswith("mmsearch-load")]


def test_load_many_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        list(load_many(["a.png"], prefetch=0))


# -- headers without decoding (probe_image: the GPU path) --------------------------------


def _dated_rotated_jpeg(path: Path, size: int, icc: bytes | None = None) -> Path:
    """A noisy ``size``² JPEG with EXIF orientation 6, a capture date and maybe an ICC
    profile (which can push the end of the header far into the file)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif.get_ifd(0x8769)[0x9003] = "2021:06:05 04:03:02"
    img = Image.effect_noise((size, size + 8), 64).convert("RGB")
    params = {"icc_profile": icc} if icc else {}
    return save(img, path, exif=exif.tobytes(), quality=95, **params)


def _probe(path: Path) -> load_module.ImageHeader:
    return load_module.probe_image(path, load_module.read_file(path))


@pytest.mark.parametrize("icc", [None, bytes(range(256)) * 1400])  # a 350 KB ICC profile
def test_probe_reads_a_header_from_the_bytes_read_without_copying_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, icc: bytes | None
) -> None:
    """A file is read into new ``bytes`` (their pages first touched by the kernel, with the
    GIL released; a zeroed bytearray faulted them in holding it), and Pillow reads a header
    through a ``BytesIO`` that shares them (it copied a bytearray: the whole file, or before
    this a 256 KB prefix of it, under the GIL)."""
    path = _dated_rotated_jpeg(tmp_path / "a.jpg", 700, icc)
    data = load_module.read_file(path)
    assert type(data.data) is bytes and data.data == path.read_bytes()
    given: list[object] = []
    real = load_module.io.BytesIO

    def spy(initial: bytes = b"") -> object:
        if len(initial) > 4096:  # Pillow reads its EXIF blocks through BytesIO too
            given.append(initial)
        return real(initial)

    walked = load_module.probe_image(path, data)  # the marker walk answers for a plain one
    monkeypatch.setattr(load_module.jpeg_header, "read", lambda data: None)
    monkeypatch.setattr(load_module.io, "BytesIO", spy)
    header = load_module.probe_image(path, data)  # Pillow's path
    assert header == walked
    assert (header.format, header.mode, header.width, header.height) == ("JPEG", "RGB", 708, 700)
    assert header.orientation == 6 and header.taken is not None
    assert given and all(g is data.data for g in given)


def test_bytes_that_begin_as_a_jpeg_but_are_not_are_refused_as_before(tmp_path: Path) -> None:
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8\xff" + b"not a picture at all" * 20)
    assert reason_of(path) == "not an image (cannot identify format)"
    with pytest.raises(InputError) as info:
        _probe(path)
    assert info.value.reason == "not an image (cannot identify format)"


def test_a_png_named_jpg_is_read_as_the_png_it_is(tmp_path: Path) -> None:
    path = save(Image.new("RGB", (6, 4), RED), tmp_path / "a.jpg", format="PNG")
    loaded = load_image(path)
    assert (loaded.width, loaded.height) == (6, 4) and close_to(loaded.image.getpixel((1, 1)), RED)
    assert _probe(path).format == "PNG"


# -- content hashes -------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", load_module.FILE_HASHES)
def test_a_files_digest_is_the_same_whole_chunked_and_in_memory(
    tmp_path: Path, algorithm: str
) -> None:
    import hashlib

    import blake3

    data = os.urandom(300_000)
    path = tmp_path / "a.bin"
    path.write_bytes(data)
    expected = (
        blake3.blake3(data).hexdigest(length=16)
        if algorithm == "blake3"
        else hashlib.blake2b(data, digest_size=16).hexdigest()
    )
    assert load_module.hash_bytes(data, algorithm) == expected
    assert load_module.content_hash(path, chunk_size=4096, algorithm=algorithm) == expected
    whole = load_module.read_file(path, algorithm=algorithm)
    assert whole.digest == expected and whole.data == data
    chunked = load_module.read_file(path, limit=1000, algorithm=algorithm)  # over the limit
    assert chunked.digest == expected and chunked.data is None


def test_the_two_hashes_differ_and_an_unknown_one_is_refused() -> None:
    from mmsearch.errors import InvalidValueError

    assert load_module.hash_bytes(b"x", "blake3") != load_module.hash_bytes(b"x", "blake2b")
    with pytest.raises(InvalidValueError):
        load_module.hash_bytes(b"x", "md5")


# -- the GPU path's header: markers walked, or Pillow ------------------------------------


def _variants(root: Path) -> dict[str, tuple[bytes, bool]]:
    """JPEGs (and not quite JPEGs) by name: the bytes, and whether the marker walk should
    answer for them itself (else it hands them to Pillow)."""
    import io

    def jpeg(img: Image.Image, **params: object) -> bytes:
        out = io.BytesIO()
        img.save(out, format=str(params.pop("format", "JPEG")), quality=90, **params)
        return out.getvalue()

    rgb = Image.effect_noise((64, 48), 40).convert("RGB")
    out: dict[str, tuple[bytes, bool]] = {
        "plain": (jpeg(rgb), True),
        "grey": (jpeg(rgb.convert("L")), True),
        "cmyk": (jpeg(rgb.convert("CMYK")), False),
        "progressive": (jpeg(rgb, progressive=True), True),
        "comment": (jpeg(rgb, comment=b"a comment"), True),
        "restarts": (jpeg(rgb, restart_marker_blocks=1), True),
        "icc": (jpeg(rgb, icc_profile=bytes(range(256)) * 300), True),
        "xmp": (
            jpeg(rgb, xmp=b'<x:xmpmeta><rdf:Description tiff:Orientation="6"/></x:xmpmeta>'),
            False,
        ),
        "mpo": (jpeg(rgb, format="MPO", save_all=True, append_images=[rgb.rotate(90)]), False),
    }
    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        exif.get_ifd(0x8769)[0x9003] = "2020:01:02 03:04:05"
        out[f"orientation {orientation}"] = (jpeg(rgb, exif=exif.tobytes()), True)
    dated = Image.Exif()
    dated[0x0132] = "2019:12:31 23:59:58"  # DateTime only
    out["datetime"] = (jpeg(rgb, exif=dated.tobytes()), True)
    plain = out["plain"][0]
    out["bad exif"] = (plain[:2] + b"\xff\xe1\x00\x10Exif\x00\x00garbage!" + plain[2:], True)
    out["two exif"] = (plain[:2] + b"\xff\xe1\x00\x08Exif\x00\x00" * 2 + plain[2:], False)
    out["fill byte"] = (plain[:2] + b"\xff" + plain[2:], True)
    out["cut in header"] = (plain[:60], False)
    out["no frame"] = (b"\xff\xd8\xff\xfe\x00\x04hi\xff\xda\x00\x02", False)
    out["not jpeg"] = (b"\xff\xd8\xff" + b"not a picture" * 10, False)
    return out


def test_the_marker_walk_reads_what_pillow_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mmsearch import jpeg_header

    def probe(data: bytes) -> object:
        path = tmp_path / "a.jpg"
        path.write_bytes(data)
        try:
            return _probe(path)
        except InputError as exc:
            return exc.reason

    real = jpeg_header.read
    for name, (data, walked) in _variants(tmp_path).items():
        assert (real(data) is not None) == walked, name
        fast = probe(data)
        monkeypatch.setattr(jpeg_header, "read", lambda data: None)  # Pillow alone
        assert probe(data) == fast, name
        monkeypatch.setattr(jpeg_header, "read", real)
    oriented = probe(_variants(tmp_path)["orientation 6"][0])
    assert isinstance(oriented, load_module.ImageHeader)
    assert (oriented.width, oriented.height, oriented.orientation) == (48, 64, 6)
    assert oriented.taken is not None


def test_the_marker_walk_leaves_pillows_size_limits_to_pillow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save(Image.new("RGB", (20, 10)), tmp_path / "a.jpg")
    with pytest.raises(InputError) as info:
        load_module.probe_image(path, load_module.read_file(path), max_pixels=199)
    assert info.value.reason == "too large: 20×10 pixels exceeds the limit of 199"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # Pillow errors above 2 × 50
    with pytest.raises(InputError) as info:
        _probe(path)
    assert info.value.reason == "too large: 200 pixels exceeds the limit of 100"
