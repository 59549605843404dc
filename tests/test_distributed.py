"""Encoding on Ray (`mmsearch index --ray`): one local Ray cluster (2 CPUs) for the module.

A folder indexed through Ray must equal the same folder indexed here (same ids for the same
paths, same embeddings within float16, same skip reasons); a second run through Ray encodes
nothing; a worker killed mid-batch is restarted, its batch redone, and the catalog ends with
every item exactly once.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, TINY_DIM, noise_image
from PIL import Image

from mmsearch.catalog import Catalog
from mmsearch.cli import cli
from mmsearch.status import ExitStatus

ray = pytest.importorskip("ray", reason="ray is in the test extra: pip install '.[test]'")


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A local Ray instance with 2 CPUs, shared by the module's tests."""
    import logging

    # The crash test's encoder factory lives in this module: ship it by value, since the
    # workers need not be able to import the tests.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _index(index_dir: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli,
        ["--quiet", "index", *args, "--model", TINY, "--index", str(index_dir), "--json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout.strip().splitlines()[-1])


def _contents(index_dir: Path) -> dict[str, Any]:
    """ids → path (or text), and each item's embedding by its path (or text), straight from
    the catalog."""
    with Catalog(index_dir / "catalog.sqlite") as cat:
        images = {r.id: r.path for r in cat.image_files()}
        text_ids = [int(i) for i in cat.ids("text")]
        texts = {i: r.text for i, r in cat.records(text_ids).items()}
        ids, vectors = cat.embeddings([*images, *texts], TINY_DIM)
    labels = {**images, **texts}
    by_label = {labels[i]: vec for i, vec in zip(ids, vectors, strict=True)}
    return {"images": images, "texts": texts, "vectors": by_label}


def _texts(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    lines = [f"a note about shape number {i}" for i in range(10)]
    lines.append("a very long text " * 40)  # cut to the model's context, counted
    lines.append("a note about shape number 3")  # a repeat: stored once
    path.write_text("\n".join(lines) + "\n")
    return path


def test_ray_run_equals_a_local_run_and_a_second_ray_run_encodes_nothing(
    ray_cluster: Any, photos: dict[str, Path], tmp_path: Path
) -> None:
    folder, corpus = str(photos["a.jpg"].parent), str(_texts(tmp_path))
    local = _index(tmp_path / "local", folder, "--texts", corpus)
    remote = _index(tmp_path / "ray", folder, "--texts", corpus, "--ray", "--batch-size", "3")

    for key in ("scanned", "added", "truncated"):
        assert remote[key] == local[key], key
    assert local["added"] == 7 + 11 and local["truncated"] == 1
    reasons = {(s["path"], s["reason"]) for s in local["skipped"]}
    assert {(s["path"], s["reason"]) for s in remote["skipped"]} == reasons
    assert len(reasons) == 3  # the truncated JPEG, the empty file, the text named .jpg

    a, b = _contents(tmp_path / "local"), _contents(tmp_path / "ray")
    # The same items. Image ids may differ: a local run decodes in parallel and commits in
    # the order files finish decoding; the Ray driver commits in plan order.
    assert sorted(b["images"].values()) == sorted(a["images"].values())
    assert b["texts"] == a["texts"]  # texts: same ids → same items
    assert a["vectors"].keys() == b["vectors"].keys()
    for label, vec in a["vectors"].items():
        np.testing.assert_allclose(b["vectors"][label], vec, atol=1e-3)

    again = _index(tmp_path / "ray", folder, "--texts", corpus, "--ray")
    assert (again["added"], again["updated"]) == (0, 0)
    assert again["unchanged"] == again["scanned"] - 3  # the bad files: remembered, not read
    assert all(s["remembered"] for s in again["skipped"])
    assert _contents(tmp_path / "ray")["images"] == b["images"]


def crashing_tiny_encoder(marker: str) -> Any:
    """The tiny model, whose first batch encoded anywhere kills its worker process (the
    marker file says it happened, so the retried batch goes through)."""
    from mmsearch.encoder import Encoder

    encoder = Encoder.load(TINY, device="cpu")
    encode = encoder.encode_image_tensors

    def encode_or_die(batch: Any) -> np.ndarray:
        if not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)  # the worker dies mid-batch: no result, no clean shutdown
        return encode(batch)

    encoder.encode_image_tensors = encode_or_die  # type: ignore[method-assign]
    return encoder


def test_a_worker_killed_mid_batch_is_redone_and_nothing_is_duplicated_or_lost(
    ray_cluster: Any, catalog: Catalog, tmp_path: Path
) -> None:
    from functools import partial

    from indexer.distributed import RayEncoding, RayOptions
    from indexer.pipeline import index_images
    from mmsearch.encoder import Encoder

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(12):
        noise_image(100 + i).save(folder / f"{i:02d}.png")
    marker = tmp_path / "crashed"
    remote = RayEncoding(
        RayOptions(workers=2, batch_size=3), partial(crashing_tiny_encoder, str(marker))
    )
    encoder = Encoder.load(TINY, device="cpu")
    summary = index_images(catalog, [folder], lambda: encoder, encode_jobs=remote.encode_images)

    assert marker.exists()  # a worker did die
    assert summary.added == 12 and not summary.skipped
    paths = [Path(r.path).name for r in catalog.image_files()]
    assert sorted(paths) == [f"{i:02d}.png" for i in range(12)]  # each once, none missing
    ids, vectors = catalog.embeddings([r.id for r in catalog.image_files()], TINY_DIM)
    expected = encoder.encode_images([noise_image(100 + i) for i in range(12)])
    np.testing.assert_allclose(vectors, expected, atol=1e-3)  # in order: id ↔ path intact


def test_ray_flag_without_ray_installed_fails_with_one_line(
    monkeypatch: pytest.MonkeyPatch, photos: dict[str, Path], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = CliRunner().invoke(
        cli,
        ["index", str(photos["a.jpg"].parent), "--ray", "--model", TINY,
         "--index", str(tmp_path / "idx")],
    )  # fmt: skip
    assert result.exit_code == ExitStatus.DEPENDENCY
    assert "ray is not installed" in result.output
    assert (
        not (tmp_path / "idx" / "catalog.sqlite").exists()
        or not _contents(tmp_path / "idx")["images"]
    )


def test_ray_address_that_is_a_folder_is_refused_with_a_hint(
    photos: dict[str, Path], tmp_path: Path
) -> None:
    folder = str(photos["a.jpg"].parent)
    result = CliRunner().invoke(cli, ["index", "--ray", folder, "--index", str(tmp_path / "i")])
    assert result.exit_code == ExitStatus.USAGE
    assert "not a Ray address" in result.output and "--ray=local" in result.output


def test_a_file_changed_after_the_driver_hashed_it_is_stored_under_what_was_encoded(
    ray_cluster: Any, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver hashes a file with the size of a stored item (it may be a copy), and a
    worker reads it again to encode: when the file changed in between, the row must carry
    the hash of the bytes encoded. Under the planned hash, a later copy of the old content
    would reuse the new content's embedding. (BMPs of one size have one file size.)"""
    from indexer import pipeline
    from indexer.distributed import RayEncoding, RayOptions
    from indexer.pipeline import index_images
    from mmsearch.encoder import Encoder
    from mmsearch.media import content_hash, hash_bytes

    folder = tmp_path / "shots"
    folder.mkdir()
    encoder = Encoder.load(TINY, device="cpu")
    noise_image(3).save(folder / "x.bmp")
    index_images(catalog, [folder], lambda: encoder)
    before, after = noise_image(1), noise_image(2)
    before.save(folder / "a.bmp")  # the size of x.bmp: the driver hashes it
    old_bytes = (folder / "a.bmp").read_bytes()
    hashed = []

    def hash_then_change(path: Any, algorithm: str = "blake3") -> str:
        digest = content_hash(path, algorithm=algorithm)
        hashed.append(Path(path).name)
        after.save(path)  # written after the driver hashed it, before a worker reads it
        return digest

    monkeypatch.setattr(pipeline, "content_hash", hash_then_change)
    remote = RayEncoding(RayOptions(workers=1, batch_size=2))
    summary = index_images(catalog, [folder], lambda: encoder, encode_jobs=remote.encode_images)
    monkeypatch.undo()

    assert hashed == ["a.bmp"] and summary.added == 1 and not summary.skipped
    row = catalog.find_path(str(folder / "a.bmp"))
    assert row is not None and row.content_hash != hash_bytes(old_bytes, catalog.file_hash)
    assert row.content_hash == content_hash(folder / "a.bmp", algorithm=catalog.file_hash)
    _, stored = catalog.embeddings([row.id], TINY_DIM)
    np.testing.assert_allclose(stored[0], encoder.encode_images([after])[0], atol=1e-3)

    (folder / "copy.bmp").write_bytes(old_bytes)  # the content the driver had hashed
    index_images(catalog, [folder], lambda: encoder)
    copy = catalog.find_path(str(folder / "copy.bmp"))
    assert copy is not None
    _, stored = catalog.embeddings([copy.id], TINY_DIM)
    np.testing.assert_allclose(stored[0], encoder.encode_images([before])[0], atol=1e-3)


def test_the_driver_reads_only_files_that_may_be_stored_content(
    ray_cluster: Any, catalog: Catalog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new file whose size no stored item has cannot be stored content: the driver
    leaves it to a worker, which reads it once. A rename and a copy (sizes that are stored)
    are hashed by the driver and stored without encoding; a run of renames alone does not
    start Ray."""
    from indexer import pipeline
    from indexer.distributed import RayEncoding, RayOptions
    from indexer.pipeline import index_images
    from mmsearch.encoder import Encoder
    from mmsearch.media import content_hash

    folder = tmp_path / "shots"
    folder.mkdir()
    for i, size in enumerate([(96, 72), (80, 60), (64, 48)]):
        noise_image(40 + i, size).save(folder / f"p{i}.png")
    hashed: list[str] = []
    ray_runs: list[int] = []

    def counting_hash(path: Any, algorithm: str = "blake3") -> str:
        hashed.append(Path(path).name)
        return content_hash(path, algorithm=algorithm)

    monkeypatch.setattr(pipeline, "content_hash", counting_hash)
    remote = RayEncoding(RayOptions(workers=1, batch_size=2))

    def encode_jobs(catalog: Catalog, jobs: Any, *args: Any) -> Any:
        ray_runs.append(len(jobs))
        return remote.encode_images(catalog, jobs, *args)

    encoder = Encoder.load(TINY, device="cpu")
    first = index_images(catalog, [folder], lambda: encoder, encode_jobs=encode_jobs)
    assert (first.added, hashed, ray_runs) == (3, [], [3])  # nothing stored: nothing hashed
    ids = {Path(r.path or "").name: r.id for r in catalog.image_files()}
    digests = {r.content_hash for r in catalog.image_files()}
    assert digests == {content_hash(folder / f"p{i}.png") for i in range(3)}  # the workers'

    (folder / "p0.png").rename(folder / "moved.png")
    (folder / "copy.png").write_bytes((folder / "p1.png").read_bytes())
    noise_image(50, (120, 90)).save(folder / "new.png")
    stored_sizes = {r.size for r in catalog.image_files()}
    assert (folder / "new.png").stat().st_size not in stored_sizes
    second = index_images(catalog, [folder], lambda: encoder, encode_jobs=encode_jobs)
    assert sorted(hashed) == ["copy.png", "moved.png"] and ray_runs == [3, 1]
    assert (second.added, second.reused) == (1, 2) and not second.skipped
    moved, new = (
        catalog.find_path(str(folder / "moved.png")),
        catalog.find_path(str(folder / "new.png")),
    )
    assert moved is not None and new is not None and moved.id == ids["p0.png"]
    _, stored = catalog.embeddings([new.id], TINY_DIM)
    expected = encoder.encode_images([noise_image(50, (120, 90))])[0]
    np.testing.assert_allclose(stored[0], expected, atol=1e-3)

    (folder / "moved.png").rename(folder / "again.png")
    third = index_images(catalog, [folder], lambda: encoder, encode_jobs=encode_jobs)
    assert (third.reused, third.added, ray_runs) == (1, 0, [3, 1])  # no Ray for a rename


def test_a_worker_reads_and_decodes_as_a_local_run_the_device_path_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image worker decodes with the encoder's feed, as a local run does: with the
    device JPEG path (a GPU worker's), exercised here on the CPU, JPEGs go to torchvision's
    decoder and embed as Pillow's do; skip reasons are the same; a file gone since the
    plan is told apart (not remembered as a bad file); digests are of the bytes read."""
    from indexer.distributed import ImageWorker
    from mmsearch import imagefeed
    from mmsearch.encoder import Encoder
    from mmsearch.imagefeed import TorchFeed
    from mmsearch.media import content_hash

    noise_image(5, (160, 120)).save(tmp_path / "a.jpg", quality=90)
    noise_image(6).save(tmp_path / "b.png")
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    names = ["a.jpg", "b.png", "cut.jpg", "gone.jpg"]
    batch = {"i": np.arange(4), "path": np.array([str(tmp_path / n) for n in names], object)}
    encoder = Encoder.load(TINY, device="cpu")
    pillow = ImageWorker(lambda: encoder, 2)
    device = ImageWorker(lambda: encoder, 2)
    device.feed = TorchFeed(encoder, gpu_jpeg=True)
    decoded = []

    def counting_decode(data: Any, *args: Any, **kwargs: Any) -> Any:
        decoded.append(len(data) if isinstance(data, list) else 1)
        return real_decode(data, *args, **kwargs)

    real_decode = imagefeed.decode_jpeg
    monkeypatch.setattr(imagefeed, "decode_jpeg", counting_decode)
    a, b = pillow(batch), device(batch)

    assert sum(decoded) == 1  # a.jpg, by torchvision (only from the device worker)
    assert list(a["ok"]) == list(b["ok"]) == [True, True, False, False]
    assert list(a["unreadable"]) == list(b["unreadable"]) == [False, False, False, True]
    assert list(a["reason"]) == list(b["reason"]) and a["reason"][2] and a["reason"][3]
    assert a["digest"][0] == content_hash(tmp_path / "a.jpg") == b["digest"][0]
    assert (a["width"][0], a["height"][0]) == (b["width"][0], b["height"][0]) == (160, 120)
    cosines = (a["embedding"][:2] * b["embedding"][:2]).sum(axis=1)
    assert cosines.min() >= 0.999, cosines
    expected = encoder.encode_images([Image.open(tmp_path / n) for n in names[:2]])
    np.testing.assert_allclose(a["embedding"][:2], expected, atol=1e-5)


def test_a_worker_with_several_devices_encodes_on_each_and_keeps_the_batch_order(
    tmp_path: Path,
) -> None:
    """A worker given several GPUs has a feed lane on each: its batch is split across
    them (two lanes on the CPU here) and comes back in order, with a file the encoder
    refuses (as the device decoder can) reported at its own position."""
    from indexer.distributed import ImageWorker
    from mmsearch.encoder import Encoder
    from mmsearch.errors import InputError
    from mmsearch.imagefeed import TorchFeed
    from mmsearch.media import EncodedImages

    names = [f"{i}.jpg" for i in range(6)]
    names[4] = "refused.jpg"  # second in the second lane's part
    for i, name in enumerate(names):
        noise_image(20 + i, (120, 90)).save(tmp_path / name, quality=90)
    batch = {"i": np.arange(6), "path": np.array([str(tmp_path / n) for n in names], object)}
    encoder = Encoder.load(TINY, device="cpu")
    lanes_used = []

    def refusing(feed: TorchFeed) -> TorchFeed:
        encode = feed.encode

        def encode_but_refused(images: Any, lane: int = 0) -> EncodedImages:
            lanes_used.append((id(feed), lane, len(images)))
            refused = {
                k: InputError(im.payload.path, "refused by the decoder")
                for k, im in enumerate(images)
                if im.payload.path.endswith("refused.jpg")
            }
            done = encode([im for k, im in enumerate(images) if k not in refused], lane)
            return EncodedImages(done.vectors, refused)

        feed.encode = encode_but_refused  # type: ignore[method-assign]
        return feed

    one, two = ImageWorker(lambda: encoder, 2), ImageWorker(lambda: encoder, 2)
    one.feed = refusing(TorchFeed(encoder, gpu_jpeg=True))
    two.feed = refusing(TorchFeed(encoder, devices=["cpu", "cpu"], gpu_jpeg=True))
    a, b = one(batch), two(batch)

    assert sorted((lane, n) for f, lane, n in lanes_used if f == id(two.feed)) == [(0, 3), (1, 3)]
    assert list(a["ok"]) == list(b["ok"]) == [True, True, True, True, False, True]
    assert list(a["reason"]) == list(b["reason"]) == [""] * 4 + ["refused by the decoder", ""]
    np.testing.assert_allclose(b["embedding"], a["embedding"], atol=1e-6)
    expected = encoder.encode_images([Image.open(tmp_path / n) for n in names])
    kept = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(b["embedding"][kept], expected[kept], atol=1e-3)
