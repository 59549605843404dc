"""OpenCLIP dual encoder: resolve a model, load it (GPU when present), encode images and texts.

Model references accepted everywhere a model is named (``--model``/``--pretrained``):

* a built-in open_clip architecture and a pretrained tag: ``ViT-B-32`` + ``laion2b_s34b_b79k``;
* a built-in architecture and a checkpoint file: ``ViT-B-32`` + ``/path/to/weights.safetensors``;
* ``hf-hub:org/repo`` (config and weights from the Hugging Face hub, cached);
* ``local-dir:/path`` or a plain directory path: a directory holding ``open_clip_config.json``
  and a checkpoint, such as the one ``mmsearch finetune`` writes;
* ``mmsearch-tiny``: a tiny seeded random-initialised model for tests and offline smoke runs.

Resolving a reference (:func:`resolve_model`) is cheap and loads nothing, so an index can
refuse a mismatched model before any weights are read.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED, ENV_DEVICE, TINY_MODEL
from .errors import ModelError, WeightsUnavailableError

logger = logging.getLogger(__name__)

_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_CONFIG_DIR)

#: Seed of the tiny model's random initialisation: the same weights in every run.
TINY_SEED = 0
#: Files of a model directory.
MODEL_CONFIG_FILE = "open_clip_config.json"
MODEL_WEIGHTS_FILE = "open_clip_model.safetensors"
MODEL_META_FILE = "mmsearch_model.json"
#: Host probed before a download, so that no network fails in milliseconds, not minutes.
_HUB_HOST = ("huggingface.co", 443)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model reference.

    Attributes:
        model: the name to pass to open_clip (``ViT-B-32``, ``local-dir:/abs/dir``, ...).
        pretrained: tag or checkpoint path, or None (random init, or weights in the dir).
        identity: a string naming these exact weights; two specs with the same identity
            produce the same embeddings. Stored in the catalog.
        display: a short human-readable name for messages.
    """

    model: str
    pretrained: str | None
    identity: str
    display: str


def _file_fingerprint(path: Path) -> str:
    """Cheap, stable fingerprint of a large file: size plus hash of its first and last MiB."""
    h = hashlib.blake2b(digest_size=8)
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()


def _find_checkpoint(directory: Path) -> Path | None:
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    return None


def _resolve_dir(directory: Path) -> ModelSpec:
    directory = directory.expanduser().resolve()
    if not (directory / MODEL_CONFIG_FILE).is_file():
        raise ModelError(f"{directory} is not a model directory (no {MODEL_CONFIG_FILE} in it)")
    meta_path = directory / MODEL_META_FILE
    fingerprint = None
    if meta_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            fingerprint = json.loads(meta_path.read_text()).get("fingerprint")
    if not fingerprint:
        checkpoint = _find_checkpoint(directory)
        if checkpoint is None:
            raise ModelError(f"{directory} holds no checkpoint (*.safetensors, *.bin, *.pth)")
        fingerprint = _file_fingerprint(checkpoint)
    return ModelSpec(
        model=f"local-dir:{directory}",
        pretrained=None,
        identity=f"dir:{fingerprint}",
        display=f"{directory.name} ({fingerprint[:12]})",
    )


def _unknown_model(name: str) -> ModelError:
    choices = open_clip.list_models()
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ModelError(
        f"unknown model {name!r}: not an open_clip architecture, nor a model directory.{hint} "
        "See `python -c 'import open_clip; print(open_clip.list_models())'`."
    )


def resolve_model(
    model: str | os.PathLike | None = None, pretrained: str | None = None
) -> ModelSpec:
    """Resolve a model reference without loading any weights.

    Args:
        model: architecture name, ``hf-hub:``/``local-dir:`` reference or model directory.
            None means the default (``ViT-B-32``).
        pretrained: pretrained tag or checkpoint file for a built-in architecture. None
            picks the default tag (the first one open_clip lists for the architecture).

    Returns:
        The resolved :class:`ModelSpec`.

    Raises:
        ModelError: the name is unknown, the tag does not exist, or the path is not usable.
    """
    name = str(model) if model is not None else DEFAULT_MODEL
    if name.startswith("hf-hub:"):
        return ModelSpec(name, None, name, name)
    if name.startswith("local-dir:"):
        return _resolve_dir(Path(name[len("local-dir:") :]))
    if os.sep in name or name.startswith(".") or Path(name).is_dir():
        if not Path(name).expanduser().is_dir():
            raise ModelError(f"model directory {name} does not exist")
        return _resolve_dir(Path(name))
    if name == TINY_MODEL:
        if pretrained:
            raise ModelError(f"{TINY_MODEL} is random-initialised; it takes no --pretrained")
        return ModelSpec(name, None, f"{name}:random-seed{TINY_SEED}", name)
    if name not in open_clip.list_models():
        raise _unknown_model(name)
    if pretrained is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        if name == DEFAULT_MODEL:
            pretrained = DEFAULT_PRETRAINED
        elif tags:
            pretrained = tags[0]
        else:
            raise ModelError(f"{name} has no known pretrained weights: pass --pretrained FILE")
    if Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser().resolve()
        fingerprint = _file_fingerprint(path)
        return ModelSpec(name, str(path), f"{name}:file:{fingerprint}", f"{name} ({path.name})")
    if not open_clip.get_pretrained_cfg(name, pretrained):
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ModelError(
            f"{pretrained!r} is neither a pretrained tag of {name} nor a checkpoint file "
            f"(known tags: {tags})"
        )
    return ModelSpec(name, pretrained, f"{name}:{pretrained}", f"{name} ({pretrained})")


def _hub_reachable(timeout: float = 3.0) -> bool:
    try:
        socket.create_connection(_HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _weights_cached(spec: ModelSpec) -> bool:
    """True when the weights of a tag or hub model are in the local cache already."""
    from huggingface_hub import try_to_load_from_cache

    if spec.model.startswith("hf-hub:"):
        repo = spec.model[len("hf-hub:") :]
        return isinstance(try_to_load_from_cache(repo, "open_clip_config.json"), str)
    cfg = open_clip.get_pretrained_cfg(spec.model, spec.pretrained or "")
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub)
        names = (
            [filename]
            if filename
            else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        )
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        return any(isinstance(try_to_load_from_cache(repo, n), str) for n in names)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def _check_weights_available(spec: ModelSpec) -> None:
    """Fail fast, before open_clip retries a download for a minute."""
    needs_download = spec.model.startswith("hf-hub:") or (
        spec.pretrained is not None and not Path(spec.pretrained).is_file()
    )
    if not needs_download or _weights_cached(spec):
        return
    if _offline():
        raise WeightsUnavailableError(
            spec.model, spec.pretrained or "hub", "not cached and HF_HUB_OFFLINE is set"
        )
    if not _hub_reachable():
        raise WeightsUnavailableError(
            spec.model, spec.pretrained or "hub", "not cached and the model hub cannot be reached"
        )


@contextlib.contextmanager
def _quiet_random_init(spec: ModelSpec) -> Any:
    """open_clip warns (on the root logger) that the tiny model has no pretrained weights;
    for mmsearch-tiny that is the point, so the warning is noise."""
    if spec.model != TINY_MODEL:
        yield
        return
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


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
        _check_weights_available(spec)
        dev = pick_device(device)
        try:
            with torch.random.fork_rng(devices=[]), _quiet_random_init(spec):
                torch.manual_seed(TINY_SEED)
                net, _, preprocess = open_clip.create_model_and_transforms(
                    spec.model, pretrained=spec.pretrained, device=dev
                )
            tokenizer = open_clip.get_tokenizer(spec.model)
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            raise ModelError(f"cannot load model {spec.display}: {exc}") from exc
        model_cfg = _model_cfg(spec)
        logger.info("loaded %s on %s", spec.display, dev)
        return cls(spec, net, preprocess, tokenizer, dev, model_cfg)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.inference_mode()
    def encode_image_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Encode a batch of already preprocessed images, shape (B, 3, H, W)."""
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
            return len(inner(text)["input_ids"])
        return 0

    def is_truncated(self, text: str) -> bool:
        """True when ``text`` is longer than the model's context and will be cut."""
        return self.count_tokens(text) > self.context_length

    @property
    def image_size(self) -> int:
        """The side, in pixels, of the square the image tower sees."""
        size = self.preprocess_cfg().get("size", 224)
        return int(max(size)) if isinstance(size, (tuple, list)) else int(size)

    def preprocess_cfg(self) -> dict[str, Any]:
        """The image preprocessing the model was configured with (size, mean, std ...)."""
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
        config = {"model_cfg": self.model_cfg, "preprocess_cfg": self.preprocess_cfg()}
        (out / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2, default=list))
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}
        tmp = out / (MODEL_WEIGHTS_FILE + ".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, out / MODEL_WEIGHTS_FILE)
        h = hashlib.blake2b(digest_size=16)
        with (out / MODEL_WEIGHTS_FILE).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        info = {"fingerprint": h.hexdigest(), "base": self.spec.identity, **(meta or {})}
        (out / MODEL_META_FILE).write_text(json.dumps(info, indent=2))
        return _resolve_dir(out)


def _normalise(feats: torch.Tensor) -> np.ndarray:
    feats = feats.float()
    feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return feats.cpu().numpy().astype(np.float32, copy=False)


def _model_cfg(spec: ModelSpec) -> dict[str, Any]:
    """The architecture config of a spec, to be written next to fine-tuned weights."""
    if spec.model.startswith("local-dir:"):
        path = Path(spec.model[len("local-dir:") :]) / MODEL_CONFIG_FILE
        return dict(json.loads(path.read_text())["model_cfg"])
    if spec.model.startswith("hf-hub:"):
        from open_clip.factory import _get_hf_config

        return dict(_get_hf_config(spec.model[len("hf-hub:") :])["model_cfg"])
    cfg = open_clip.get_model_config(spec.model)
    if cfg is None:
        raise ModelError(f"no architecture config for {spec.model}")
    return dict(cfg)
