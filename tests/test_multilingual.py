"""Multilingual and Chinese models end to end, offline: a tiny random XLM-R-text open_clip
model directory and a tiny random Chinese-CLIP directory (tests/multilingual_models.py)
index a folder and a Chinese corpus, answer Chinese queries in every direction through the
real CLI, fine-tune, evaluate, and export their towers to the torch-free query runtime.

A family's tests skip without its packages (the ``multilingual`` extra: transformers and
tokenizers for XLM-R, cn_clip for Chinese-CLIP).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import noise_image
from multilingual_models import (
    build_tiny_cn_clip,
    build_tiny_nllb_style,
    build_tiny_xlmr,
    captions,
)

from mmsearch import config
from mmsearch.cli import cli
from mmsearch.errors import ModelError, WeightsUnavailableError
from mmsearch.models import cn_clip_config, resolve_model

FAMILIES = ("xlmr", "cn_clip")
CORPUS = [zh for _, zh in captions()[::7]] + ["今天的天气很好", "a red circle"]
QUERY = "一个红色的圆形"
#: Texts on which the torch-free tokenizers must give the torch-side ids.
TOKENIZER_PROBES = [
    "",
    QUERY,
    "两个蓝色的正方形在一个黄色三角形的左边",
    "北京的天空很蓝，上海下雨了！",
    "A RED Circle, naïve café — 中文和English混合 123",
    "全角ＡＢＣ１２３ and 　ideographic space",
    "emoji 🚗 and tabs\tnew\nlines",
    "很长的句子" * 40,
]


@pytest.fixture(scope="session")
def xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny XLM-R-text model directory, built once per test session."""
    pytest.importorskip("transformers")
    pytest.importorskip("tokenizers")
    return build_tiny_xlmr(tmp_path_factory.mktemp("multilingual") / "xlmr")


@pytest.fixture(scope="session")
def cn_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Chinese-CLIP model directory, built once per test session."""
    pytest.importorskip("cn_clip")
    pytest.importorskip("tokenizers")
    return build_tiny_cn_clip(tmp_path_factory.mktemp("multilingual") / "cn-clip")


@pytest.fixture
def tiny_model(request: pytest.FixtureRequest, family: str) -> Path:
    """The model directory of the test's ``family`` (skipped without its packages)."""
    return request.getfixturevalue(f"{family}_dir")


@pytest.fixture
def torch_queries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queries and index runs encode with torch (no ONNX export: that is the slow test)."""
    monkeypatch.setenv(config.ENV_QUERY_RUNTIME, "torch")


def _data(root: Path) -> tuple[Path, Path]:
    photos = root / "photos"
    photos.mkdir(parents=True)
    for seed in range(6):
        noise_image(seed, size=(48, 40)).save(photos / f"{seed}.png")
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(CORPUS) + "\n", encoding="utf-8")
    return photos, corpus


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["-q", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def _hits(idx: Path, *args: str) -> list[dict]:
    return json.loads(_run("query", "--index", str(idx), "--json", *args))["hits"]


@pytest.mark.parametrize("family", FAMILIES)
def test_index_and_query_in_chinese_every_direction(tmp_path, tiny_model, torch_queries, family):
    photos, corpus = _data(tmp_path)
    idx = tmp_path / "idx"
    model = str(tiny_model)
    summary = json.loads(
        _run(
            "index",
            str(photos),
            "--texts",
            str(corpus),
            "--model",
            model,
            "--index",
            str(idx),
            "--json",
        )  # fmt: skip
    )
    assert summary  # the run reported

    # text → text: the corpus line itself comes first, with cosine 1
    hits = _hits(idx, QUERY, "--target", "text", "-k", "3")
    assert hits[0]["text"] == QUERY and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert hits[1]["score"] < 0.999  # a random model still tells texts apart
    # text → image: every image, ranked
    hits = _hits(idx, QUERY, "-k", "10")
    assert sorted(Path(h["path"]).name for h in hits) == [f"{i}.png" for i in range(6)]
    # image → image: the image itself first
    hits = _hits(idx, "--image", str(photos / "3.png"), "--include-self", "-k", "2")
    assert Path(hits[0]["path"]).name == "3.png"
    # image → text: Chinese texts come back intact
    hits = _hits(idx, "--image", str(photos / "3.png"), "--target", "text", "-k", "50")
    assert sorted(h["text"] for h in hits) == sorted(CORPUS)
    # the plain output prints Chinese as it is (UTF-8), not escaped
    out = _run("query", QUERY, "--index", str(idx), "--target", "text", "-k", "1")
    assert out.strip().endswith(QUERY)
    info = json.loads(_run("info", "--index", str(idx), "--json"))
    assert Path(model).name in json.dumps(info, ensure_ascii=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_counts_and_cuts_chinese_tokens(tiny_model, family):
    from mmsearch.encoder import Encoder

    encoder = Encoder.load(str(tiny_model), device="cpu")
    assert encoder.context_length == 24
    long = "很长的句子" * 40
    assert encoder.is_truncated(long) and not encoder.is_truncated(QUERY)
    ids = encoder.tokenizer([long, QUERY]).numpy()
    assert ids.shape == (2, 24)
    # a cut text keeps its start and end markers, like a short one
    assert ids[0, 0] == ids[1, 0] and ids[0, -1] == ids[1, encoder.count_tokens(QUERY) - 1]


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_free_tokenizer_gives_the_same_ids(tmp_path, tiny_model, family):
    """The query runtime's tokenizer.json (XLM-R's own; cn_clip's WordPiece vocabulary
    rebuilt with the tokenizers library) against the torch-side tokenizer."""
    from mmsearch.encoder import Encoder
    from mmsearch.export import _hf_tokenizer_spec, _write_tokenizer
    from mmsearch.runtime.hf_tokenizer import HFTokenizer

    encoder = Encoder.load(str(tiny_model), device="cpu")
    spec = _hf_tokenizer_spec(encoder)
    _write_tokenizer(encoder, spec, tmp_path)
    runtime = HFTokenizer(
        tmp_path / spec["files"]["tokenizer"],
        encoder.context_length,
        spec["start_id"],
        spec["end_id"],
        spec["pad_id"],
        spec["clean"],
    )
    texts = TOKENIZER_PROBES + [zh for _, zh in captions()] + [en for en, _ in captions()]
    assert np.array_equal(runtime(texts), encoder.tokenizer(texts).numpy())
    assert [runtime.count_tokens(t) for t in texts] == [encoder.count_tokens(t) for t in texts]


def test_xlmr_model_dir_loads_after_a_move(tmp_path, xlmr_dir):
    """hf_model_name "." resolves against the directory, not the working directory."""
    from mmsearch.encoder import Encoder

    moved = shutil.copytree(xlmr_dir, tmp_path / "elsewhere" / "model")
    a = Encoder.load(str(xlmr_dir), device="cpu").encode_texts([QUERY])
    b = Encoder.load(str(moved), device="cpu").encode_texts([QUERY])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_nllb_style_text_tower_loads_and_encodes(tmp_path, xlmr_dir):
    """An encoder-decoder transformer (NLLB's M2M100) as text tower: open_clip keeps its
    encoder; the directory loads offline and tells texts apart."""
    from mmsearch.encoder import Encoder

    model = build_tiny_nllb_style(tmp_path / "nllb", xlmr_dir)
    encoder = Encoder.load(str(model), device="cpu")
    assert type(encoder.model.text.transformer).__name__ == "M2M100Encoder"
    vectors = encoder.encode_texts([QUERY, "a red circle", QUERY])
    assert vectors.shape == (3, 32)
    assert vectors[0] @ vectors[2] == pytest.approx(1.0, abs=1e-5)
    assert vectors[0] @ vectors[1] < 0.99999


def test_cn_clip_loads_a_released_style_checkpoint(tmp_path, cn_clip_dir):
    """cn_clip's released .pt: {"state_dict": {"module.…": …}, "epoch": …} (its DDP
    training), beside a cn_clip_config.json — the same embeddings as our safetensors."""
    import torch
    from safetensors.torch import load_file

    from mmsearch.encoder import Encoder

    source = cn_clip_dir
    released = tmp_path / "released"
    released.mkdir()
    shutil.copy(source / "cn_clip_config.json", released)
    state = load_file(str(source / "cn_clip_model.safetensors"))
    checkpoint = {
        "epoch": 3,
        "name": "tiny",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
    }
    torch.save(checkpoint, released / "epoch_latest.pt")
    a = Encoder.load(str(source), device="cpu").encode_texts([QUERY])
    b = Encoder.load(str(released), device="cpu").encode_texts([QUERY])
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_cn_clip_references_resolve_offline(tmp_path):
    pytest.importorskip("cn_clip")
    cfg = cn_clip_config("cn-clip:ViT-B-16")
    assert cfg["embed_dim"] == 512 and cfg["text_hidden_size"] == 768
    assert cfg["image_resolution"] == 224 and cfg["context_length"] == 52
    with pytest.raises(WeightsUnavailableError, match="never downloaded"):
        resolve_model("cn-clip:ViT-B-16", str(tmp_path / "nope.pt"))
    checkpoint = tmp_path / "clip_cn_vit-b-16.pt"
    checkpoint.write_bytes(b"not really weights")
    spec = resolve_model("cn-clip:ViT-B-16", str(checkpoint))
    assert spec.model == "cn-clip:ViT-B-16" and spec.identity.startswith("cn-clip:ViT-B-16:file:")
    with pytest.raises(ModelError, match="unknown Chinese-CLIP model"):
        resolve_model("cn-clip:ViT-Z-99")


@pytest.mark.parametrize("family", FAMILIES)
def test_finetune_and_eval_with_chinese_captions(tmp_path, tiny_model, family):
    images = tmp_path / "img"
    images.mkdir()
    rows = ["image,caption"]
    for i, (_, zh) in enumerate(captions()[:8]):
        noise_image(2000 + i, size=(40, 40)).save(images / f"{i}.png")
        rows.append(f"img/{i}.png,{zh}")
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "tuned"
    _run("finetune", str(pairs), "--out", str(out), "--model", str(tiny_model),
         "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--lock-image")  # fmt: skip
    metrics = json.loads(_run("eval", str(pairs), "--model", str(out), "--json"))
    assert metrics["n"] == 8 and 0 <= metrics["t2i_r1"] <= 1
    # the tuned directory is self-contained: it loads from a copy of it alone
    from mmsearch.encoder import Encoder

    moved = shutil.copytree(out, tmp_path / "moved")
    tuned = Encoder.load(str(moved), device="cpu")
    base = Encoder.load(str(tiny_model), device="cpu")
    assert tuned.spec.identity != base.spec.identity
    assert not np.allclose(tuned.encode_texts([QUERY]), base.encode_texts([QUERY]), atol=1e-4)
    # --lock-image froze the image tower: the same image vectors as before
    image = [noise_image(7, size=(40, 40))]
    np.testing.assert_allclose(tuned.encode_images(image), base.encode_images(image), atol=1e-6)


def test_info_says_why_a_model_is_not_exported(tmp_path, cn_clip_dir, monkeypatch):
    """A model whose towers cannot be exported keeps torch; `mmsearch info` says why, and
    later runs do not try again (each try costs an export)."""
    import mmsearch.export

    monkeypatch.setenv("MMSEARCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mmsearch.export, "_hf_backend", lambda tok: None)  # as if unsupported
    photos, corpus = _data(tmp_path)
    idx = tmp_path / "idx"
    _run("index", "--texts", str(corpus), "--model", str(cn_clip_dir),
         "--index", str(idx))  # fmt: skip
    info = json.loads(_run("info", "--index", str(idx), "--json"))
    assert info["query_runtime"].startswith("torch (not exportable: ")
    assert "ChineseClipTokenizer is not supported" in info["query_runtime"]
    calls = []
    monkeypatch.setattr(mmsearch.export, "export_model", lambda *a, **k: calls.append(a))
    _run("index", str(photos), "--index", str(idx))
    assert calls == []
    assert _hits(idx, QUERY, "--target", "text", "-k", "1")[0]["text"] == QUERY


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_query_runtime_answers_like_torch(tmp_path, tiny_model, monkeypatch, family):
    """The index run exports the towers (checked against torch at cosine >= 0.9999 on
    probes, Chinese among them); `mmsearch query` answers the same with both runtimes."""
    photos, corpus = _data(tmp_path)
    idx = tmp_path / "idx"
    _run("index", str(photos), "--texts", str(corpus), "--model", str(tiny_model),
         "--index", str(idx))  # fmt: skip
    info = json.loads(_run("info", "--index", str(idx), "--json"))
    assert info["query_runtime"].startswith("onnx"), info["query_runtime"]
    from mmsearch.runtime import QueryRuntime

    runtime = QueryRuntime.load(info["query_runtime"][len("onnx (") : -1])
    assert runtime.meta["tokenizer"]["kind"] == "hf-tokenizers"
    # the tower ignores padding: a short query is fed only up to its last token
    assert runtime.meta["towers"]["text"]["trim"] == "pad"
    short = runtime.text_input([QUERY])
    assert short.shape[1] == runtime.count_tokens(QUERY) < runtime.context_length
    answers = {}
    for runtime in ("onnx", "torch"):
        monkeypatch.setenv(config.ENV_QUERY_RUNTIME, runtime)
        answers[runtime] = [
            [(h["id"], round(h["score"], 4)) for h in _hits(idx, QUERY, "--target", target)]
            for target in ("text", "image")
        ]
    for got, want in zip(answers["onnx"], answers["torch"], strict=True):
        assert [i for i, _ in got] == [i for i, _ in want]
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], atol=2e-4)
