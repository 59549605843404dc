"""The encoding step of an indexing run, as the pipeline sees it: an :class:`ImageFeed`
turns a file's bytes into a :class:`~mmsearch.media.PreparedImage` (``prepare``, run by the
decoding threads) and a batch of those into embeddings (``encode``, run by one encoder
thread per device), and the thread budget that shares the machine between the two.

The real encoder's feed (:class:`mmsearch.imagefeed.TorchFeed`: GPU JPEG decoding, several
GPUs, fp16) is imported only once a model is loaded: torch must not be imported by a run
that encodes nothing. Encoders without torch (tests' fakes) get :class:`PlainFeed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from indexer.common import EncoderLike
from mmsearch import media
from mmsearch.config import ENV_DECODE_SCHEDULE, cpu_cores
from mmsearch.errors import InvalidValueError
from mmsearch.media import EncodedImages, FileBytes, PreparedImage

if TYPE_CHECKING:
    from PIL import Image

#: How decoding and encoding share the CPU cores: ``alternate`` (default) — the decoding
#: threads pause while the model runs, each phase gets every core; ``overlap`` — fewer
#: decoding threads run beside a model with the remaining cores. On a GPU they always
#: overlap (the CPU decodes while the GPU encodes).
SCHEDULES = ("alternate", "overlap")


@dataclass
class Decoded:
    """A payload decoded before the model was loaded (the decoding threads do not wait for
    it): the picture as ``media.load_image`` gives it at reduced JPEG scale ``draft`` —
    what a feed's ``prepare`` decodes too — still to be turned into the model's input by
    :meth:`ImageFeed.from_decoded`."""

    image: Image.Image
    draft: int


class ImageFeed(Protocol):
    """Files → model inputs → embeddings, for one loaded encoder.

    ``prepare`` is called from many threads at once; ``encode`` from one thread per lane.
    """

    #: Encoder lanes (devices): ``encode`` may run once per lane concurrently.
    lanes: int
    #: Whether the model runs on the CPU (its threads compete with the decoding threads).
    on_cpu: bool
    #: The side JPEGs are decoded at (``media.draft_size`` of the model's input).
    draft: int

    def prepare(self, path: str, data: FileBytes) -> PreparedImage: ...
    def from_decoded(self, image: Image.Image) -> Any: ...
    def encode(self, batch: Sequence[PreparedImage], lane: int = 0) -> EncodedImages: ...
    def use_threads(self, threads: int | None) -> None: ...
    def close(self) -> None: ...


class PlainFeed:
    """The feed of an encoder without a device of its own: Pillow decoding (reduced-size
    JPEG decoding), its ``preprocess``, its ``encode_image_tensors``."""

    lanes = 1
    on_cpu = True

    def __init__(self, encoder: EncoderLike) -> None:
        self.encoder = encoder
        self.draft = media.draft_size(encoder.image_size)

    def prepare(self, path: str, data: FileBytes) -> PreparedImage:
        loaded = media.load_image(path, draft_size=self.draft, data=data)
        return PreparedImage(
            loaded.width, loaded.height, loaded.taken, self.from_decoded(loaded.image)
        )

    def from_decoded(self, image: Image.Image) -> Any:
        """The model's input from a picture decoded as ``prepare`` decodes it."""
        return self.encoder.preprocess(image)

    def encode(self, batch: Sequence[PreparedImage], lane: int = 0) -> EncodedImages:
        return EncodedImages(self.encoder.encode_image_tensors([p.payload for p in batch]), {})

    def use_threads(self, threads: int | None) -> None:
        """The encoder's threads, where it has a say in them (the ONNX runtime's)."""
        use = getattr(self.encoder, "use_threads", None)
        if use is not None:
            use(threads)

    def close(self) -> None:
        """Nothing to release."""


def feed_for(encoder: Any) -> ImageFeed:
    """The feed for a loaded encoder: the torch one for a model with a device."""
    if getattr(encoder, "device", None) is not None and hasattr(encoder, "model"):
        from mmsearch.imagefeed import TorchFeed  # torch is imported already: a model is loaded

        return TorchFeed(encoder)
    return PlainFeed(encoder)


@dataclass(frozen=True)
class ThreadBudget:
    """How many threads decode, and how many the model may use on the CPU."""

    decoders: int
    model_threads: int  # torch's intra-op threads when the model runs on the CPU
    alternate: bool  # decoders pause while the model runs (CPU only)


def thread_budget(
    cores: int | None = None, workers: int | None = None, schedule: str | None = None
) -> ThreadBudget:
    """Share ``cores`` between decoding and a model on the CPU (decoders + model threads
    never exceed the cores while both run: oversubscribed, torch's threads wait on each
    other at every layer).

    ``alternate`` (the default, from ``$MMSEARCH_DECODE_SCHEDULE`` otherwise) gives each
    phase every core in turn; ``overlap`` runs a third of the cores' worth of decoders
    beside the model on the rest. On a GPU the decoders never pause (the pipeline ignores
    ``alternate`` there) and ``model_threads`` is unused.

    Args:
        cores: Cores to use (default: :func:`mmsearch.config.cpu_cores`).
        workers: Decoding threads, overriding the budget's choice.
        schedule: ``alternate`` or ``overlap``.

    Raises:
        InvalidValueError: An unknown schedule.
    """
    cores = cores or cpu_cores()
    schedule = schedule or os.environ.get(ENV_DECODE_SCHEDULE) or "alternate"
    if schedule not in SCHEDULES:
        raise InvalidValueError(f"unknown decode schedule {schedule!r}: one of {SCHEDULES}")
    if schedule == "alternate":
        return ThreadBudget(workers or cores, cores, alternate=True)
    decoders = workers or max(1, cores // 3)
    return ThreadBudget(decoders, max(1, cores - decoders), alternate=False)
