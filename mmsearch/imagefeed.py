"""Images into embeddings with a loaded OpenCLIP encoder, on the CPU or on every GPU.

:class:`TorchFeed` is the encoding step of an indexing run (see ``indexer/feed.py``):

* ``prepare`` (the decoding threads): on the CPU, Pillow decodes at reduced JPEG scale and
  the model's own preprocessing makes the input tensor. With ``gpu_jpeg`` (the default on
  CUDA), a JPEG is not decoded there: only its header is read (size, EXIF orientation and
  date, checked like a decode would) and its bytes go to the encoder.
* ``encode`` (one thread per device): the batch's JPEG bytes are decoded together
  (``torchvision.io.decode_jpeg`` on a list: nvJPEG on CUDA), turned upright, resized and
  normalised on the device with torch ops that reproduce the model's preprocessing, joined
  by the CPU-prepared tensors, and encoded in fp16 (or bf16, ``$MMSEARCH_ENCODE_DTYPE``) on
  CUDA. A JPEG the device decoder refuses is decoded by Pillow instead, so what is indexed
  and what is skipped stays what the CPU path decides.

With several GPUs and a device of plain ``cuda``, the model is copied to each: one encoder
lane per GPU, each taking the next batch. The same code runs on the CPU (``gpu_jpeg=True``
with ``device="cpu"``), which is how the tests exercise it.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

try:  # deprecated since torchvision 0.29 (for TorchCodec), to be removed in a later release
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
    ImageReadMode = decode_jpeg = None  # type: ignore[assignment,misc]

from . import media
from .config import ENV_ENCODE_DTYPE, ENV_GPU_LANES
from .errors import InputError, InvalidValueError
from .media import EncodedImages, FileBytes, PreparedImage

logger = logging.getLogger(__name__)
# The file's bytes are read-only (``media.read_file``) and shared, not copied, with the
# decoder, which only reads them: torch's warning that a tensor over them could write to
# them says nothing here (once per process, on stderr, in every GPU run).
warnings.filterwarnings(
    "ignore", "The given buffer is not writable", UserWarning, r"mmsearch\.imagefeed"
)

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
#: Pillow modes the device decoder turns into RGB like Pillow does (CMYK, YCCK are not).
_DEVICE_MODES = frozenset({"RGB", "L"})
_JPEG_END = b"\xff\xd9"
GROUP_PIXELS = 32 << 20
"""The most pixels resized as one tensor (float32: 384 MB): 17 pictures of 2 MP, 2 of 12."""


@dataclass
class JpegBytes:
    """A JPEG left undecoded for the device decoder."""

    path: str
    data: torch.Tensor  # uint8, 1-D: the file's bytes (shares the read buffer)
    orientation: int  # EXIF orientation, applied after decoding
    file: FileBytes  # for Pillow, should the device decoder refuse it


class TorchFeed:
    """Prepares and encodes images for one loaded :class:`mmsearch.encoder.Encoder`.

    Args:
        encoder: The loaded encoder (its model, device and preprocessing).
        devices: Devices to encode on (default: the encoder's; every GPU when that is
            plain ``cuda``).
        gpu_jpeg: Decode JPEGs in ``encode`` with torchvision rather than with Pillow in
            ``prepare`` (default: on CUDA).
        dtype: ``float16``, ``bfloat16`` or ``float32`` (default: ``$MMSEARCH_ENCODE_DTYPE``,
            else float16 on CUDA and float32 on the CPU).

    Raises:
        InvalidValueError: An unknown dtype.
    """

    def __init__(
        self,
        encoder: Any,
        devices: Sequence[str | torch.device] | None = None,
        gpu_jpeg: bool | None = None,
        dtype: str | None = None,
    ) -> None:
        self.encoder = encoder
        self.size = int(encoder.image_size)
        self.draft = media.draft_size(self.size)
        self.devices = [torch.device(d) for d in devices] if devices else _devices(encoder.device)
        self.on_cpu = all(d.type == "cpu" for d in self.devices)
        self.lanes = len(self.devices)
        copies: dict[str, torch.nn.Module] = {}  # one model per device, whatever its lanes
        for d in self.devices:
            if str(d) not in copies:
                copies[str(d)] = _on(encoder.model, encoder.device, d)
        self.models = [copies[str(d)] for d in self.devices]
        cfg = encoder.preprocess_cfg()
        self.gpu_jpeg = (not self.on_cpu) if gpu_jpeg is None else gpu_jpeg
        if self.gpu_jpeg and not _reproducible(cfg):
            logger.info("preprocessing %s is not reproduced on the device: Pillow decodes", cfg)
            self.gpu_jpeg = False
        if self.gpu_jpeg and decode_jpeg is None:
            logger.warning("this torchvision decodes no JPEGs (torchvision.io): Pillow decodes")
            self.gpu_jpeg = False
        self.mode = str(cfg.get("interpolation", "bicubic"))
        self.mean = [torch.tensor(cfg["mean"], device=d).view(3, 1, 1) for d in self.devices]
        self.std = [torch.tensor(cfg["std"], device=d).view(3, 1, 1) for d in self.devices]
        self.dtype = _dtype(dtype, self.on_cpu)
        self._saved_threads: int | None = None
        self._numpy_tail = _numpy_tail(encoder.preprocess)

    # -- the decoding threads -------------------------------------------------------------

    def prepare(self, path: str, data: FileBytes) -> PreparedImage:
        """The image as the encoder takes it: JPEG bytes for the device decoder, else a
        preprocessed tensor. Raises :class:`InputError` for what cannot be decoded."""
        if self.gpu_jpeg and data.data is not None and _complete_jpeg(data.data):
            header = media.probe_image(path, data)
            if header.format == "JPEG" and header.mode in _DEVICE_MODES:
                raw = torch.frombuffer(data.data, dtype=torch.uint8)
                jpeg = JpegBytes(path, raw, header.orientation, data)
                return PreparedImage(header.width, header.height, header.taken, jpeg)
        return self._pillow(path, data)

    def _pillow(self, path: str, data: FileBytes) -> PreparedImage:
        loaded = media.load_image(path, draft_size=self.draft, data=data)
        tensor = self.preprocess(loaded.image)
        return PreparedImage(loaded.width, loaded.height, loaded.taken, tensor)

    def from_decoded(self, image: Any) -> torch.Tensor:
        """The model's input from a picture decoded as the Pillow path decodes it (before
        the model was loaded: see ``indexer.feed.Decoded``)."""
        return self.preprocess(image)

    def preprocess(self, image: Any) -> torch.Tensor:
        """The model's preprocessing: its Pillow steps, then ``ToTensor`` and ``Normalize``
        in numpy — the same float32 operations, but without torch's intra-op threads, which
        the decoding threads would otherwise multiply (and spin in) beside the model."""
        if self._numpy_tail is None:
            return self.encoder.preprocess(image)
        pil_steps, mean, std = self._numpy_tail
        for step in pil_steps:
            image = step(image)
        x = np.asarray(image, dtype=np.float32) / np.float32(255)
        x = (x - mean) / std
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))

    # -- the encoder threads --------------------------------------------------------------

    @torch.inference_mode()
    def encode(self, batch: Sequence[PreparedImage], lane: int = 0) -> EncodedImages:
        """Embeddings (unit rows, float32) of the batch's images on device ``lane``."""
        device = self.devices[lane]
        inputs, failed = self.model_inputs(batch, lane)
        ok = [x for x in inputs if x is not None]
        if not ok:
            return EncodedImages(np.zeros((0, self.encoder.dim), np.float32), failed)
        x = torch.stack(ok)
        encoder_dtype = torch.float32 if self.on_cpu else torch.float16  # its autocast
        if self.models[lane] is self.encoder.model and self.dtype == encoder_dtype:
            # The encoder's own image tower call (the same precision).
            return EncodedImages(self.encoder.encode_image_tensors(x), failed)
        with torch.autocast(device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            feats = self.models[lane].encode_image(x)
        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return EncodedImages(feats.cpu().numpy(), failed)

    def model_inputs(
        self, batch: Sequence[PreparedImage], lane: int = 0
    ) -> tuple[list[torch.Tensor | None], dict[int, InputError]]:
        """The model's input tensor of each image on device ``lane`` (None where it could
        not be decoded), and the errors by position."""
        device = self.devices[lane]
        inputs: list[torch.Tensor | None] = [None] * len(batch)
        failed: dict[int, InputError] = {}
        jpegs = [i for i, p in enumerate(batch) if isinstance(p.payload, JpegBytes)]
        decoded = self._decode([batch[i].payload for i in jpegs], device)
        # Pictures of one size and orientation (a camera's) are resized as one tensor: a
        # few kernels a group rather than a few an image, each launched from Python.
        groups: dict[tuple[tuple[int, ...], int], list[tuple[int, torch.Tensor]]] = {}
        for i, out in zip(jpegs, decoded, strict=True):
            if isinstance(out, InputError):
                failed[i] = out
            elif out.dim() == 3 and out.shape[0] == 3 and out.dtype == torch.uint8:
                key = (tuple(out.shape), batch[i].payload.orientation)
                groups.setdefault(key, []).append((i, out))
            else:  # already preprocessed by Pillow (the device decoder refused the file)
                inputs[i] = out.to(device)
        for (shape, orientation), members in groups.items():
            step = max(1, GROUP_PIXELS // (shape[1] * shape[2]))  # its float copy's memory
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                x = self.to_inputs(torch.stack([out for _, out in chunk]), orientation, lane)
                for (i, _), row in zip(chunk, x, strict=True):
                    inputs[i] = row
        for i, p in enumerate(batch):
            if i not in jpegs:
                inputs[i] = p.payload.to(device, non_blocking=True)
        return inputs, failed

    def _decode(
        self, jpegs: list[JpegBytes], device: torch.device
    ) -> list[torch.Tensor | InputError]:
        """Decode on ``device``, all at once; one by one when the batch fails (one bad file
        fails it), and with Pillow for what the device decoder refuses."""
        if not jpegs:
            return []
        try:
            return list(decode_jpeg([j.data for j in jpegs], ImageReadMode.RGB, device=device))
        except RuntimeError as exc:
            logger.debug("batch JPEG decode failed (%s); decoding one by one", exc)
        out: list[torch.Tensor | InputError] = []
        for j in jpegs:
            try:
                out.append(decode_jpeg(j.data, ImageReadMode.RGB, device=device))
            except RuntimeError:
                try:
                    out.append(self._pillow(j.path, j.file).payload)
                except InputError as exc:
                    out.append(exc)
        return out

    def to_inputs(self, images: torch.Tensor, orientation: int, lane: int = 0) -> torch.Tensor:
        """Decoded (N, 3, H, W) uint8 images of one size and orientation as the model's
        inputs, on its device: upright, the short side resized to the input size
        (antialiased, rounded to 8 bits like Pillow's resize), centre-cropped square and
        normalised — open_clip's ``Resize(size) → CenterCrop(size) → ToTensor →
        Normalize``, each image on its own as that does."""
        images = upright(images, orientation)
        h, w = images.shape[-2:]
        s = self.size
        # torchvision's Resize(int): the short side becomes s, the long one is truncated.
        nh, nw = (s, int(s * w / h)) if h <= w else (int(s * h / w), s)
        x = images.float()
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode=self.mode, antialias=True)
            x = x.clamp_(0, 255).round_()
        top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
        x = x[:, :, top : top + s, left : left + s] / 255.0
        return (x - self.mean[lane]) / self.std[lane]

    # -- threads --------------------------------------------------------------------------

    def use_threads(self, threads: int | None) -> None:
        """Give torch ``threads`` intra-op threads until :meth:`close` (None: as is)."""
        if threads is None:
            return
        if self._saved_threads is None:
            self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(threads)

    def close(self) -> None:
        """Give torch back the thread count it had."""
        if self._saved_threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._saved_threads = None


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation to a (C, H, W) image, as ``ImageOps.exif_transpose``."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def _numpy_tail(preprocess: Any) -> tuple[list[Any], np.ndarray, np.ndarray] | None:
    """For a ``Compose`` ending in ``ToTensor, Normalize`` on an RGB image: the steps
    before them, and the mean and std; None for any other transform (then it is called
    as it is)."""
    steps = list(getattr(preprocess, "transforms", []))
    if len(steps) < 2 or type(steps[-2]).__name__ not in ("ToTensor", "MaybeToTensor"):
        return None
    norm = steps[-1]
    if type(norm).__name__ != "Normalize" or getattr(norm, "inplace", False):
        return None
    mean = np.asarray(norm.mean, dtype=np.float32).reshape(1, 1, -1)
    std = np.asarray(norm.std, dtype=np.float32).reshape(1, 1, -1)
    if mean.size != 3 or std.size != 3:
        return None
    return steps[:-2], mean, std


def _complete_jpeg(data: bytes) -> bool:
    """Whether the bytes end with a JPEG end marker (NUL padding after it allowed): a
    truncated file goes to Pillow, which refuses it, where a device decoder might fill in
    the rest. Looks at the last 4 KB (stripping the whole file copied it: 54 µs for 2 MP),
    at all of it only when those are all NULs."""
    tail = data[-4096:].rstrip(b"\0")
    if not tail and len(data) > 4096:
        tail = data.rstrip(b"\0")
    return tail[-2:] == _JPEG_END


def _reproducible(cfg: dict[str, Any]) -> bool:
    """Whether :meth:`TorchFeed.to_inputs` reproduces this preprocessing."""
    return (
        cfg.get("resize_mode", "shortest") == "shortest"
        and cfg.get("interpolation", "bicubic") in ("bicubic", "bilinear")
        and "mean" in cfg
        and "std" in cfg
    )


def _devices(device: torch.device) -> list[torch.device]:
    """Every GPU for a plain ``cuda`` device, else the device itself: a lane (encoder
    thread) each, ``$MMSEARCH_GPU_LANES`` lanes per GPU (with two, one thread launches a
    batch's kernels from Python while the other waits for its results).

    Raises:
        InvalidValueError: ``$MMSEARCH_GPU_LANES`` is not a whole number from 1 to 8.
    """
    devices = [device]
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        devices = [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if device.type != "cuda":
        return devices
    raw = os.environ.get(ENV_GPU_LANES) or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= 8:
        raise InvalidValueError(f"${ENV_GPU_LANES} must be a whole number from 1 to 8, not {raw!r}")
    return [d for d in devices for _ in range(int(raw))]


def _same(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _on(model: torch.nn.Module, home: torch.device, device: torch.device) -> torch.nn.Module:
    """The model on ``device``: itself where it lives, a copy elsewhere."""
    if _same(home, device):
        return model
    return copy.deepcopy(model).to(device).eval()


def _dtype(name: str | None, on_cpu: bool) -> torch.dtype:
    name = name or os.environ.get(ENV_ENCODE_DTYPE) or ("float32" if on_cpu else "float16")
    if name not in _DTYPES:
        raise InvalidValueError(f"unknown dtype {name!r}: one of {sorted(_DTYPES)}")
    return _DTYPES[name]
