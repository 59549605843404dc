"""The indexing runs on their own: a fake encoder (no model, no torch) whose embedding of an
image is a function of its pixels, so every decision of the pipeline can be checked."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import noise_image

from indexer.pipeline import index_images
from indexer.reembed import reembed
from indexer.texts import TextRecord, index_texts
from mmsearch.errors import ModelError, ModelMismatchError
from mmsearch.media import content_hash

DIM = 8


class FakeEncoder:
    """Embeds an image as its normalised mean colour (+ a constant), a text by its hash."""

    context_length = 5
    image_size = 16

    def __init__(self, identity: str = "fake", offset: float = 0.0) -> None:
        self.identity = identity
        self.offset = offset
        self.images_encoded = 0
        self.texts_encoded = 0

    def preprocess(self, image: Any) -> np.ndarray:
        return np.asarray(image.convert("RGB"), dtype=np.float32).mean(axis=(0, 1))

    def encode_image_tensors(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        self.images_encoded += len(batch)
        x = np.zeros((len(batch), DIM), dtype=np.float32)
        x[:, :3] = np.stack(list(batch)) / 255.0
        x[:, 3] = 1.0 + self.offset
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        self.texts_encoded += len(texts)
        rows = []
        for t in texts:
            rng = np.random.default_rng(abs(hash((t, self.offset))) % (1 << 32))
            rows.append(rng.standard_normal(DIM))
        x = np.asarray(rows, dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def is_truncated(self, text: str) -> bool:
        return len(text.split()) + 2 > self.context_length

    engine = "fake"

    def record(self) -> dict[str, Any]:
        return {"model": self.identity, "identity": self.identity, "display": self.identity,
                "dim": DIM}  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(5):
        noise_image(i).save(root / f"{i}.png")
    return root


def _run(catalog, root, encoder, **kwargs):  # type: ignore[no-untyped-def]
    calls = []

    def get() -> FakeEncoder:
        calls.append(1)
        return encoder

    summary = index_images(catalog, [root], get, **kwargs)
    return summary, len(calls)


def _paths(catalog) -> set[str]:  # type: ignore[no-untyped-def]
    return {Path(r.path).name for r in catalog.image_files()}


def test_first_run_encodes_every_image_and_records_the_model(catalog, folder):
    enc = FakeEncoder()
    summary, loads = _run(catalog, folder, enc, batch_size=2)
    assert (summary.added, summary.scanned, loads, enc.images_encoded) == (5, 5, 1, 5)
    assert catalog.model_info()["identity"] == "fake"
    assert _paths(catalog) == {f"{i}.png" for i in range(5)}


def test_unchanged_run_loads_no_encoder(catalog, folder):
    _run(catalog, folder, FakeEncoder())
    summary, loads = _run(catalog, folder, FakeEncoder())
    assert (summary.unchanged, summary.added, loads) == (5, 0, 0)


def _make_legacy(catalog) -> None:  # type: ignore[no-untyped-def]
    """The catalog as a version before ``file_hash`` made it (no such entry)."""
    from mmsearch.catalog import Meta

    with catalog.session() as s, s.begin():
        s.delete(s.get(Meta, "file_hash"))


@pytest.mark.parametrize("legacy", [False, True])
def test_rename_and_duplicate_reuse_stored_embeddings(catalog, folder, legacy):
    """In a new catalog (BLAKE3 digests) and in one made before it (BLAKE2b): the digests
    of the files read now are those of the catalog, or nothing would be found again."""
    if legacy:
        _make_legacy(catalog)
    assert catalog.file_hash == ("blake2b" if legacy else "blake3")
    _run(catalog, folder, FakeEncoder())
    before = {r.content_hash: r.id for r in catalog.image_files()}
    digest = content_hash(folder / "0.png", algorithm=catalog.file_hash)
    assert digest in before and len(digest) == 32
    os.rename(folder / "0.png", folder / "renamed.png")
    shutil.copy(folder / "1.png", folder / "copy.png")
    enc = FakeEncoder()
    summary, loads = _run(catalog, folder, enc)
    assert (summary.reused, summary.added, summary.removed, loads) == (2, 0, 0, 0)
    after = {Path(r.path).name: r for r in catalog.image_files()}
    assert after["renamed.png"].id == before[after["renamed.png"].content_hash]  # same item
    assert after["copy.png"].width == after["1.png"].width  # a copy takes its dimensions


def test_changed_file_is_encoded_again_under_a_new_id_and_gone_files_leave(catalog, folder):
    _run(catalog, folder, FakeEncoder())
    old = {Path(r.path).name: r.id for r in catalog.image_files()}
    noise_image(50).save(folder / "2.png")
    os.utime(folder / "2.png", ns=(1, 1))  # another mtime, whatever the clock says
    (folder / "3.png").unlink()
    enc = FakeEncoder()
    summary, _ = _run(catalog, folder, enc)
    assert (summary.updated, summary.removed, enc.images_encoded) == (1, 1, 1)
    now = {Path(r.path).name: r.id for r in catalog.image_files()}
    assert "3.png" not in now and now["2.png"] != old["2.png"] and now["1.png"] == old["1.png"]


def test_bad_files_are_skipped_with_reasons_and_the_run_goes_on(catalog, folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    summary, _ = _run(catalog, folder, FakeEncoder(), batch_size=1)
    reasons = {Path(s.path).name: s.reason for s in summary.skipped}
    assert set(reasons) == {"broken.png", "empty.jpg"} and reasons["empty.jpg"] == "empty file"
    assert summary.added == 5


def test_interrupted_run_keeps_committed_batches(catalog, folder):
    class Dies(FakeEncoder):
        def encode_image_tensors(self, batch):  # type: ignore[no-untyped-def]
            if self.images_encoded >= 2:
                raise KeyboardInterrupt
            return super().encode_image_tensors(batch)

    with pytest.raises(KeyboardInterrupt):
        _run(catalog, folder, Dies(), batch_size=2)
    assert catalog.count("image") == 2  # the first batch was committed
    enc = FakeEncoder()
    summary, _ = _run(catalog, folder, enc, batch_size=2)
    assert (summary.unchanged, summary.added, enc.images_encoded) == (2, 3, 3)


def test_another_model_is_refused_before_anything_is_stored(catalog, folder):
    _run(catalog, folder, FakeEncoder("fake"))
    noise_image(77).save(folder / "new.png")
    with pytest.raises(ModelMismatchError):
        _run(catalog, folder, FakeEncoder("other"))
    assert "new.png" not in _paths(catalog)


def _vectors(catalog) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    rows = catalog.image_files()
    ids, vecs = catalog.embeddings([r.id for r in rows], DIM)
    assert ids == [r.id for r in rows]
    return {Path(r.path).name: v for r, v in zip(rows, vecs, strict=True)}


def _loads_after_decoding(monkeypatch, files: int, encoder: FakeEncoder):  # type: ignore[no-untyped-def]
    """A get_encoder that returns only once ``files`` files were decoded before the model
    was loaded (the early path), and a list that says whether that happened in time."""
    import indexer.pipeline

    decoded, real_load = [], indexer.pipeline.load_image
    all_decoded = threading.Event()

    def counting_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real_load(*args, **kwargs)
        decoded.append(1)
        if len(decoded) == files:
            all_decoded.set()
        return out

    monkeypatch.setattr(indexer.pipeline, "load_image", counting_load)
    waited: list[bool] = []

    def slow_load() -> FakeEncoder:
        waited.append(all_decoded.wait(timeout=30))
        return encoder

    return slow_load, waited


def test_files_are_decoded_while_the_model_loads_and_indexed_the_same(
    catalog, folder, tmp_path, monkeypatch
):
    """With the model's input size known beforehand, the model loads in a thread of its
    own: this loader waits until every file has been decoded (without early decoding it
    would wait in vain), and the embeddings equal those of a run that decoded after."""
    from mmsearch.catalog import Catalog

    slow_load, waited = _loads_after_decoding(monkeypatch, 5, FakeEncoder())
    summary = index_images(catalog, [folder], slow_load, batch_size=3, image_size=16)
    assert waited == [True] and summary.added == 5
    with Catalog(tmp_path / "plain" / "catalog.sqlite") as plain:
        index_images(plain, [folder], FakeEncoder, batch_size=2)
        expected = _vectors(plain)
    got = _vectors(catalog)
    assert got.keys() == expected.keys()
    for name, vec in expected.items():
        np.testing.assert_array_equal(got[name], vec)


def test_a_model_failing_to_load_beside_the_decoders_ends_the_run(catalog, folder):
    def broken() -> FakeEncoder:
        raise ModelError("cannot load model for the test")

    with pytest.raises(ModelError, match="for the test"):
        index_images(catalog, [folder], broken, image_size=16)
    assert catalog.count("image") == 0


def test_preprocessing_after_early_decoding_fails_one_file_not_the_run(
    catalog, folder, monkeypatch
):
    class Picky(FakeEncoder):
        def preprocess(self, image):  # type: ignore[no-untyped-def]
            if image.size == (40, 30):
                raise ValueError("odd size")
            return super().preprocess(image)

    noise_image(9, size=(40, 30)).save(folder / "odd.png")
    slow_load, waited = _loads_after_decoding(monkeypatch, 6, Picky())  # all decoded early
    summary = index_images(catalog, [folder], slow_load, image_size=16)
    assert waited == [True]
    reasons = {Path(s.path).name: s.reason for s in summary.skipped}
    assert reasons == {"odd.png": "transform failed: odd size"} and summary.added == 5


def test_a_wrong_input_size_is_logged_and_the_run_goes_on(catalog, folder, caplog):
    with caplog.at_level("WARNING", logger="indexer.pipeline"):
        summary = index_images(catalog, [folder], FakeEncoder, image_size=300)
    assert summary.added == 5
    assert "is not the model's" in caplog.text


def test_texts_stored_once_and_truncation_counted(catalog):
    enc = FakeEncoder()
    texts = ["a b", "a b", "one two three four"]
    records = [TextRecord(t, f"api:{n}") for n, t in enumerate(texts)]
    summary = index_texts(catalog, records, lambda: enc)
    assert (summary.scanned, summary.added, summary.unchanged, summary.truncated) == (3, 2, 1, 1)
    again = index_texts(catalog, records, lambda: enc)
    assert (again.added, again.unchanged, enc.texts_encoded) == (0, 3, 2)


def test_reembed_replaces_every_embedding_and_drops_unreadable_images(catalog, folder):
    enc = FakeEncoder()
    _run(catalog, folder, enc)
    index_texts(catalog, [TextRecord("hello", "api:1")], lambda: enc)
    (folder / "4.png").unlink()
    new = FakeEncoder("fake", offset=1.0)
    summary = reembed(catalog, lambda: new)
    assert (summary.updated, summary.removed, summary.scanned) == (5, 1, 6)
    assert [Path(s.path).name for s in summary.skipped] == ["4.png"]
    ids, stored = catalog.embeddings(catalog.ids("image"), DIM)
    expected = new.encode_image_tensors(
        [new.preprocess(noise_image(int(Path(r.path).stem))) for r in catalog.image_files()]
    )
    assert len(ids) == 4
    np.testing.assert_allclose(stored, expected, atol=2e-3)  # float16 in the catalog


class SlowEncoder(FakeEncoder):
    """Takes ``pause`` seconds for every batch it encodes."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause

    def encode_image_tensors(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        time.sleep(self.pause)
        return super().encode_image_tensors(batch)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        time.sleep(self.pause)
        return super().encode_texts(texts)


@pytest.mark.parametrize("image_size", [None, 16])  # the model loads first / beside decoding
def test_the_summary_says_what_loading_and_encoding_took(catalog, folder, image_size):
    encoder = SlowEncoder(pause=0.2)

    def slow_load() -> FakeEncoder:
        time.sleep(0.3)
        return encoder

    summary = index_images(catalog, [folder], slow_load, batch_size=2, image_size=image_size)
    assert summary.added == 5
    assert 0.3 <= summary.model_seconds < summary.seconds
    assert 3 * 0.2 <= summary.encode_seconds < summary.seconds - summary.model_seconds  # 3 batches
    assert summary.to_dict()["encode_seconds"] == round(summary.encode_seconds, 3)
    again = index_images(catalog, [folder], slow_load)  # nothing to encode: nothing loaded
    assert (again.model_seconds, again.encode_seconds) == (0.0, 0.0)


def test_a_text_run_says_what_loading_and_encoding_took(catalog):
    encoder = SlowEncoder(pause=0.1)

    def slow_load() -> FakeEncoder:
        time.sleep(0.2)
        return encoder

    records = [TextRecord(f"text number {i}", "t.txt") for i in range(5)]
    summary = index_texts(catalog, records, slow_load, batch_size=2)
    assert summary.added == 5
    assert summary.model_seconds >= 0.2 and summary.encode_seconds >= 3 * 0.1
    assert summary.model_seconds + summary.encode_seconds <= summary.seconds
