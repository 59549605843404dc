"""Training and validation data: a seeded split of the pairs, and their images decoded and
preprocessed once."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmsearch.encoder import Encoder
from mmsearch.errors import MMSearchError
from mmsearch.media import load_many

from .pairs import Pair


@dataclass
class PairData:
    """Image–caption pairs decoded and preprocessed once (they are reused every epoch)."""

    images: torch.Tensor  # (n, 3, H, W) float16, preprocessed
    captions: list[str]


def split_pairs(
    pairs: Sequence[Pair], val_fraction: float, max_val: int, seed: int
) -> tuple[list[Pair], list[Pair]]:
    """Seeded (train, validation) split."""
    if not 0 < val_fraction < 1:
        raise MMSearchError(f"val_fraction must be between 0 and 1, not {val_fraction}")
    order = list(pairs)
    random.Random(seed).shuffle(order)
    n_val = min(max_val, max(1, round(len(order) * val_fraction)))
    if len(order) - n_val < 2:
        raise MMSearchError(f"too few usable pairs ({len(order)}) to train and validate")
    return order[n_val:], order[:n_val]


def load_pairs(
    pairs: Sequence[Pair],
    encoder: Encoder,
    skipped: list[tuple[str, str]],
    progress: Callable[[int, str], Any] | None,
    desc: str,
) -> PairData:
    """Decode and preprocess every image once (they are reused every epoch)."""
    by_path: dict[str, list[str]] = {}
    for p in pairs:
        by_path.setdefault(p.image, []).append(p.caption)
    tensors: list[torch.Tensor] = []
    captions: list[str] = []
    bar = progress(len(by_path), desc) if progress else None
    for path, _, tensor, error in load_many(list(by_path), transform=encoder.preprocess):
        if error is not None:
            skipped.extend((path, error.reason) for _ in by_path[path])
        else:
            for caption in by_path[path]:
                tensors.append(tensor.to(torch.float16))
                captions.append(caption)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if not tensors:
        raise MMSearchError("none of the images could be read")
    return PairData(torch.stack(tensors), captions)
