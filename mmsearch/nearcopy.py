"""Pixel-level check that two images are copies of one picture (no model, no torch).

Embeddings of a model fine-tuned on captions put *look-alikes* (same caption, different
drawing) as close together as true copies, so near-duplicate detection re-checks every
candidate pair on pixels: a small colour thumbprint of each image, compared by
correlation (blind to brightness and contrast changes, JPEG noise and resizing) at the
best of a grid of crops of up to :data:`MAX_CROP` per side, so a slightly cropped copy
lines up with one of them. ``bench/dups.py`` measures the threshold.

A crop followed by a resize is linear in the pixels: each crop of the grid is one pair of
area-averaging matrices (rows, columns), so all crops of an image come from two matrix
products instead of hundreds of image resizes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from functools import lru_cache

import numpy as np
from PIL import Image

from .media import load_image

#: Side of the stored colour thumbprint, pixels.
PRINT_SIDE = 64
#: Side of the compared patch.
PATCH_SIDE = 24
#: Largest crop, as a fraction of a side, that a copy may have lost (both ends together).
MAX_CROP = 0.10
#: Steps of the crop grid, as fractions of a side.
CROP_STEPS = (0.0, 0.025, 0.05, 0.075, 0.10)
#: Default: pairs correlating at least this much are copies. On bench/dups.py's set (100
#: originals, 463 files, every one of the 107k pairs checked) every copy reached 0.96 and
#: no two different pictures did; at 0.93 precision fell to 0.94.
DEFAULT_PIXEL_THRESHOLD = 0.96


def thumbprint(image: Image.Image) -> np.ndarray:
    """A :data:`PRINT_SIDE`-square RGB thumbnail, uint8 (aspect not kept: a crop
    changes it)."""
    small = image.convert("RGB").resize((PRINT_SIDE, PRINT_SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8)


def file_thumbprint(path: str | os.PathLike[str]) -> np.ndarray:
    """The thumbprint of an image file (decoded at reduced size where the format allows).

    Raises:
        InputError: the file cannot be read as an image.
    """
    return thumbprint(load_image(path, draft_size=4 * PRINT_SIDE).image)


def _area_matrix(start: float, stop: float, n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) weights averaging ``[start, stop)`` of a line of ``n_in`` pixels
    into ``n_out`` equal cells."""
    edges = np.linspace(start, stop, n_out + 1)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixels = np.arange(n_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixels + 1) - np.maximum(lo, pixels), 0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=1)
def _axis_matrices() -> np.ndarray:
    """(c, PATCH_SIDE, PRINT_SIDE): one area matrix per (start, end) crop of an axis;
    the uncropped one first."""
    side = PRINT_SIDE
    cuts = [(a, b) for a in CROP_STEPS for b in CROP_STEPS if a + b <= MAX_CROP + 1e-9]
    return np.stack([_area_matrix(a * side, side - b * side, PATCH_SIDE, side) for a, b in cuts])


def crops(print_: np.ndarray) -> np.ndarray:
    """Every crop of the grid as a unit row (zero mean per colour); row 0 uncropped."""
    m = _axis_matrices()
    channels = np.ascontiguousarray(print_.transpose(2, 0, 1), dtype=np.float32)  # (3, y, x)
    cols = channels[None] @ m.transpose(0, 2, 1)[:, None]  # (x, 3, rows, P): columns cut
    full = m[:, None, None] @ cols[None]  # (y, x, 3, P, P): then rows
    rows = full.reshape(len(m) * len(m), 3, PATCH_SIDE * PATCH_SIDE)
    rows = rows - rows.mean(axis=2, keepdims=True)
    rows = rows.reshape(len(rows), -1)
    return rows / (np.linalg.norm(rows, axis=1, keepdims=True) + 1e-6)


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation (−1…1) of two thumbprints over crops of either (1: same picture)."""
    ca, cb = crops(a), crops(b)
    return float(max((ca @ cb[0]).max(), (cb @ ca[0]).max()))


def pixel_similarities(
    prints: dict[int, np.ndarray], pairs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], float]:
    """:func:`pixel_similarity` of many pairs of ids, each image's crops computed once."""
    pairs = list(pairs)
    partners: dict[int, set[int]] = {}
    for a, b in pairs:
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    uncropped = {i: crops(p)[0] for i, p in prints.items() if i in partners}
    best: dict[tuple[int, int], float] = {}
    for item, others in partners.items():
        mates = sorted(o for o in others if o in uncropped)
        if item not in uncropped or not mates:
            continue
        # every crop of this image against every partner, uncropped: one matrix product
        found = (crops(prints[item]) @ np.stack([uncropped[o] for o in mates]).T).max(axis=0)
        for other, score in zip(mates, found, strict=True):
            key = (min(item, other), max(item, other))
            best[key] = max(best.get(key, -1.0), float(score))
    keys = {(a, b): (min(a, b), max(a, b)) for a, b in pairs}
    return {pair: best[key] for pair, key in keys.items() if key in best}
