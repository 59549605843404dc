"""The CLI answers the same with the exported ONNX runtime as with torch.

``tests/test_runtime.py`` checks the runtime itself against the encoder; these tests go
through ``mmsearch query`` (index → export after the run → ``$MMSEARCH_QUERY_RUNTIME``),
for the tiny model and for a fine-tuned model directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, noise_image

from mmsearch import config
from mmsearch.cli import cli
from mmsearch.encoder import Encoder
from mmsearch.index import Index
from mmsearch.runtime import QueryRuntime

TEXTS = ["a red car", "a dog on a beach", "two cats", "a bowl of soup", "snow on a mountain"]
QUERIES = ["a red car parked outside", "mountains"]


def _build(root: Path, model: str) -> Path:
    """An index of 8 noise images and 5 texts; the run exports the model's towers."""
    photos = root / "photos"
    photos.mkdir(parents=True)
    for seed in range(8):
        noise_image(seed, size=(80, 64)).save(photos / f"{seed}.png")
    idx = root / "idx"
    with Index.open(idx, model=model, device="cpu") as index:
        index.add_images([photos])
        index.add_texts(TEXTS)
        identity = index.model_info["identity"]
    assert (config.runtime_dir(identity) / "runtime.json").is_file()
    return idx


def _query(
    monkeypatch: pytest.MonkeyPatch, runtime: str, idx: Path, *args: str
) -> list[tuple[int, float]]:
    """(id, score) hits of ``mmsearch query --json`` encoded by ``runtime`` only: the
    other way of encoding is made to fail, so a silent fallback cannot pass."""
    with monkeypatch.context() as m:
        m.setenv(config.ENV_QUERY_RUNTIME, runtime)
        if runtime == "onnx":
            m.setattr(Index, "encoder", _refuse)
        else:
            m.setattr(QueryRuntime, "load", _refuse)
        result = CliRunner().invoke(
            cli, ["-q", "query", "--index", str(idx), "--json", "-k", "6", *args]
        )
    assert result.exit_code == 0, result.output
    return [(h["id"], h["score"]) for h in json.loads(result.stdout)["hits"]]


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("the other runtime was used")


def _assert_same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> None:
    assert [i for i, _ in a] == [i for i, _ in b]
    np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-3)


def _assert_cli_agrees(monkeypatch: pytest.MonkeyPatch, idx: Path, query_image: Path) -> None:
    for args in (
        *((q,) for q in QUERIES),  # text → image
        (QUERIES[0], "--target", "text"),  # text → text
        ("--image", str(query_image)),  # image (not indexed: it is encoded) → image
        ("--image", str(query_image), "--target", "text"),
    ):
        onnx = _query(monkeypatch, "onnx", idx, *args)
        assert len(onnx) >= 5, args
        _assert_same(onnx, _query(monkeypatch, "torch", idx, *args))


@pytest.fixture
def query_image(tmp_path: Path) -> Path:
    path = tmp_path / "query.jpg"
    noise_image(42, size=(300, 200)).save(path, quality=95)
    return path


@pytest.mark.slow
def test_cli_onnx_matches_torch(
    tmp_path: Path, query_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    idx = _build(tmp_path, TINY)
    _assert_cli_agrees(monkeypatch, idx, query_image)


@pytest.mark.slow
def test_cli_onnx_matches_torch_fine_tuned(
    tmp_path: Path, query_image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tuned = Encoder.load(TINY, device="cpu")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in tuned.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    spec = tuned.save(tmp_path / "tuned")
    idx = _build(tmp_path, str(tmp_path / "tuned"))
    with Index.open(idx, create=False) as index:  # the tuned model's own export is used
        assert index.model_info["identity"] == spec.identity
        assert index.query_runtime_status().startswith("onnx")
    _assert_cli_agrees(monkeypatch, idx, query_image)
