"""Models without torch: what a model reference names, and whether its weights are here.

Model references accepted everywhere a model is named (``--model``/``--pretrained``):

* a built-in open_clip architecture and a pretrained tag: ``ViT-B-32`` + ``laion2b_s34b_b79k``;
* a built-in architecture and a checkpoint file: ``ViT-B-32`` + ``/path/to/weights.safetensors``;
* ``hf-hub:org/repo`` (config and weights from the Hugging Face hub, cached);
* ``local-dir:/path`` or a plain directory path: a directory holding ``open_clip_config.json``
  and a checkpoint, such as the one ``mmsearch finetune`` writes;
* ``mmsearch-tiny``: a tiny seeded random-initialised model for tests and offline smoke runs;
* ``cn-clip:ViT-B-16`` (a Chinese-CLIP architecture of the ``cn_clip`` package, weights from
  ``--pretrained FILE`` or cn_clip's cache ``~/.cache/clip``) or ``cn-clip:/path`` — or a
  plain directory holding ``cn_clip_config.json`` and a checkpoint.

A model directory whose text tower comes from Hugging Face transformers (open_clip's
multilingual models: ``text_cfg.hf_model_name``) may name its transformer config and
tokenizer by a path relative to the directory (``"."``: the files lie in it), so that the
directory works offline wherever it is moved (:func:`hf_text_paths`).

Resolving a reference (:func:`resolve_model`) is cheap, loads no weights and imports no torch:
open_clip's architecture configs (JSON files) and its table of pretrained tags (a module of
plain data) are read without importing the open_clip package, whose import costs torch —
seconds — so an index can refuse a mismatched model before anything heavy happens.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import socket
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DEFAULT_MODEL, DEFAULT_PRETRAINED, TINY_MODEL
from .errors import ModelError, WeightsUnavailableError

#: Architecture configs shipped with mmsearch (the tiny test model).
CONFIG_DIR = Path(__file__).parent / "model_configs"
#: Seed of the tiny model's random initialisation: the same weights in every run.
TINY_SEED = 0
#: Files of a model directory.
MODEL_CONFIG_FILE = "open_clip_config.json"
MODEL_WEIGHTS_FILE = "open_clip_model.safetensors"
MODEL_META_FILE = "mmsearch_model.json"
#: A Chinese-CLIP model reference (``cn-clip:ViT-B-16`` or ``cn-clip:/dir``) and its files.
CN_CLIP_PREFIX = "cn-clip:"
CN_CLIP_CONFIG_FILE = "cn_clip_config.json"
CN_CLIP_WEIGHTS_FILE = "cn_clip_model.safetensors"
#: cn_clip's released architectures: vision@text config names, input resolution, the
#: checkpoint file cn_clip downloads to ``~/.cache/clip`` (we never download it).
CN_CLIP_MODELS = {
    "ViT-B-16": ("ViT-B-16", "RoBERTa-wwm-ext-base-chinese", 224, "clip_cn_vit-b-16.pt"),
    "ViT-L-14": ("ViT-L-14", "RoBERTa-wwm-ext-base-chinese", 224, "clip_cn_vit-l-14.pt"),
    "ViT-L-14-336": (
        "ViT-L-14-336",
        "RoBERTa-wwm-ext-base-chinese",
        336,
        "clip_cn_vit-l-14-336.pt",
    ),
    "ViT-H-14": ("ViT-H-14", "RoBERTa-wwm-ext-large-chinese", 224, "clip_cn_vit-h-14.pt"),
    "RN50": ("RN50", "RBT3-chinese", 224, "clip_cn_rn50.pt"),
}
#: cn_clip's context length (all its released models are trained with 52 tokens).
CN_CLIP_CONTEXT_LENGTH = 52
#: Host probed before a download, so that no network fails in milliseconds, not minutes.
_HUB_HOST = ("huggingface.co", 443)


@functools.cache
def _open_clip_dir() -> Path:
    """Where the open_clip package lives (found, not imported)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("open_clip is not installed (pip install open_clip_torch)")
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def _pretrained_table() -> types.ModuleType:
    """open_clip's table of pretrained weights (``open_clip/pretrained.py``).

    That module is plain data plus two tiny sibling modules (constants, version); it is
    loaded under a private package name so that open_clip's ``__init__`` — which imports
    torch — does not run. When open_clip is imported already, its own module is used.
    """
    if "open_clip.pretrained" in sys.modules:
        return sys.modules["open_clip.pretrained"]
    name = "mmsearch._open_clip_data"
    package = types.ModuleType(name)
    package.__path__ = [str(_open_clip_dir())]
    sys.modules.setdefault(name, package)
    return importlib.import_module(name + ".pretrained")


@functools.cache
def architectures() -> dict[str, Path]:
    """Every built-in architecture name and its config file: open_clip's and ours."""
    found: dict[str, Path] = {}
    for directory in (_open_clip_dir() / "model_configs", CONFIG_DIR):
        for path in sorted(directory.glob("*.json")):
            found[path.stem] = path
    return found


def architecture_config(name: str) -> dict[str, Any]:
    """The architecture config (``embed_dim``, ``vision_cfg``, ``text_cfg`` …) of a
    built-in architecture or a model directory's ``local-dir:`` reference."""
    if name.startswith(CN_CLIP_PREFIX):
        return cn_clip_config(name)
    if name.startswith("local-dir:"):
        path = Path(name[len("local-dir:") :]) / MODEL_CONFIG_FILE
        return dict(json.loads(path.read_text())["model_cfg"])
    path = architectures().get(name)
    if path is None:
        raise ModelError(f"no architecture config for {name}")
    return dict(json.loads(path.read_text()))


def input_size(spec: ModelSpec) -> int | None:
    """The side, in pixels, of the square a model's image tower takes (what a loaded
    encoder's ``image_size`` says), read from its architecture config without loading
    the model; None when the config does not say (a hub model, an unreadable config)."""
    try:
        cfg = architecture_config(spec.model)
    except (ModelError, OSError, ValueError, KeyError):
        return None
    if spec.model.startswith(CN_CLIP_PREFIX):
        size = cfg.get("image_resolution")
    else:
        vision = cfg.get("vision_cfg")
        size = vision.get("image_size") if isinstance(vision, dict) else None
    if isinstance(size, (list, tuple)) and size:
        size = max(size)
    return int(size) if isinstance(size, (int, float)) and size > 0 else None


def pretrained_tags(name: str) -> list[str]:
    """The pretrained tags open_clip knows for an architecture."""
    return list(_pretrained_table().list_pretrained_tags_by_model(name))


def pretrained_cfg(name: str, tag: str) -> dict[str, Any]:
    """open_clip's record of one pretrained tag (hub repo, url …), {} if unknown."""
    return dict(_pretrained_table().get_pretrained_cfg(name, tag) or {})


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


def model_record(spec: ModelSpec, dim: int) -> dict[str, Any]:
    """What an index stores of its model: enough to name, compare and reload it."""
    return {
        "model": spec.model,
        "pretrained": spec.pretrained,
        "identity": spec.identity,
        "display": spec.display,
        "dim": int(dim),
    }


def spec_from_record(record: dict[str, Any]) -> ModelSpec:
    """The spec an index's stored model record names (no resolution needed)."""
    return ModelSpec(
        record["model"], record.get("pretrained"), record["identity"], record["display"]
    )


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


def resolve_dir(directory: Path) -> ModelSpec:
    directory = directory.expanduser().resolve()
    cn_clip = (directory / CN_CLIP_CONFIG_FILE).is_file()
    if not cn_clip and not (directory / MODEL_CONFIG_FILE).is_file():
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
        model=f"{CN_CLIP_PREFIX if cn_clip else 'local-dir:'}{directory}",
        pretrained=None,
        identity=f"{'cn-clip-dir' if cn_clip else 'dir'}:{fingerprint}",
        display=f"{directory.name} ({fingerprint[:12]})",
    )


def _unknown_model(name: str) -> ModelError:
    choices = list(architectures())
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
    if name.startswith(CN_CLIP_PREFIX):
        return resolve_cn_clip(name[len(CN_CLIP_PREFIX) :], pretrained)
    if name.startswith("local-dir:"):
        return resolve_dir(Path(name[len("local-dir:") :]))
    if os.sep in name or name.startswith(".") or Path(name).is_dir():
        if not Path(name).expanduser().is_dir():
            raise ModelError(f"model directory {name} does not exist")
        return resolve_dir(Path(name))
    if name == TINY_MODEL:
        if pretrained:
            raise ModelError(f"{TINY_MODEL} is random-initialised; it takes no --pretrained")
        return ModelSpec(name, None, f"{name}:random-seed{TINY_SEED}", name)
    if name not in architectures():
        raise _unknown_model(name)
    if pretrained is None:
        tags = pretrained_tags(name)
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
    if not pretrained_cfg(name, pretrained):
        tags = ", ".join(pretrained_tags(name)) or "none"
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
    cfg = pretrained_cfg(spec.model, spec.pretrained or "")
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


def check_weights_available(spec: ModelSpec) -> None:
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


def _cn_clip_config_dir() -> Path:
    """cn_clip's architecture configs (found, not imported: its import costs torch)."""
    spec = importlib.util.find_spec("cn_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "Chinese-CLIP models need the cn_clip package: pip install 'mmsearch[multilingual]'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "clip" / "model_configs"


def cn_clip_config(name: str) -> dict[str, Any]:
    """The architecture config of a Chinese-CLIP reference: what ``cn_clip.clip.model.CLIP``
    takes (``embed_dim``, ``vision_*``, ``text_*``, ``vocab_size``), plus
    ``image_resolution`` and ``context_length``.

    ``cn-clip:ViT-B-16`` merges cn_clip's vision and text config files as cn_clip does;
    ``cn-clip:/dir`` reads the directory's ``cn_clip_config.json``.
    """
    rest = name[len(CN_CLIP_PREFIX) :] if name.startswith(CN_CLIP_PREFIX) else name
    if rest in CN_CLIP_MODELS:
        vision, text, resolution, _ = CN_CLIP_MODELS[rest]
        directory = _cn_clip_config_dir()
        cfg = json.loads((directory / f"{vision}.json").read_text())
        cfg.update(json.loads((directory / f"{text}.json").read_text()))
        cfg["image_resolution"] = resolution
    else:
        path = Path(rest) / CN_CLIP_CONFIG_FILE
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read the Chinese-CLIP config {path}: {exc}") from exc
    cfg.setdefault("context_length", CN_CLIP_CONTEXT_LENGTH)
    return dict(cfg)


def resolve_cn_clip(name: str, pretrained: str | None) -> ModelSpec:
    """A ``cn-clip:`` reference: a released architecture with a local checkpoint (the
    ``--pretrained`` file, else cn_clip's own download in ``~/.cache/clip``), or a directory.

    Raises:
        ModelError: unknown architecture, or not a directory with ``cn_clip_config.json``.
        WeightsUnavailableError: the checkpoint of a released architecture is not here.
    """
    if name not in CN_CLIP_MODELS:
        if Path(name).expanduser().is_dir():
            if pretrained:
                raise ModelError("a Chinese-CLIP model directory takes no --pretrained")
            return resolve_dir(Path(name))
        known = ", ".join(CN_CLIP_MODELS)
        raise ModelError(
            f"unknown Chinese-CLIP model {name!r}: use one of {known} or a model directory"
        )
    _cn_clip_config_dir()  # the package must be there
    default = Path.home() / ".cache" / "clip" / CN_CLIP_MODELS[name][3]
    path = Path(pretrained).expanduser() if pretrained else default
    if not path.is_file():
        raise WeightsUnavailableError(
            f"{CN_CLIP_PREFIX}{name}", str(path), "no such checkpoint file (never downloaded)"
        )
    path = path.resolve()
    fingerprint = _file_fingerprint(path)
    return ModelSpec(
        f"{CN_CLIP_PREFIX}{name}",
        str(path),
        f"{CN_CLIP_PREFIX}{name}:file:{fingerprint}",
        f"{CN_CLIP_PREFIX}{name} ({path.name})",
    )


def hf_text_paths(spec: ModelSpec, model_cfg: dict[str, Any]) -> dict[str, str]:
    """Local paths of a Hugging Face text tower's config and tokenizer.

    ``text_cfg.hf_model_name`` / ``hf_tokenizer_name`` of a model directory may be paths
    relative to the directory (``"."`` when ``config.json`` and the tokenizer files lie
    in it). Returns ``{"hf_model_name": abs, "hf_tokenizer_name": abs}`` for the names
    that are such local paths; hub names (``xlm-roberta-base``) are left to transformers
    and its cache (offline: ``HF_HUB_OFFLINE=1`` and a cached copy).
    """
    text_cfg = model_cfg.get("text_cfg") or {}
    if not spec.model.startswith("local-dir:") or not text_cfg.get("hf_model_name"):
        return {}
    directory = Path(spec.model[len("local-dir:") :])
    found: dict[str, str] = {}
    for key in ("hf_model_name", "hf_tokenizer_name"):
        name = text_cfg.get(key) or text_cfg.get("hf_model_name")
        path = (directory / Path(name).expanduser()).resolve()  # an absolute name stays
        if path.is_dir():
            found[key] = str(path)
    return found
