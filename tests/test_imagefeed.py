"""The indexer's encoding step: the device (GPU) decoding path run on the CPU, the thread
budget, one read per file, and batches that do not wait for a slow file."""

from __future__ import annotations

import builtins
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import TINY, noise_image
from PIL import Image, ImageDraw, ImageOps

import mmsearch.media
from indexer import pipeline
from indexer.feed import thread_budget
from indexer.pipeline import index_images
from indexer.reading import DecodingThreads, Gate
from mmsearch import imagefeed
from mmsearch.encoder import Encoder
from mmsearch.errors import InputError, InvalidValueError
from mmsearch.imagefeed import JpegBytes, TorchFeed, upright
from mmsearch.media import load_image, read_file

#: Lowest cosine between an image's embedding through the device path (torchvision decode at
#: full size, torch resize) and through Pillow (reduced-size JPEG decoding, Pillow resize),
#: tiny model. Measured: 0.99977 at worst (a 333×500 photo, whose reduced-size decode
#: rounds its aspect ratio: the crop moves by a pixel), the others ≥ 0.99999.
COSINE_TOLERANCE = 0.999


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A smooth picture with a few shapes (what photos look like to a resize filter)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1])
        r = int(rng.integers(min(size) // 10, min(size) // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    return img


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    return Encoder.load(TINY, device="cpu")


@pytest.fixture
def jpegs(tmp_path: Path) -> list[Path]:
    root = tmp_path / "jpegs"
    root.mkdir()
    paths = []
    for i, size in enumerate([(640, 480), (480, 640), (1200, 900), (333, 500), (64, 48)]):
        paths.append(root / f"{i}.jpg")
        photo(i, size).save(paths[-1], quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise
    exif[0x0132] = "2021:05:04 03:02:01"
    photo(10, (600, 300)).save(root / "rotated.jpg", quality=90, exif=exif.tobytes())
    photo(11, (400, 300)).convert("L").save(root / "grey.jpg", quality=90)
    return [*paths, root / "rotated.jpg", root / "grey.jpg"]


def _prepare(feed: TorchFeed, paths: list[Path]) -> list[Any]:
    return [feed.prepare(str(p), read_file(p)) for p in paths]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_turns_like_pillow(orientation):
    arr = np.arange(5 * 3 * 3, dtype=np.uint8).reshape(3, 5, 3)  # 5 wide, 3 high, no symmetry
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(img))
    got = upright(torch.from_numpy(arr).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, expected)


def test_device_path_embeds_like_the_pillow_path(tiny, jpegs):
    pillow, device = TorchFeed(tiny, gpu_jpeg=False), TorchFeed(tiny, gpu_jpeg=True)
    assert not pillow.gpu_jpeg and device.gpu_jpeg and device.on_cpu
    a, b = _prepare(pillow, jpegs), _prepare(device, jpegs)
    assert all(isinstance(p.payload, JpegBytes) for p in b)  # left undecoded for the device
    assert [(p.width, p.height, p.taken) for p in a] == [(p.width, p.height, p.taken) for p in b]
    assert (b[5].width, b[5].height) == (300, 600) and b[5].taken is not None
    ea, eb = pillow.encode(a), device.encode(b)
    assert ea.failed == eb.failed == {}
    cosines = (ea.vectors * eb.vectors).sum(axis=1)
    assert cosines.min() >= COSINE_TOLERANCE, cosines
    # Different images stay different: the agreement is not the model ignoring its input.
    assert (ea.vectors[0] * eb.vectors[1]).sum() < cosines.min()


def test_without_torchvision_jpeg_decoding_pillow_decodes(tiny, jpegs, monkeypatch, caplog):
    """torchvision 0.29 deprecates its image decoders for TorchCodec; a release without them
    must still index (with Pillow, as on the CPU), not fail at import or at the first batch."""
    monkeypatch.setattr(imagefeed, "decode_jpeg", None)
    with caplog.at_level("WARNING", logger="mmsearch.imagefeed"):
        feed = TorchFeed(tiny, gpu_jpeg=True)
    assert not feed.gpu_jpeg and "decodes no JPEGs" in caplog.text
    prepared = _prepare(feed, jpegs[:2])
    assert all(isinstance(p.payload, torch.Tensor) for p in prepared)  # decoded by Pillow
    expected = TorchFeed(tiny, gpu_jpeg=False).encode(_prepare(TorchFeed(tiny), jpegs[:2]))
    assert np.allclose(feed.encode(prepared).vectors, expected.vectors, atol=1e-6)


def test_device_path_leaves_other_files_to_pillow_and_keeps_its_verdicts(tiny, tmp_path, jpegs):
    feed = TorchFeed(tiny, gpu_jpeg=True)
    noise_image(1).save(tmp_path / "a.png")
    Image.new("CMYK", (80, 60), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg")
    cut = jpegs[2].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(cut[: len(cut) // 2])  # truncated: no end marker
    # A complete-looking file whose entropy-coded data is garbage.
    (tmp_path / "bad.jpg").write_bytes(cut[:700] + bytes(range(256)) * 8 + b"\xff\xd9")
    png, cmyk = _prepare(feed, [tmp_path / "a.png", tmp_path / "cmyk.jpg"])
    assert isinstance(png.payload, torch.Tensor) and isinstance(cmyk.payload, torch.Tensor)
    with pytest.raises(InputError) as device_error:
        feed.prepare(str(tmp_path / "cut.jpg"), read_file(tmp_path / "cut.jpg"))
    with pytest.raises(InputError) as pillow_error:
        load_image(tmp_path / "cut.jpg")
    assert device_error.value.reason == pillow_error.value.reason

    good, bad = _prepare(feed, [jpegs[0], tmp_path / "bad.jpg"])
    result = feed.encode([good, bad, png])  # one bad file must not fail the batch
    try:
        load_image(tmp_path / "bad.jpg")
    except InputError as exc:  # Pillow refuses it: so does the device path, for the reason
        assert result.failed[1].reason == exc.reason and len(result.vectors) == 2
    else:
        assert result.failed == {} and len(result.vectors) == 3


def test_pictures_of_one_size_are_resized_together_as_each_alone(tiny, tmp_path, monkeypatch):
    """Same-size pictures (and orientation) go through the resize as one tensor, in chunks
    of at most GROUP_PIXELS: each comes out as it does on its own."""
    import mmsearch.imagefeed as imagefeed

    exif = Image.Exif()
    exif[0x0112] = 6
    paths = []
    for i in range(7):  # 5 upright and 2 turned of one size, one of another
        paths.append(tmp_path / f"{i}.jpg")
        photo(i, (160, 120)).save(paths[-1], quality=90, exif=exif.tobytes() if i >= 5 else b"")
    paths.append(tmp_path / "other.jpg")
    photo(9, (90, 120)).save(paths[-1], quality=90)
    monkeypatch.setattr(imagefeed, "GROUP_PIXELS", 2 * 160 * 120)  # chunks of two
    feed = TorchFeed(tiny, gpu_jpeg=True)
    prepared = _prepare(feed, paths)
    together, failed = feed.model_inputs(prepared)
    alone = [feed.model_inputs([p])[0][0] for p in prepared]
    assert failed == {} and all(x is not None for x in together)
    for a, b in zip(together, alone, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert together[5].shape == together[7].shape == (3, feed.size, feed.size)


@pytest.mark.parametrize("padding", [0, 100, 5000])  # NULs after the file (some cameras)
def test_only_a_jpeg_with_its_end_marker_goes_to_the_device_decoder(tiny, tmp_path, jpegs, padding):
    feed = TorchFeed(tiny, gpu_jpeg=True)
    data = jpegs[2].read_bytes()
    (tmp_path / "whole.jpg").write_bytes(data + bytes(padding))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2] + bytes(padding))
    (whole,) = _prepare(feed, [tmp_path / "whole.jpg"])
    assert isinstance(whole.payload, JpegBytes)
    with pytest.raises(InputError) as device_error:  # Pillow's path, and its verdict
        feed.prepare(str(tmp_path / "cut.jpg"), read_file(tmp_path / "cut.jpg"))
    assert device_error.value.reason.startswith("corrupt or truncated image")


def test_index_through_the_device_path_on_two_lanes_indexes_the_same(
    tiny, jpegs, tmp_path, monkeypatch
):
    from mmsearch.catalog import Catalog

    folder = jpegs[0].parent
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (folder / "empty.jpg").write_bytes(b"")

    def run(name: str) -> tuple[Any, dict[str, Any]]:
        with Catalog(tmp_path / name / "catalog.sqlite") as catalog:
            summary = index_images(catalog, [folder], lambda: tiny, batch_size=3)
            rows = {Path(r.path).name: r for r in catalog.image_files()}
            vectors = catalog.embeddings_by_hash("image", [r.content_hash for r in rows.values()])
        return summary, {n: (r.width, r.height, vectors[r.content_hash]) for n, r in rows.items()}

    pillow_summary, pillow_rows = run("pillow")
    feeds: list[TorchFeed] = []

    def device_feed(encoder: Any) -> TorchFeed:
        feeds.append(TorchFeed(encoder, devices=["cpu", "cpu"], gpu_jpeg=True))
        return feeds[-1]

    monkeypatch.setattr(pipeline, "feed_for", device_feed)
    device_summary, device_rows = run("device")
    assert feeds and feeds[0].lanes == 2
    assert device_summary.to_dict()["skipped"] == pillow_summary.to_dict()["skipped"]
    assert {s.path for s in device_summary.skipped} == {
        str(folder / "broken.jpg"),
        str(folder / "empty.jpg"),
    }
    assert device_summary.added == pillow_summary.added == len(jpegs)
    assert device_rows.keys() == pillow_rows.keys()
    for name, (w, h, vec) in device_rows.items():
        pw, ph, pvec = pillow_rows[name]
        assert (w, h) == (pw, ph)
        cosine = float(np.frombuffer(vec, "<f2").astype(np.float32) @ np.frombuffer(pvec, "<f2"))
        assert cosine >= COSINE_TOLERANCE, (name, cosine)


def test_thread_budget_shares_the_cores(monkeypatch):
    monkeypatch.delenv("MMSEARCH_DECODE_SCHEDULE", raising=False)
    two = thread_budget(cores=2)
    assert (two.decoders, two.model_threads, two.alternate) == (2, 2, True)
    overlap = thread_budget(cores=2, schedule="overlap")
    assert (overlap.decoders, overlap.model_threads, overlap.alternate) == (1, 1, False)
    big = thread_budget(cores=16, schedule="overlap")
    assert big.decoders + big.model_threads == 16 and big.decoders >= 1
    assert thread_budget(cores=2, workers=3).decoders == 3
    monkeypatch.setenv("MMSEARCH_DECODE_SCHEDULE", "overlap")
    assert not thread_budget(cores=4).alternate
    with pytest.raises(InvalidValueError):
        thread_budget(cores=2, schedule="sometimes")


class _MeanEncoder:
    """A model-free encoder (its embedding of an image is its mean colour)."""

    image_size = 16
    context_length = 5

    def __init__(self) -> None:
        self.encoded = 0
        self.lock = threading.Lock()

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))

    def encode_image_tensors(self, batch: Any) -> np.ndarray:
        with self.lock:
            self.encoded += len(batch)
        x = np.concatenate([np.stack(list(batch)), np.ones((len(batch), 1), np.float32)], 1)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    engine = "fake"

    def record(self) -> dict[str, Any]:
        return {"model": "mean", "identity": "mean", "display": "mean", "dim": 4}


def test_each_file_is_opened_once(catalog, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        noise_image(i).save(folder / f"{i}.jpg")
    opened: list[str] = []
    real_open = builtins.open

    def spy(file: Any, *args: Any, **kwargs: Any) -> Any:
        if str(file).startswith(str(folder)):
            opened.append(Path(file).name)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    summary = index_images(catalog, [folder], _MeanEncoder, batch_size=4)
    assert summary.added == 6
    assert sorted(opened) == sorted(f"{i}.jpg" for i in range(6))  # hashed and decoded once


def test_the_next_batch_is_read_ahead_while_the_model_runs(catalog, tmp_path, monkeypatch):
    """With the alternate schedule the encoder asks the kernel for the next files as it
    closes the gate (their disk time passes while the model runs): each file at most once,
    always before it is read; overlapping (a GPU's schedule), nothing is asked for."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(12):
        noise_image(i).save(folder / f"{i:02d}.jpg")
    events: list[tuple[str, str]] = []
    real_soon, real_read = mmsearch.media.read_soon, mmsearch.media.read_file

    def soon(path: Any) -> None:
        events.append(("soon", Path(path).name))
        real_soon(path)

    def read(path: Any, *args: Any, **kwargs: Any) -> Any:
        events.append(("read", Path(path).name))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(mmsearch.media, "read_soon", soon)
    monkeypatch.setattr(mmsearch.media, "read_file", read)
    monkeypatch.setenv("MMSEARCH_DECODE_SCHEDULE", "alternate")
    summary = index_images(catalog, [folder], _MeanEncoder, batch_size=3, workers=1)
    assert summary.added == 12
    announced = [name for kind, name in events if kind == "soon"]
    assert announced and len(announced) == len(set(announced))
    for name in announced:
        assert events.index(("soon", name)) < events.index(("read", name))

    events.clear()
    monkeypatch.setenv("MMSEARCH_DECODE_SCHEDULE", "overlap")
    for i in range(12, 18):
        noise_image(i).save(folder / f"{i:02d}.jpg")
    assert index_images(catalog, [folder], _MeanEncoder, batch_size=3, workers=1).added == 6
    assert [e for e in events if e[0] == "soon"] == []


def test_read_ahead_asks_for_each_file_once_from_the_threads_next(monkeypatch):
    asked: list[str] = []
    monkeypatch.setattr(mmsearch.media, "read_soon", asked.append)
    paths = [(i, f"/photos/{i}.jpg") for i in range(8)]
    threads = DecodingThreads(
        paths,
        None,
        None,
        None,
        1,
        Gate(),
        threading.Event(),
        print,
        print,  # type: ignore[arg-type]
    )
    threads.read_ahead(3)
    threads.read_ahead(3)  # the same three: asked for already
    assert asked == ["/photos/0.jpg", "/photos/1.jpg", "/photos/2.jpg"]
    assert threads._next() == (0, "/photos/0.jpg") and threads._next() == (1, "/photos/1.jpg")
    threads.read_ahead(2)  # the threads' next two are 2 (asked for) and 3
    threads.read_ahead(100)
    assert asked[3:] == ["/photos/3.jpg", *(f"/photos/{i}.jpg" for i in range(4, 8))]
    assert [threads._next() for _ in range(7)][-1] is None


def test_read_soon_never_fails_or_blocks(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x" * 10_000)
    mmsearch.media.read_soon(tmp_path / "a.jpg")
    mmsearch.media.read_soon(tmp_path / "missing.jpg")
    mmsearch.media.read_soon(tmp_path)  # a folder
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")  # opened without O_NONBLOCK, this would hang
        mmsearch.media.read_soon(tmp_path / "pipe.jpg")


def test_a_slow_file_does_not_hold_up_the_others(catalog, tmp_path, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(7):
        noise_image(i).save(folder / f"{i}.png")
    encoder = _MeanEncoder()
    others_encoded = threading.Event()
    real_load = mmsearch.media.load_image

    def load(path: Any, *args: Any, **kwargs: Any) -> Any:
        if Path(path).name == "0.png":  # the first in scan order decodes last
            others_encoded.wait(timeout=30)
        return real_load(path, *args, **kwargs)

    def encode(batch: Any) -> np.ndarray:
        out = _MeanEncoder.encode_image_tensors(encoder, batch)
        if encoder.encoded >= 6:
            others_encoded.set()
        return out

    monkeypatch.setattr(mmsearch.media, "load_image", load)
    monkeypatch.setattr(encoder, "encode_image_tensors", encode)
    summary = index_images(catalog, [folder], lambda: encoder, batch_size=2, workers=2)
    # In input order, the six others would have waited behind 0.png (until the timeout).
    assert others_encoded.is_set() and summary.added == 7


def test_lanes_per_gpu(monkeypatch):
    """A lane (encoder thread) per GPU, ``$MMSEARCH_GPU_LANES`` of them on each; the CPU
    keeps one whatever it says (no GPU needed: only the device list is built)."""
    from mmsearch.imagefeed import _devices

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _devices(torch.device("cuda")) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    monkeypatch.setenv("MMSEARCH_GPU_LANES", "2")
    assert [str(d) for d in _devices(torch.device("cuda"))] == [
        "cuda:0", "cuda:0", "cuda:1", "cuda:1",
    ]  # fmt: skip
    assert _devices(torch.device("cuda", 1)) == [torch.device("cuda", 1)] * 2
    assert _devices(torch.device("cpu")) == [torch.device("cpu")]
    for bad in ("0", "two", "9"):
        monkeypatch.setenv("MMSEARCH_GPU_LANES", bad)
        with pytest.raises(InvalidValueError):
            _devices(torch.device("cuda"))
