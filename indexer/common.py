"""What the indexing runs share: the encoder they need, loaded only when something must be
encoded, and batching."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from mmsearch.catalog import Catalog
from mmsearch.results import RunSummary

#: Items encoded and committed together.
DEFAULT_BATCH = 64


class EncoderLike(Protocol):
    """The part of :class:`mmsearch.encoder.Encoder` the pipeline uses."""

    preprocess: Any
    context_length: int
    image_size: int

    def encode_image_tensors(self, batch: Any) -> np.ndarray: ...
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...
    def is_truncated(self, text: str) -> bool: ...
    def record(self) -> dict[str, Any]: ...
    @property
    def engine(self) -> str: ...


def load_encoder(
    catalog: Catalog, get_encoder: Callable[[], EncoderLike], summary: RunSummary | None = None
) -> EncoderLike:
    """The encoder, loaded now that something must be encoded (the time it took goes to
    ``summary.model_seconds``); the catalog records it as its model before the first
    embedding is committed (and refuses a different one)."""
    started = time.perf_counter()
    encoder = get_encoder()
    if summary is not None:
        summary.model_seconds += time.perf_counter() - started
        summary.engine = encoder.engine
    catalog.claim_model(encoder.record())
    return encoder


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
