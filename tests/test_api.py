"""The embedded Python API: Index.open / add_* / search / info / reembed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import GOOD_IMAGES, TINY, noise_image
from PIL import Image
from sqlalchemy import text as sql_text

import mmsearch
from mmsearch.ann import policy as index_policy
from mmsearch.encoder import Encoder


def test_search_every_direction(tmp_path, photos):
    with mmsearch.Index.open(tmp_path / "idx", model=TINY) as index:
        summary = index.add_images([tmp_path / "photos"])
        assert summary.added == GOOD_IMAGES and len(summary.skipped) == 3
        index.add_texts(["a red car", "a blue boat", "  ", "a red car"])
        assert index.catalog.count("text") == 2

        hits = index.search("a red car", k=3)  # text → image
        assert len(hits) == 3 and all(h.modality == "image" and h.path for h in hits)
        assert hits[0].score >= hits[1].score >= hits[2].score

        pil = Image.open(photos["b.png"])
        hits = index.search(pil, k=1)  # PIL image → image: the same picture
        assert hits[0].path == str(photos["b.png"]) and hits[0].score > 0.99

        hits = index.search(pil, k=5, target="text")  # image → text
        assert {h.text for h in hits} == {"a red car", "a blue boat"}

        hits = index.search(Path(photos["b.png"]), k=GOOD_IMAGES)  # indexed file
        assert str(photos["b.png"]) not in [h.path for h in hits]
        assert hits[0].label == hits[0].path

        with pytest.raises(mmsearch.QueryError):
            index.search("", k=3)
        with pytest.raises(mmsearch.QueryError):
            index.search("cat", target="video")


@pytest.mark.parametrize("legacy", [False, True])  # a catalog made before file_hash
def test_path_query_needs_no_model(tmp_path, photos, monkeypatch, legacy):
    with mmsearch.Index.open(tmp_path / "idx", model=TINY) as index:
        if legacy:
            with index.catalog.session() as s, s.begin():
                s.execute(sql_text("DELETE FROM meta WHERE key = 'file_hash'"))
        index.add_images([tmp_path / "photos"])
        assert index.catalog.file_hash == ("blake2b" if legacy else "blake3")

    def no_load(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(Encoder, "load", no_load)
    monkeypatch.setattr(mmsearch.Index, "query_encoder", no_load)  # nor its export
    with mmsearch.Index.open(tmp_path / "idx") as index:
        hits = index.search(Path(photos["a.jpg"]), k=2)
    assert len(hits) == 2


def test_open_missing_index_without_create(tmp_path):
    with pytest.raises(mmsearch.IndexNotFoundError):
        mmsearch.Index.open(tmp_path / "none", create=False)


def test_empty_index_returns_no_hits(tmp_path):
    with mmsearch.Index.open(tmp_path / "idx", model=TINY) as index:
        assert index.search("anything") == []
        assert index.info().images == 0


def test_switches_to_ivfpq_when_large(tmp_path, monkeypatch):
    """Past the exact-search threshold the index becomes IVF-PQ and still finds items."""
    monkeypatch.setattr(index_policy, "EXACT_MAX", 300)
    rng = np.random.default_rng(0)
    words = [
        "red",
        "green",
        "blue",
        "car",
        "boat",
        "dog",
        "cat",
        "tree",
        "house",
        "sea",
        "small",
        "big",
        "old",
        "new",
        "bright",
        "dark",
    ]
    texts = sorted({" ".join(rng.choice(words, size=4)) for _ in range(3000)})[:1200]
    with mmsearch.Index.open(tmp_path / "idx", model=TINY) as index:
        index.add_texts(texts[:200])
        assert index.vectors("text").manifest.factory == "Flat"
        index.add_texts(texts[200:])
        vi = index.vectors("text")
        assert vi.manifest.factory.startswith("IVF") and vi.count == len(texts)
        info = index.info()
        (text_info,) = info.vectors
        assert text_info.bytes_per_vector < 128 * 4  # compressed below float32 size
        found = sum(index.search(t, k=1, target="text")[0].text == t for t in texts[:50])
    assert found >= 48  # exact re-rank makes self-retrieval nearly perfect
    with mmsearch.Index.open(tmp_path / "idx") as index:  # reopened from disk
        assert index.vectors("text").manifest.factory.startswith("IVF")
        assert index.search(texts[3], k=1, target="text")[0].text == texts[3]


def _perturbed_model_dir(tmp_path: Path) -> Path:
    encoder = Encoder.load(TINY, device="cpu")
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path / "model-b"
    encoder.save(out, meta={"note": "test"})
    return out


def test_model_mismatch_and_reembed(tmp_path, photos):
    other = _perturbed_model_dir(tmp_path)
    with mmsearch.Index.open(tmp_path / "idx", model=TINY) as index:
        index.add_images([tmp_path / "photos"])
        index.add_texts(["a red car"])
        before = index.catalog.embeddings(index.catalog.ids("image").tolist(), 128)[1]
    with mmsearch.Index.open(tmp_path / "idx", model=other) as index:
        with pytest.raises(mmsearch.ModelMismatchError, match="--reembed"):
            index.search("a red car")
        with pytest.raises(mmsearch.ModelMismatchError):
            index.add_images([tmp_path / "photos"])
        summary = index.reembed()
        assert summary.updated == GOOD_IMAGES + 1
        assert index.model_info["identity"].startswith("dir:")
        after = index.catalog.embeddings(index.catalog.ids("image").tolist(), 128)[1]
        assert not np.allclose(before, after, atol=1e-2)
        assert index.search(Image.open(photos["b.png"]), k=1)[0].path == str(photos["b.png"])
    with mmsearch.Index.open(tmp_path / "idx") as index:  # the new model is remembered
        assert index.search("a red car", k=1, target="text")[0].text == "a red car"
    with (
        mmsearch.Index.open(tmp_path / "idx", model=TINY) as index,
        pytest.raises(mmsearch.ModelMismatchError),
    ):
        index.search("a red car")


def test_interrupted_reembed_is_refused_until_finished(tmp_path, photos, monkeypatch):
    other = _perturbed_model_dir(tmp_path)
    with mmsearch.Index.open(tmp_path / "idx", model=TINY) as index:
        index.add_images([tmp_path / "photos"])

    def boom(self, batch):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Encoder, "encode_image_tensors", boom)
        with (
            mmsearch.Index.open(tmp_path / "idx", model=other) as index,
            pytest.raises(KeyboardInterrupt),
        ):
            index.reembed()
    with (
        mmsearch.Index.open(tmp_path / "idx") as index,
        pytest.raises(mmsearch.MMSearchError, match="interrupted"),
    ):
        index.search("a red car")
    with mmsearch.Index.open(tmp_path / "idx", model=other) as index:
        index.reembed()
        assert len(index.search("a red car", k=3)) == 3


def test_add_images_from_several_folders(tmp_path, photos):
    extra = tmp_path / "more"
    extra.mkdir()
    noise_image(123).save(extra / "z.png")
    with mmsearch.Index.open(tmp_path / "idx", model=TINY) as index:
        index.add_images([tmp_path / "photos"])
        index.add_images([extra])  # a second folder does not remove the first
        assert index.info().images == GOOD_IMAGES + 1
        summary = index.add_images([tmp_path / "photos"])
        assert summary.removed == 0 and summary.unchanged == GOOD_IMAGES
