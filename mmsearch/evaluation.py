"""Retrieval metrics on image–caption pairs (numpy only).

Recall@k in both directions. Several images often share one caption ("a red circle"), so a
retrieved item counts as correct when its caption equals the query's caption: with
exact-index matching, recall@1 for a caption shared by five images could never exceed 1/5.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
        raise ValueError("no pairs to evaluate")
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
