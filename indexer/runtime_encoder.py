"""An indexing run's encoder without torch: the model's exported ONNX towers
(:class:`mmsearch.runtime.QueryRuntime`, the ones queries use) on the CPU.

On a machine without a GPU, once a model's towers are exported (the first run that loads
the model exports them), later runs encode with them: no torch, open_clip or torchvision
to import (ViT-B-32 on two cores: the run's encoder is ready in 0.8–1.7 s instead of
10–14 s), and onnxruntime encodes the image tower 10–17 % faster than torch there. The
embeddings are the torch encoder's to float rounding (max abs difference 1.4e-7 on 64
ViT-B-32 images), and the preprocessing is the same Pillow calls
(:class:`mmsearch.runtime.preprocess.ImageTransform`), so what gets indexed does not depend
on which of the two encoded it (tests/test_runtime_indexing.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from indexer.feed import thread_budget
from mmsearch.models import ModelSpec, model_record
from mmsearch.runtime import QueryRuntime


class RuntimeEncoder:
    """A loaded runtime as :class:`indexer.common.EncoderLike`: what the image and text
    runs use of an encoder."""

    def __init__(self, runtime: QueryRuntime, spec: ModelSpec) -> None:
        self.runtime = runtime
        self.spec = spec
        self.preprocess = runtime.transform  # PIL image → float32 (3, H, W)
        self.image_size = runtime.image_size
        self.context_length = runtime.context_length
        self.dim = runtime.dim
        self._threads: int | None = None

    def use_threads(self, threads: int | None) -> None:
        """The image tower's intra-op threads from now on (None: as for a query)."""
        self._threads = threads

    def encode_image_tensors(self, batch: Sequence[np.ndarray]) -> np.ndarray:
        """Encode preprocessed images ((3, H, W) arrays from ``preprocess``)."""
        return self.runtime.encode_pixels(np.stack(list(batch)), threads=self._threads)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.runtime.encode_texts(texts)

    def is_truncated(self, text: str) -> bool:
        return self.runtime.is_truncated(text)

    @property
    def engine(self) -> str:
        """What encodes: the model's exported (ONNX) towers."""
        return "onnx"

    def record(self) -> dict[str, Any]:
        """The model record the torch encoder gives (see :func:`model_record`)."""
        return model_record(self.spec, self.dim)

    def check(self, tower: str) -> None:
        """Open ``tower`` now (its session and self-test), so that a tower that fails does so
        before the run relies on it. The image tower opens with the threads a run's thread
        budget gives the model (:func:`indexer.feed.thread_budget`), the session it will
        encode with — not a second one of another size (~350 MB each for ViT-B-32).

        Raises:
            QueryRuntimeError: the tower cannot be opened or fails its self-test.
        """
        threads = self._threads or (thread_budget().model_threads if tower == "image" else None)
        self.runtime.open_tower(tower, threads)
