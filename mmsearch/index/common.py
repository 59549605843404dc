"""What the parts of the ``Index`` facade share: the writer lock decorator, the query
encoder protocol, the search targets."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from .. import config


class QueryEncoder(Protocol):
    """What encodes a query: :class:`~mmsearch.runtime.QueryRuntime` or the torch
    :class:`~mmsearch.encoder.Encoder`."""

    image_size: int

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


#: Accepted ``target`` values.
TARGETS = config.MODALITIES

F = TypeVar("F", bound=Callable[..., Any])


def _writer(method: F) -> F:
    """Run ``method`` holding the index's writer lock (one writing process at a time)."""

    @functools.wraps(method)
    def locked(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked  # type: ignore[return-value]
