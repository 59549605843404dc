"""Chinese-CLIP (the ``cn_clip`` package) behind the interface of an open_clip model.

cn_clip's ``CLIP`` (a ViT or ResNet image tower, a Chinese RoBERTa text tower and a BERT
WordPiece tokenizer over the vocabulary cn_clip ships) is wrapped so that the encoder,
fine-tuning and the ONNX export use it as they use an open_clip model:
``encode_image(x, normalize=...)``, ``encode_text(ids, normalize=...)``, ``logit_scale``,
``lock_image_tower``/``lock_text_tower``. The tokenizer gives open_clip-style id tensors,
``[CLS] ids[:L-2] [SEP]`` zero-padded to the context length, like ``cn_clip.clip.tokenize``.

cn_clip is imported lazily (it is an optional extra: ``mmsearch[multilingual]``); a model
of this kind is named ``cn-clip:ViT-B-16`` or ``cn-clip:/dir`` (see :mod:`mmsearch.models`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import ModelError

#: CLIP's image normalisation, which cn_clip's ``image_transform`` uses.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
#: cn_clip's BERT WordPiece cuts longer words to [UNK] after this many characters.
MAX_WORD_CHARS = 200
#: Keys of cn_clip's config that are not arguments of its CLIP class.
_NOT_MODEL_ARGS = ("context_length",)


def _cn_clip() -> Any:
    try:
        import cn_clip.clip
    except ImportError as exc:
        raise ModelError(
            f"Chinese-CLIP models need the cn_clip package ({exc}): "
            "pip install 'mmsearch[multilingual]'"
        ) from exc
    return cn_clip.clip


class ChineseClipTokenizer:
    """cn_clip's BERT tokenizer with open_clip's calling convention.

    Args:
        context_length: token positions of the text tower (cn_clip's models: 52).
    """

    def __init__(self, context_length: int) -> None:
        clip = _cn_clip()
        self._tokenizer = clip._tokenizer  # cn_clip's FullTokenizer over its vocab.txt
        self.context_length = int(context_length)
        vocab = self._tokenizer.vocab
        self.cls_token_id = int(vocab["[CLS]"])
        self.sep_token_id = int(vocab["[SEP]"])
        self.pad_token_id = int(vocab["[PAD]"])

    @property
    def vocab_file(self) -> Path:
        """The vocabulary cn_clip ships (one WordPiece a line)."""
        from cn_clip.clip.bert_tokenizer import default_vocab

        return Path(default_vocab())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without [CLS]/[SEP] and without truncation."""
        tok = self._tokenizer
        return [int(i) for i in tok.convert_tokens_to_ids(tok.tokenize(text))]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Token ids, (N, context_length) int64: what ``cn_clip.clip.tokenize`` gives."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.full((len(texts), self.context_length), self.pad_token_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.cls_token_id, *self.encode(text)[: self.context_length - 2]]
            ids.append(self.sep_token_id)
            out[row, : len(ids)] = torch.tensor(ids)
        return out


class ChineseClip(torch.nn.Module):
    """A cn_clip ``CLIP`` with the methods mmsearch calls on an open_clip model.

    Attributes:
        clip: the cn_clip model (its state dict is what a checkpoint holds).
        config: its architecture config (see :func:`mmsearch.models.cn_clip_config`).
    """

    def __init__(self, clip: torch.nn.Module, config: dict[str, Any]) -> None:
        super().__init__()
        self.clip = clip
        self.config = dict(config)

    @property
    def logit_scale(self) -> torch.nn.Parameter:
        return self.clip.logit_scale

    @property
    def image_size(self) -> int:
        return int(self.config["image_resolution"])

    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.clip.encode_image(image)
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        feats = self.clip.encode_text(text)
        return torch.nn.functional.normalize(feats, dim=-1) if normalize else feats

    def lock_image_tower(self, unlocked_groups: int = 0, freeze_bn_stats: bool = False) -> None:
        """Freeze the image tower but its last ``unlocked_groups`` transformer blocks (a
        ResNet tower is frozen whole)."""
        visual = self.clip.visual
        for p in visual.parameters():
            p.requires_grad = False
        blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
        if unlocked_groups and blocks is not None:
            for block in list(blocks)[-unlocked_groups:]:
                for p in block.parameters():
                    p.requires_grad = True
            for p in (*visual.ln_post.parameters(), visual.proj):
                p.requires_grad = True

    def lock_text_tower(self, unlocked_layers: int = 0, freeze_layer_norm: bool = True) -> None:
        """Freeze the text tower but its last ``unlocked_layers`` BERT layers (and the
        projection, which belongs to it)."""
        bert = self.clip.bert
        for name, p in bert.named_parameters():
            p.requires_grad = (not freeze_layer_norm) and "LayerNorm" in name.split(".")
        if unlocked_layers:
            for layer in list(bert.encoder.layer)[-unlocked_layers:]:
                for p in layer.parameters():
                    p.requires_grad = True
            self.clip.text_projection.requires_grad = True
        else:
            self.clip.text_projection.requires_grad = False

    def preprocess_cfg(self) -> dict[str, Any]:
        """cn_clip's ``image_transform``: a bicubic resize to the square (no crop), CLIP's
        normalisation — in open_clip's preprocess-config terms."""
        size = self.image_size
        return {
            "size": (size, size),
            "mode": "RGB",
            "mean": MEAN,
            "std": STD,
            "interpolation": "bicubic",
            "resize_mode": "squash",
            "fill_color": 0,
        }


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A checkpoint's weights: our safetensors, or cn_clip's released ``.pt`` (a dict with
    ``state_dict``, keys prefixed ``module.`` by its distributed training)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    raw = torch.load(path, map_location="cpu", weights_only=True)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    return {
        (k[len("module.") :] if k.startswith("module.") else k): v
        for k, v in state.items()
        if "bert.pooler" not in k  # cn_clip's BERT has no pooler; its checkpoints may
    }


def load(config: dict[str, Any], checkpoint: Path | None, device: torch.device) -> Any:
    """Build a Chinese-CLIP model and its transforms.

    Args:
        config: the architecture config (:func:`mmsearch.models.cn_clip_config`).
        checkpoint: weights (``.safetensors`` or cn_clip's ``.pt``); None: random init.
        device: where the model runs.

    Returns:
        ``(model, preprocess, tokenizer)``: a :class:`ChineseClip` in eval mode, the
        image transform and a :class:`ChineseClipTokenizer`.

    Raises:
        ModelError: cn_clip is missing, the config is wrong or the checkpoint does not fit.
    """
    clip = _cn_clip()
    args = {k: v for k, v in config.items() if k not in _NOT_MODEL_ARGS}
    try:
        net = clip.model.CLIP(**args)
    except TypeError as exc:
        raise ModelError(f"bad Chinese-CLIP config: {exc}") from exc
    if checkpoint is not None:
        try:
            state = _state_dict(checkpoint)
            missing, unexpected = net.load_state_dict(state, strict=False)
        except (OSError, RuntimeError, ValueError) as exc:
            raise ModelError(f"cannot load Chinese-CLIP weights {checkpoint}: {exc}") from exc
        if missing or unexpected:
            raise ModelError(
                f"Chinese-CLIP weights {checkpoint} do not fit the config: missing "
                f"{list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
            )
    model = ChineseClip(net.float(), config).to(device).eval()
    preprocess = clip.image_transform(int(config["image_resolution"]))
    tokenizer = ChineseClipTokenizer(int(config["context_length"]))
    return model, preprocess, tokenizer


def save(model: ChineseClip, directory: Path, config_file: str, weights_file: str) -> Path:
    """Write the config and weights of ``model`` into ``directory``; returns the weights."""
    from safetensors.torch import save_file

    (directory / config_file).write_text(json.dumps(model.config, indent=2))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.clip.state_dict().items()}
    tmp = directory / (weights_file + ".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, directory / weights_file)
    return directory / weights_file
