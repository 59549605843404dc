"""open_clip's evaluation image transform in Pillow + numpy, without torch.

torchvision resizes, crops and pads PIL images with Pillow itself, so making the same
Pillow calls with the same sizes gives the same pixels; only the float conversion and
normalisation are redone here (in float32, like torch). Like ``Encoder.encode_images``,
the image is converted to RGB first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

RESIZE_MODES = ("shortest", "longest", "squash")
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class ImageTransform:
    """The evaluation transform of one model (open_clip's preprocess config).

    Attributes:
        size: (height, width) of the tensor the image tower takes.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        interpolation: ``bicubic`` or ``bilinear`` (open_clip maps anything else to bicubic).
        resize_mode: ``shortest`` (resize + centre crop), ``longest`` (resize + pad) or
            ``squash`` (resize to the size, aspect ratio not kept).
        fill: grey level of the padding in ``longest`` mode.
    """

    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill: int = 0

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ImageTransform:
        """Build from open_clip's preprocess config (``size`` int or pair, ``fill_color``)."""
        size = cfg["size"]
        pair = (int(size), int(size)) if isinstance(size, (int, float)) else tuple(size)
        mode = cfg.get("resize_mode") or "shortest"
        if mode not in RESIZE_MODES or len(pair) != 2:
            raise ValueError(f"unsupported preprocessing: resize_mode={mode!r}, size={size!r}")
        interpolation = "bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic"
        return cls(
            size=(int(pair[0]), int(pair[1])),
            mean=_triple(cfg["mean"]),
            std=_triple(cfg["std"]),
            interpolation=interpolation,
            resize_mode=mode,
            fill=int(cfg.get("fill_color", cfg.get("fill", 0)) or 0),
        )

    def to_config(self) -> dict[str, Any]:
        """The JSON-able form :meth:`from_config` reads back."""
        return {
            "size": list(self.size),
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
            "fill_color": self.fill,
        }

    def __call__(self, image: Image.Image) -> np.ndarray:
        """One image → float32 array (3, H, W), normalised."""
        img = self._geometry(image.convert("RGB"))
        arr = np.asarray(img, dtype=np.float32) / np.float32(255)
        arr = (arr - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))

    def batch(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Images → float32 array (N, 3, H, W)."""
        height, width = self.size
        out = np.empty((len(images), 3, height, width), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self(image)
        return out

    def _geometry(self, img: Image.Image) -> Image.Image:
        """Resize and crop/pad exactly as open_clip's ``image_transform(is_train=False)``."""
        height, width = self.size
        resample = _RESAMPLE[self.interpolation]
        if self.resize_mode == "squash":
            return img.resize((width, height), resample)
        if self.resize_mode == "longest":
            img = img.resize(_keep_ratio(img, self.size, longest=True), resample)
            return _center_crop_or_pad(img, self.size, self.fill)
        if height == width:  # torchvision Resize(int): shortest edge to size
            return _center_crop_or_pad(
                img.resize(_shortest_edge(img, height), resample), self.size, 0
            )
        # open_clip's non-square 'shortest' uses ResizeKeepRatio's default, bicubic.
        img = img.resize(_keep_ratio(img, self.size, longest=False), Image.Resampling.BICUBIC)
        return _center_crop_or_pad(img, self.size, 0)


def _triple(value: Any) -> tuple[float, float, float]:
    values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)] * 3
    if len(values) != 3:
        raise ValueError(f"expected 3 channel values, got {value!r}")
    return (values[0], values[1], values[2])


def _shortest_edge(img: Image.Image, size: int) -> tuple[int, int]:
    """torchvision's output size for ``Resize(size)``, as (width, height)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def _keep_ratio(img: Image.Image, target: tuple[int, int], longest: bool) -> tuple[int, int]:
    """open_clip's ``ResizeKeepRatio`` output size (no random scaling), as (width, height)."""
    w, h = img.size
    ratio_h, ratio_w = h / target[0], w / target[1]
    ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
    return (round(w / ratio), round(h / ratio))


def _center_crop_or_pad(img: Image.Image, size: tuple[int, int], fill: int) -> Image.Image:
    """torchvision's ``center_crop`` / open_clip's ``center_crop_or_pad`` on a PIL image."""
    crop_h, crop_w = size
    w, h = img.size
    if crop_w > w or crop_h > h:
        left = (crop_w - w) // 2 if crop_w > w else 0
        top = (crop_h - h) // 2 if crop_h > h else 0
        right = (crop_w - w + 1) // 2 if crop_w > w else 0
        bottom = (crop_h - h + 1) // 2 if crop_h > h else 0
        canvas = Image.new(img.mode, (w + left + right, h + top + bottom), (fill,) * 3)
        canvas.paste(img, (left, top))
        img, (w, h) = canvas, canvas.size
        if (w, h) == (crop_w, crop_h):
            return img
    top = int(round((h - crop_h) / 2.0))
    left = int(round((w - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))
