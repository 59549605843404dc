"""Paths, environment variables and defaults (a leaf module: imports nothing of ours)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

#: The model used when none is given: a good speed/quality trade-off on CPU and GPU.
DEFAULT_MODEL = "ViT-B-32"
#: Its pretrained weights (open_clip tag); downloaded once, then read from the cache.
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"
#: A tiny random-initialised model for tests and offline smoke runs (no download).
TINY_MODEL = "mmsearch-tiny"

#: Environment variable naming the default index directory.
ENV_INDEX = "MMSEARCH_INDEX"
#: Environment variable naming a device ("cpu", "cuda", "cuda:1") to override auto-detection.
ENV_DEVICE = "MMSEARCH_DEVICE"
#: Environment variable naming the cache directory (exported query runtimes live there).
ENV_CACHE = "MMSEARCH_CACHE"
#: Environment variable choosing how queries are encoded: ``auto`` (the exported ONNX
#: runtime when there is one, else torch), ``onnx`` (refuse to fall back) or ``torch``.
ENV_QUERY_RUNTIME = "MMSEARCH_QUERY_RUNTIME"
QUERY_RUNTIMES = ("auto", "onnx", "torch")
#: Environment variable choosing what encodes an indexing run on a machine without a GPU:
#: ``auto`` (the model's exported ONNX towers when they are there and valid — no torch to
#: import — else torch) or ``torch``.
ENV_INDEX_RUNTIME = "MMSEARCH_INDEX_RUNTIME"
INDEX_RUNTIMES = ("auto", "torch")
#: Environment variable choosing how an indexing run shares CPU cores between decoding
#: and a model on the CPU: ``alternate`` (default) or ``overlap`` (indexer/feed.py).
ENV_DECODE_SCHEDULE = "MMSEARCH_DECODE_SCHEDULE"
#: Environment variable choosing the precision of image encoding on CUDA: ``float16``
#: (default), ``bfloat16`` or ``float32``.
ENV_ENCODE_DTYPE = "MMSEARCH_ENCODE_DTYPE"
#: Environment variable: encoder threads (lanes) per GPU in an indexing run (default 1).
ENV_GPU_LANES = "MMSEARCH_GPU_LANES"

#: File names inside an index directory.
CATALOG_FILE = "catalog.sqlite"
VECTORS_FILE_TEMPLATE = "vectors-{modality}.faiss"
MANIFEST_FILE_TEMPLATE = "vectors-{modality}.json"
STORE_FILE = "embeddings.f16"

MODALITIES = ("image", "text")


def cpu_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or
    ``taskset`` narrows, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def data_dir(app: str = "mmsearch") -> Path:
    """The platform's per-user data directory for ``app``.

    XDG on Linux and BSD (``$XDG_DATA_HOME`` or ``~/.local/share``), ``~/Library/Application
    Support`` on macOS, ``%LOCALAPPDATA%`` on Windows.
    """
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / app
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / app
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / app


def cache_dir() -> Path:
    """Per-user cache: ``$MMSEARCH_CACHE``, else ``$XDG_CACHE_HOME/mmsearch`` or
    ``~/.cache/mmsearch`` (``~/Library/Caches/mmsearch`` on macOS, ``%LOCALAPPDATA%`` on
    Windows)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        return data_dir() / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "mmsearch"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mmsearch"


def runtime_dir(identity: str) -> Path:
    """Where the exported query runtime (ONNX towers) of a model lives: one directory per
    model identity (architecture + weights), shared by every index that uses the model."""
    digest = hashlib.blake2b(identity.encode("utf-8"), digest_size=10).hexdigest()
    return cache_dir() / "runtimes" / digest


def query_runtime_choice() -> str:
    """``auto``, ``onnx`` or ``torch``, from ``$MMSEARCH_QUERY_RUNTIME`` (default auto)."""
    choice = os.environ.get(ENV_QUERY_RUNTIME, "auto").strip().lower() or "auto"
    return choice if choice in QUERY_RUNTIMES else "auto"


def index_runtime_choice() -> str:
    """``auto`` or ``torch``, from ``$MMSEARCH_INDEX_RUNTIME`` (default auto)."""
    choice = os.environ.get(ENV_INDEX_RUNTIME, "auto").strip().lower() or "auto"
    return choice if choice in INDEX_RUNTIMES else "auto"


def gpu_may_be_present() -> bool:
    """Whether this machine may have a GPU torch could use (NVIDIA or ROCm device files, or
    ``nvidia-smi`` on the PATH), asked without importing torch: only torch knows for sure."""
    if any(os.path.exists(p) for p in ("/dev/nvidia0", "/dev/nvidiactl", "/dev/kfd")):
        return True
    return shutil.which("nvidia-smi") is not None


def default_index_dir() -> Path:
    """Where the index lives when no ``--index`` is given: ``$MMSEARCH_INDEX``, else the
    platform data directory (e.g. ``~/.local/share/mmsearch/index``)."""
    env = os.environ.get(ENV_INDEX)
    if env:
        return Path(env).expanduser()
    return data_dir() / "index"


#: recall@10 (after exact re-rank) that IVF search parameters are tuned to reach.
DEFAULT_RECALL_TARGET = 0.95


@dataclass(frozen=True)
class IndexSettings:
    """What the user chose for the vector indexes (``index --index-type`` …); kept in the
    catalog (:meth:`mmsearch.catalog.Catalog.settings`).

    Attributes:
        index_type: ``auto`` (exact while small, IVF-PQ beyond), ``flat`` or ``ivfpq``.
        memory_budget: most bytes a vector index may hold in RAM, or None.
        recall_target: recall@10 that IVF search parameters are tuned to reach.
    """

    index_type: str = "auto"
    memory_budget: int | None = None
    recall_target: float = DEFAULT_RECALL_TARGET
