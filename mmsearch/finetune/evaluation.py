"""Retrieval metrics on image–caption pairs, and the evaluation of a model on a pairs file.

Recall@k in both directions. Several images often share one caption ("a red circle"), so a
retrieved item counts as correct when its caption equals the query's caption: with
exact-index matching, recall@1 for a caption shared by five images could never exceed 1/5.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from mmsearch.encoder import Encoder
from mmsearch.errors import InputError, InvalidValueError

from .data import PairData, load_pairs
from .pairs import PairsFile, read_pairs

KS = (1, 5, 10)
METRIC_KEYS = tuple(f"{d}_r{k}" for d in ("t2i", "i2t") for k in KS)


def retrieval_metrics(
    image_emb: np.ndarray, text_emb: np.ndarray, captions: Sequence[str], ks: Sequence[int] = KS
) -> dict[str, float]:
    """Recall@k, text→image and image→text, for aligned rows.

    Args:
        image_emb: (n, d) unit image embeddings; row i shows ``captions[i]``.
        text_emb: (n, d) unit text embeddings of ``captions``.
        captions: the n captions (duplicates allowed).
        ks: cut-offs.

    Returns:
        ``{"t2i_r1": …, "t2i_r5": …, "t2i_r10": …, "i2t_r1": …, …}`` in [0, 1], plus ``n``.
    """
    n = len(captions)
    if n == 0:
        raise InvalidValueError("no pairs to evaluate")
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    cid = np.array([ids[c] for c in captions])
    sim = text_emb @ image_emb.T  # (texts, images)
    out: dict[str, float] = {}
    kmax = min(max(ks), n)
    for name, scores in (("t2i", sim), ("i2t", sim.T)):
        top = np.argsort(-scores, axis=1, kind="stable")[:, :kmax]
        correct = cid[top] == cid[:, None]
        for k in ks:
            out[f"{name}_r{k}"] = round(float(correct[:, : min(k, n)].any(axis=1).mean()), 4)
    out["n"] = n
    return out


@torch.inference_mode()
def _embed(encoder: Encoder, data: PairData, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    encoder.model.eval()
    imgs = [
        encoder.encode_image_tensors(data.images[i : i + batch].float())
        for i in range(0, len(data.captions), batch)
    ]
    txts = [
        encoder.encode_texts(data.captions[i : i + batch])
        for i in range(0, len(data.captions), batch)
    ]
    return np.concatenate(imgs), np.concatenate(txts)


def model_metrics(encoder: Encoder, data: PairData) -> dict[str, float]:
    """Recall@k both ways of the encoder on already loaded pairs."""
    image_emb, text_emb = _embed(encoder, data)
    return retrieval_metrics(image_emb, text_emb, data.captions)


def evaluate(
    pairs_path: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    progress: Callable[[int, str], Any] | None = None,
) -> tuple[dict[str, float], PairsFile]:
    """Recall@1/5/10 in both directions of ``model`` on every pair of a file.

    Returns the metrics (keys ``t2i_r1`` … ``i2t_r10`` and ``n``) and the parsed file.
    """
    pairs = read_pairs(pairs_path, image_column, caption_column)
    if not pairs.pairs:
        raise InputError(pairs_path, "no usable pairs")
    encoder = Encoder.load(model, pretrained, device=device)
    data = load_pairs(pairs.pairs, encoder, pairs.skipped, progress, "loading images")
    return model_metrics(encoder, data), pairs
