"""The OpenCLIP encoder: resolving model references, loading, encoding, saving, failing fast."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
from conftest import TINY, TINY_DIM, noise_image
from PIL import Image

import mmsearch.encoder
import mmsearch.models
from mmsearch.encoder import Encoder
from mmsearch.errors import ModelError, WeightsUnavailableError
from mmsearch.models import resolve_model

TEXTS = ["a red car", "a photo of a dog on the beach", "sunset over mountains"]


def make_image(seed: int, size: tuple[int, int] = (80, 60)) -> Image.Image:
    return noise_image(seed, size)


@pytest.fixture(scope="module")
def tiny() -> Encoder:
    return Encoder.load(TINY, device="cpu")


@pytest.fixture
def images() -> list[Image.Image]:
    return [make_image(1), make_image(2), make_image(3, size=(40, 90)).convert("L")]


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def empty_hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point every weights cache (HF hub, open_clip's ~/.cache/clip) at an empty dir."""
    home = tmp_path / "home"
    cache = home / ".cache" / "huggingface"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    # huggingface_hub reads these once at import; patch the module constant as well.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache / "hub"))
    return cache


# -- resolve_model -----------------------------------------------------------------------


def test_resolve_default_is_vit_b_32_laion(no_network: None) -> None:
    spec = resolve_model()
    assert spec.model == "ViT-B-32"
    assert spec.pretrained == "laion2b_s34b_b79k"
    assert spec.identity == "ViT-B-32:laion2b_s34b_b79k"
    assert resolve_model("ViT-B-32") == spec
    assert resolve_model("ViT-B-32", "laion2b_s34b_b79k") == spec


def test_resolve_unknown_name_suggests_near_miss() -> None:
    with pytest.raises(ModelError, match="Did you mean") as info:
        resolve_model("ViT-B-31")
    assert "ViT-B-32" in str(info.value)
    assert "'ViT-B-31'" in str(info.value)


def test_resolve_unknown_name_without_near_miss() -> None:
    with pytest.raises(ModelError, match="unknown model") as info:
        resolve_model("zzzzqqqq")
    assert "Did you mean" not in str(info.value)


def test_resolve_bad_tag_lists_tags() -> None:
    with pytest.raises(ModelError, match="not-a-tag") as info:
        resolve_model("ViT-B-32", "not-a-tag")
    message = str(info.value)
    assert "known tags" in message
    assert "laion2b_s34b_b79k" in message
    assert "openai" in message


def test_resolve_checkpoint_file_as_pretrained(tmp_path: Path) -> None:
    ckpt = tmp_path / "weights.safetensors"
    ckpt.write_bytes(b"\x01" * 4096)
    spec = resolve_model("ViT-B-32", str(ckpt))
    assert spec.model == "ViT-B-32"
    assert spec.pretrained == str(ckpt.resolve())
    match = re.fullmatch(r"ViT-B-32:file:([0-9a-f]+)", spec.identity)
    assert match, spec.identity
    # The identity follows the file's content, not its name.
    copy = tmp_path / "renamed.bin"
    copy.write_bytes(ckpt.read_bytes())
    assert resolve_model("ViT-B-32", str(copy)).identity == spec.identity
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"\x02" * 4096)
    assert resolve_model("ViT-B-32", str(other)).identity != spec.identity


def test_resolve_directory_without_config_raises(tmp_path: Path) -> None:
    (tmp_path / "weights.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="open_clip_config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelError, match="open_clip_config.json"):
        resolve_model(f"local-dir:{tmp_path}")


def test_resolve_missing_directory_raises(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


def test_tiny_takes_no_pretrained() -> None:
    assert resolve_model(TINY).identity == "mmsearch-tiny:random-seed0"
    with pytest.raises(ModelError, match="pretrained"):
        resolve_model(TINY, "laion2b_s34b_b79k")


# -- the tiny model: load and encode ------------------------------------------------------


def test_tiny_load_is_seeded(tiny: Encoder, images: list[Image.Image]) -> None:
    again = Encoder.load(TINY, device="cpu")
    np.testing.assert_array_equal(again.encode_texts(TEXTS), tiny.encode_texts(TEXTS))
    np.testing.assert_array_equal(again.encode_images(images), tiny.encode_images(images))
    # Loading must not consume or reset the caller's global torch RNG stream.
    import torch

    torch.manual_seed(99)
    expected = torch.rand(3)
    torch.manual_seed(99)
    Encoder.load(TINY, device="cpu")
    assert torch.equal(torch.rand(3), expected)


def test_text_embeddings_are_unit_float32(tiny: Encoder) -> None:
    emb = tiny.encode_texts(TEXTS)
    assert emb.shape == (len(TEXTS), TINY_DIM)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])  # different texts, different vectors
    np.testing.assert_allclose(tiny.encode_texts(TEXTS[:1])[0], emb[0], atol=1e-5)


def test_image_embeddings_are_unit_float32(tiny: Encoder, images: list[Image.Image]) -> None:
    emb = tiny.encode_images(images)
    assert emb.shape == (len(images), TINY_DIM)
    assert emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert not np.allclose(emb[0], emb[1])
    assert tiny.dim == TINY_DIM
    assert tiny.image_size == 64


def test_encode_empty_lists(tiny: Encoder) -> None:
    for emb in (tiny.encode_texts([]), tiny.encode_images([])):
        assert emb.shape == (0, TINY_DIM)
        assert emb.dtype == np.float32


def test_is_truncated(tiny: Encoder) -> None:
    assert tiny.context_length == 32
    assert not tiny.is_truncated("a red car")
    long_text = " ".join(f"word{i % 17}" for i in range(200))
    assert tiny.is_truncated(long_text)
    assert tiny.count_tokens("a red car") < tiny.context_length < tiny.count_tokens(long_text)


def test_save_and_load_directory(tiny: Encoder, images: list[Image.Image], tmp_path: Path) -> None:
    out = tmp_path / "model"
    spec = tiny.save(out, meta={"note": "test"})
    assert (out / "open_clip_config.json").is_file()
    assert (out / "open_clip_model.safetensors").is_file()
    assert not list(out.glob("*.tmp"))
    assert spec.identity.startswith("dir:")
    assert resolve_model(str(out)).identity == spec.identity
    assert resolve_model(f"local-dir:{out}").identity == spec.identity

    loaded = Encoder.load(out, device="cpu")
    assert loaded.spec.identity == spec.identity
    assert loaded.dim == TINY_DIM
    np.testing.assert_allclose(loaded.encode_texts(TEXTS), tiny.encode_texts(TEXTS), atol=1e-5)
    np.testing.assert_allclose(loaded.encode_images(images), tiny.encode_images(images), atol=1e-5)
    # Saving the same weights again gives the same identity.
    assert loaded.save(tmp_path / "copy").identity == spec.identity


def test_a_checkpoint_load_skips_the_random_init_it_would_overwrite(
    tiny: Encoder, images: list[Image.Image], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every parameter of a model directory (or checkpoint file) is loaded strictly, so
    its random initialisation is skipped: no random draws, the same embeddings; the random
    tiny model is still initialised (seeded); torch.nn.init is left as it was."""
    import torch

    out = tmp_path / "model"
    tiny.save(out)
    draws: list[str] = []
    for name in ("normal_", "uniform_"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):  # type: ignore[no-untyped-def]
            draws.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    import torch.nn.modules.activation as attention

    before = dict(vars(torch.nn.init)), dict(vars(attention))
    loaded = Encoder.load(out, device="cpu")
    assert draws == []
    np.testing.assert_allclose(loaded.encode_images(images), tiny.encode_images(images), atol=1e-6)
    np.testing.assert_allclose(loaded.encode_texts(TEXTS), tiny.encode_texts(TEXTS), atol=1e-6)
    Encoder.load(TINY, device="cpu")
    assert draws  # the tiny model has no checkpoint: initialised
    assert (dict(vars(torch.nn.init)), dict(vars(attention))) == before


def test_input_size_known_without_loading_is_the_loaded_encoders(
    tiny: Encoder, tmp_path: Path
) -> None:
    """The indexer decodes at a scale derived from this before the model loads: it must be
    what the loaded encoder says, for a built-in architecture and for a model directory."""
    assert mmsearch.models.input_size(tiny.spec) == tiny.image_size == 64
    spec = tiny.save(tmp_path / "model")
    assert mmsearch.models.input_size(spec) == Encoder.load(spec, device="cpu").image_size
    vit = mmsearch.models.ModelSpec("ViT-B-32", "weights.safetensors", "i", "d")
    assert mmsearch.models.input_size(vit) == 224  # open_clip's ViT-B-32 config
    hub = mmsearch.models.ModelSpec("hf-hub:x/y", None, "i", "d")
    assert mmsearch.models.input_size(hub) is None


# -- failing fast without weights ---------------------------------------------------------


def _assert_fails_fast(message_part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before open_clip builds a model or tries a download (no_network catches
    any connection): "fast" by construction, not by a clock."""
    import open_clip

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built although its weights are unavailable")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", must_not_build)
    with pytest.raises(WeightsUnavailableError) as info:
        Encoder.load("ViT-B-32", device="cpu")
    err = info.value
    assert "--pretrained" in str(err)
    assert "--model" in str(err)
    assert message_part in err.reason
    assert err.model == "ViT-B-32"
    assert err.pretrained == "laion2b_s34b_b79k"
    assert isinstance(err, ModelError)


def test_load_uncached_weights_offline_fails_fast(
    monkeypatch: pytest.MonkeyPatch, empty_hf_cache: Path, no_network: None
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _assert_fails_fast("HF_HUB_OFFLINE", monkeypatch)


def test_load_uncached_weights_hub_unreachable_fails_fast(
    monkeypatch: pytest.MonkeyPatch, empty_hf_cache: Path, no_network: None
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert "HF_HUB_OFFLINE" not in os.environ
    probes: list[float] = []

    def unreachable(timeout: float = 3.0) -> bool:
        probes.append(timeout)
        return False

    monkeypatch.setattr(mmsearch.models, "_hub_reachable", unreachable)
    _assert_fails_fast("cannot be reached", monkeypatch)
    assert probes, "the hub was not probed before giving up"
