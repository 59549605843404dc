"""Tiny random-initialised multilingual models, built offline for the tests.

* :func:`build_tiny_xlmr`: an open_clip model directory whose text tower is a 2-layer,
  32-wide XLM-RoBERTa from Hugging Face transformers (open_clip's ``HFTextEncoder``, as
  in ``xlm-roberta-base-ViT-B-32``), with a SentencePiece-style Unigram tokenizer trained
  here with the ``tokenizers`` library on English and Chinese shape captions. The
  directory has the layout the README documents: ``open_clip_config.json`` with
  ``hf_model_name`` ``"."``, the transformer's ``config.json``, the tokenizer files and
  ``open_clip_model.safetensors``.
* :func:`build_tiny_cn_clip`: a Chinese-CLIP model directory (``cn_clip_config.json``,
  ``cn_clip_model.safetensors``): a one-block ViT and a 2-layer RoBERTa over the
  vocabulary cn_clip ships.

Nothing is downloaded; the same seed gives the same weights.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

COLOURS = {"red": "红色", "blue": "蓝色", "green": "绿色", "yellow": "黄色", "white": "白色"}
SHAPES = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形"}
NUMBERS = {"one": "一个", "two": "两个", "three": "三个"}


def captions() -> list[tuple[str, str]]:
    """English/Chinese caption pairs over colours, shapes and counts (deterministic)."""
    pairs = []
    for (n_en, n_zh), (c_en, c_zh), (s_en, s_zh) in itertools.product(
        NUMBERS.items(), COLOURS.items(), SHAPES.items()
    ):
        pairs.append((f"{n_en} {c_en} {s_en}", f"{n_zh}{c_zh}的{s_zh}"))
    for (c1, z1), (s1, t1) in itertools.product(COLOURS.items(), SHAPES.items()):
        pairs.append((f"a {c1} {s1} left of a blue square", f"一个{z1}{t1}在一个蓝色正方形的左边"))
    return pairs


def _train_tokenizer(lines: list[str], vocab_size: int) -> object:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids 0-4
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=special, unk_token="<unk>"
    )
    tok.train_from_iterator(lines, trainer)
    return tok


def build_tiny_xlmr(out: Path, *, context_length: int = 24, seed: int = 0) -> Path:
    """Write a tiny open_clip model with an XLM-R text tower into ``out``; return it."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    from tokenizers import processors
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    lines = [text for pair in captions() for text in pair]
    tok = _train_tokenizer(lines * 3, vocab_size=400)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    fast = XLMRobertaTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
    )
    fast.save_pretrained(out)
    hf_cfg = XLMRobertaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=context_length + 4,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    hf_cfg.save_pretrained(out)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32,
            "layers": 1,
            "width": 32,
            "head_width": 16,
            "patch_size": 8,
        },
        "text_cfg": {
            "hf_model_name": ".",
            "hf_tokenizer_name": ".",
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": "linear",
            "context_length": context_length,
        },
    }
    config = {"model_cfg": model_cfg, "preprocess_cfg": {}}
    (out / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    text_cfg = {**model_cfg["text_cfg"], "hf_model_name": str(out), "hf_model_pretrained": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CustomTextCLIP(**{**model_cfg, "text_cfg": text_cfg})
        # transformers initialises with std 0.02: every text would embed alike; wider
        # random weights keep texts apart so that a random model still ranks sensibly.
        for name, p in model.text.named_parameters():
            if p.dim() == 2 and "LayerNorm" not in name:
                torch.nn.init.normal_(p, std=0.3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out


CN_CLIP_TINY = {
    "embed_dim": 32,
    "image_resolution": 32,
    "vision_layers": 1,
    "vision_width": 64,
    "vision_patch_size": 8,
    "vision_head_width": 32,
    "vocab_size": 21128,
    "text_attention_probs_dropout_prob": 0.1,
    "text_hidden_act": "gelu",
    "text_hidden_dropout_prob": 0.1,
    "text_hidden_size": 32,
    "text_initializer_range": 0.3,
    "text_intermediate_size": 64,
    "text_max_position_embeddings": 64,
    "text_num_attention_heads": 2,
    "text_num_hidden_layers": 2,
    "text_type_vocab_size": 2,
    "context_length": 24,
}


def build_tiny_cn_clip(out: Path, *, seed: int = 0) -> Path:
    """Write a tiny random Chinese-CLIP model directory into ``out``; return it."""
    import torch

    from mmsearch import chinese_clip
    from mmsearch.models import CN_CLIP_CONFIG_FILE, CN_CLIP_WEIGHTS_FILE

    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _, _ = chinese_clip.load(CN_CLIP_TINY, None, torch.device("cpu"))
    chinese_clip.save(model, out, CN_CLIP_CONFIG_FILE, CN_CLIP_WEIGHTS_FILE)
    return out


def build_tiny_nllb_style(out: Path, xlmr_dir: Path, *, seed: int = 0) -> Path:
    """An open_clip model whose text tower is the encoder of a tiny M2M100 (NLLB's
    architecture: an encoder-decoder, of which open_clip keeps the encoder; CLS pooling,
    linear projection, as in ``nllb-clip-base``). The tokenizer is the tiny XLM-R one
    (a real NLLB tokenizer also puts a language code first)."""
    import shutil

    import open_clip
    import torch
    from safetensors.torch import save_file
    from transformers import M2M100Config

    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(xlmr_dir / name, out)
    vocab = json.loads((xlmr_dir / "config.json").read_text())["vocab_size"]
    M2M100Config(
        vocab_size=vocab,
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    ).save_pretrained(out)
    model_cfg = {
        "embed_dim": 32,
        "vision_cfg": {
            "image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8
        },
        "text_cfg": {
            "hf_model_name": ".",
            "hf_tokenizer_name": ".",
            "hf_proj_type": "linear",
            "hf_pooler_type": "cls_pooler",
            "context_length": 24,
        },
    }  # fmt: skip
    (out / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=2))
    text_cfg = {**model_cfg["text_cfg"], "hf_model_name": str(out), "hf_model_pretrained": False}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.CustomTextCLIP(**{**model_cfg, "text_cfg": text_cfg})
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    return out
