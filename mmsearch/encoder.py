"""The OpenCLIP dual encoder — the only module (with fine-tuning and export) that imports
torch: load a model (GPU when present), encode images and texts, save a model directory.

Chinese-CLIP models (``cn-clip:…``) load through :mod:`mmsearch.chinese_clip`, which gives
them the interface of an open_clip model; open_clip models whose text tower is a Hugging
Face transformer load their config and tokenizer from the model directory.

Which model a reference names is decided without torch in :mod:`mmsearch.models`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from .config import ENV_DEVICE, TINY_MODEL
from .errors import ModelError
from .models import (
    CN_CLIP_CONFIG_FILE,
    CN_CLIP_PREFIX,
    CN_CLIP_WEIGHTS_FILE,
    CONFIG_DIR,
    MODEL_CONFIG_FILE,
    MODEL_META_FILE,
    MODEL_WEIGHTS_FILE,
    TINY_SEED,
    ModelSpec,
    _find_checkpoint,
    architecture_config,
    check_weights_available,
    hf_text_paths,
    model_record,
    resolve_dir,
    resolve_model,
)

logger = logging.getLogger(__name__)

open_clip.add_model_config(CONFIG_DIR)


class _DropOpenClipWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.WARNING and "open_clip" in record.pathname)


@contextlib.contextmanager
def _quiet_random_init(spec: ModelSpec) -> Iterator[None]:
    """open_clip warns (on the root logger) that the tiny model has no pretrained weights;
    for mmsearch-tiny that is the point, so the warning is noise. Only open_clip's own
    warnings are dropped, only while it loads that model; every other record passes."""
    if spec.model != TINY_MODEL:
        yield
        return
    quiet = _DropOpenClipWarnings()
    logging.root.addFilter(quiet)
    try:
        yield
    finally:
        logging.root.removeFilter(quiet)


#: torch.nn.init functions open_clip's and torch's modules initialise parameters with.
_INIT_FUNCTIONS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_", "ones_", "eye_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
)  # fmt: skip


@contextlib.contextmanager
def _no_random_init(spec: ModelSpec) -> Iterator[None]:
    """Skip the random initialisation of a model whose every parameter is then loaded
    from a checkpoint (open_clip loads full checkpoints with ``strict=True``: a missing
    parameter is an error, not a random one). For ViT-B-32 on two CPU cores the
    initialisation costs ~2.1 of the 2.4 s build, only to be overwritten. The random
    tiny model and architectures without weights are initialised as always."""
    if spec.pretrained is None and not spec.model.startswith("local-dir:"):
        yield
        return
    import torch.nn.modules.activation
    import torch.nn.modules.transformer

    # torch.nn.init, and the modules that imported its functions by name (attention's).
    holders = (torch.nn.init, torch.nn.modules.activation, torch.nn.modules.transformer)
    saved = [
        (holder, name, getattr(holder, name))
        for holder in holders
        for name in _INIT_FUNCTIONS
        if getattr(holder, name, None) is getattr(torch.nn.init, name)
    ]

    def keep(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return tensor

    for holder, name, _ in saved:
        setattr(holder, name, keep)
    try:
        yield
    finally:
        for holder, name, fn in saved:
            setattr(holder, name, fn)


def pick_device(device: str | None = None) -> torch.device:
    """The device to encode on: the argument, else ``$MMSEARCH_DEVICE``, else CUDA if present."""
    name = device or os.environ.get(ENV_DEVICE)
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Encoder:
    """A loaded OpenCLIP model with its preprocessing and tokenizer.

    Create with :meth:`Encoder.load`. Embeddings are L2-normalised float32 numpy arrays.

    Attributes:
        spec: the resolved model reference.
        model: the open_clip model (eval mode).
        preprocess: the evaluation transform, PIL image → tensor.
        tokenizer: the model's tokenizer.
        device: where the model runs.
        dim: embedding dimension.
        context_length: the text tower's maximum number of tokens.
        model_cfg: the open_clip architecture config (for saving a fine-tuned copy).
    """

    def __init__(
        self,
        spec: ModelSpec,
        model: torch.nn.Module,
        preprocess: Any,
        tokenizer: Any,
        device: torch.device,
        model_cfg: dict[str, Any],
    ) -> None:
        self.spec = spec
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.model_cfg = model_cfg
        self.dim = int(model_cfg.get("embed_dim") or model.text_projection.shape[1])
        self.context_length = int(getattr(tokenizer, "context_length", None) or 77)

    @classmethod
    def load(
        cls,
        model: str | os.PathLike | ModelSpec | None = None,
        pretrained: str | None = None,
        device: str | None = None,
    ) -> Encoder:
        """Load a model.

        Args:
            model: a model reference (see module docs) or an already resolved spec.
            pretrained: pretrained tag or checkpoint file (built-in architectures only).
            device: ``cpu``, ``cuda``, ``cuda:1`` ...; default CUDA when available.

        Returns:
            The loaded encoder.

        Raises:
            ModelError: unknown model or unreadable checkpoint.
            WeightsUnavailableError: weights are not cached and cannot be downloaded.
        """
        spec = model if isinstance(model, ModelSpec) else resolve_model(model, pretrained)
        check_weights_available(spec)
        dev = pick_device(device)
        if spec.model.startswith(CN_CLIP_PREFIX):
            return cls._load_cn_clip(spec, dev)
        model_cfg = _model_cfg(spec)
        hf_paths = hf_text_paths(spec, model_cfg)
        try:
            with torch.random.fork_rng(devices=[]), _quiet_random_init(spec), _no_random_init(spec):
                torch.manual_seed(TINY_SEED)
                net, _, preprocess = open_clip.create_model_and_transforms(
                    spec.model, pretrained=spec.pretrained, device=dev,
                    **_hf_text_overrides(model_cfg, hf_paths),
                )  # fmt: skip
            tokenizer = _hf_tokenizer(model_cfg, hf_paths) or open_clip.get_tokenizer(spec.model)
        except (RuntimeError, ValueError, OSError, KeyError, ImportError) as exc:
            raise ModelError(f"cannot load model {spec.display}: {exc}") from exc
        logger.info("loaded %s on %s", spec.display, dev)
        return cls(spec, net, preprocess, tokenizer, dev, model_cfg)

    @classmethod
    def _load_cn_clip(cls, spec: ModelSpec, dev: torch.device) -> Encoder:
        """A Chinese-CLIP model (:mod:`mmsearch.chinese_clip`): its released architecture
        and checkpoint file, or a model directory."""
        from . import chinese_clip

        model_cfg = architecture_config(spec.model)
        checkpoint = Path(spec.pretrained) if spec.pretrained else None
        if checkpoint is None:
            directory = Path(spec.model[len(CN_CLIP_PREFIX) :])
            checkpoint = directory / CN_CLIP_WEIGHTS_FILE
            if not checkpoint.is_file():
                checkpoint = _find_checkpoint(directory)
        net, preprocess, tokenizer = chinese_clip.load(model_cfg, checkpoint, dev)
        logger.info("loaded %s on %s", spec.display, dev)
        return cls(spec, net, preprocess, tokenizer, dev, model_cfg)

    @property
    def engine(self) -> str:
        """What encodes: ``torch:`` and the device type (``torch:cpu``, ``torch:cuda``)."""
        return f"torch:{self.device.type}"

    def record(self) -> dict[str, Any]:
        """What an index remembers of its model (see :func:`mmsearch.models.model_record`)."""
        return model_record(self.spec, self.dim)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_image_tensors(self, batch: torch.Tensor | Sequence[torch.Tensor]) -> np.ndarray:
        """Encode already preprocessed images: a (B, 3, H, W) tensor or B (3, H, W) ones."""
        if not isinstance(batch, torch.Tensor):
            batch = torch.stack(list(batch))
        with self._autocast():
            feats = self.model.encode_image(batch.to(self.device, non_blocking=True))
        return _normalise(feats)

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Encode PIL images (RGB). Returns (N, dim) float32, rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = torch.stack([self.preprocess(img.convert("RGB")) for img in images])
        return self.encode_image_tensors(batch)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts (cut to the context length). Returns (N, dim) float32, unit rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            feats = self.model.encode_text(tokens)
        return _normalise(feats)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` including start/end markers (no truncation)."""
        inner = getattr(self.tokenizer, "tokenizer", None)  # HF tokenizers wrap one
        if hasattr(self.tokenizer, "encode"):
            return len(self.tokenizer.encode(text)) + 2
        if inner is not None:
            clean = getattr(self.tokenizer, "clean_fn", None) or (lambda t: t)
            return len(inner(clean(text))["input_ids"])
        return 0

    def is_truncated(self, text: str) -> bool:
        """True when ``text`` is longer than the model's context and will be cut."""
        return self.count_tokens(text) > self.context_length

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature, ``exp(logit_scale)``: cosine similarities times
        this are the logits of its contrastive softmax (100 for CLIP; 1/0.07 at init)."""
        scale = getattr(self.model, "logit_scale", None)
        return float(scale.detach().exp()) if scale is not None else 100.0

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the square the image tower sees."""
        size = self.preprocess_cfg().get("size", 224)
        return int(max(size)) if isinstance(size, (tuple, list)) else int(size)

    def preprocess_cfg(self) -> dict[str, Any]:
        """The image preprocessing the model was configured with (size, mean, std ...)."""
        own = getattr(self.model, "preprocess_cfg", None)  # a Chinese-CLIP model has its own
        if callable(own):
            return dict(own())
        return dict(open_clip.get_model_preprocess_cfg(self.model))

    def save(self, out_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> ModelSpec:
        """Write a self-contained model directory that :meth:`load` and ``--model DIR`` accept.

        The directory holds ``open_clip_config.json`` (architecture + preprocessing),
        ``open_clip_model.safetensors`` and ``mmsearch_model.json`` (a content fingerprint
        that becomes the model's identity, plus ``meta``).
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if self.spec.model.startswith(CN_CLIP_PREFIX):
            from . import chinese_clip

            weights = chinese_clip.save(self.model, out, CN_CLIP_CONFIG_FILE, CN_CLIP_WEIGHTS_FILE)
        else:
            weights = out / MODEL_WEIGHTS_FILE
            model_cfg = self._save_hf_text(out)
            config = {"model_cfg": model_cfg, "preprocess_cfg": self.preprocess_cfg()}
            (out / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2, default=list))
            state = {
                k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()
            }
            tmp = out / (MODEL_WEIGHTS_FILE + ".tmp")
            save_file(state, str(tmp))
            os.replace(tmp, weights)
        h = hashlib.blake2b(digest_size=16)
        with weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        info = {"fingerprint": h.hexdigest(), "base": self.spec.identity, **(meta or {})}
        (out / MODEL_META_FILE).write_text(json.dumps(info, indent=2))
        return resolve_dir(out)

    def _save_hf_text(self, out: Path) -> dict[str, Any]:
        """A Hugging Face text tower's config and tokenizer files go into the directory
        itself (``hf_model_name`` ``"."``), so that it loads offline wherever it is moved."""
        text_cfg = self.model_cfg.get("text_cfg") or {}
        text = getattr(self.model, "text", None)
        if not text_cfg.get("hf_model_name") or not hasattr(text, "config"):
            return self.model_cfg
        text.config.save_pretrained(out)
        inner = getattr(self.tokenizer, "tokenizer", None)
        if inner is not None and hasattr(inner, "save_pretrained"):
            inner.save_pretrained(out)
        local = {"hf_model_name": ".", "hf_tokenizer_name": "."}
        return {**self.model_cfg, "text_cfg": {**text_cfg, **local}}


def _hf_text_overrides(model_cfg: dict[str, Any], paths: dict[str, str]) -> dict[str, Any]:
    """open_clip reads a model directory's config itself and hands ``hf_model_name`` to
    transformers as it stands (relative to the working directory); the text config is
    passed again with the names made absolute. The directory's checkpoint holds the text
    weights, so transformers builds the tower from its config alone."""
    if not paths:
        return {}
    text_cfg = {**model_cfg["text_cfg"], **paths, "hf_model_pretrained": False}
    return {"text_cfg": text_cfg}


def _hf_tokenizer(model_cfg: dict[str, Any], paths: dict[str, str]) -> Any:
    """open_clip's HFTokenizer on the local tokenizer directory (None: not such a model)."""
    if "hf_tokenizer_name" not in paths:
        return None
    text_cfg = model_cfg["text_cfg"]
    return open_clip.tokenizer.HFTokenizer(
        paths["hf_tokenizer_name"],
        context_length=text_cfg.get("context_length", open_clip.tokenizer.DEFAULT_CONTEXT_LENGTH),
        tokenizer_mode=text_cfg.get("tokenizer_mode"),
        **text_cfg.get("tokenizer_kwargs", {}),
    )


def _normalise(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32, copy=False)


def _model_cfg(spec: ModelSpec) -> dict[str, Any]:
    """The architecture config of a spec, to be written next to fine-tuned weights."""
    if spec.model.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config  # only hub models need it

        return dict(_get_hf_config(spec.model[len("hf-hub:") :])["model_cfg"])
    return architecture_config(spec.model)
