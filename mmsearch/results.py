"""Result types returned by the library (a leaf module: imports nothing of ours)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Hit:
    """One search result.

    Attributes:
        id: the item's id in the catalog (also its FAISS id).
        score: cosine similarity between query and item, in [-1, 1].
        modality: ``"image"`` or ``"text"``.
        path: the image's absolute path (images only).
        text: the text itself (texts only).
        source: where a text came from, e.g. ``captions.txt:12`` (texts only).
        width: image width in pixels (images only).
        height: image height in pixels (images only).
    """

    id: int
    score: float
    modality: str
    path: str | None = None
    text: str | None = None
    source: str | None = None
    width: int | None = None
    height: int | None = None

    @property
    def label(self) -> str:
        """The path of an image or the text of a text: what a person wants to see."""
        return self.path if self.path is not None else (self.text or "")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Skipped:
    """An input that was not indexed, and why."""

    path: str
    reason: str


@dataclass
class RunSummary:
    """What one indexing run did.

    Attributes:
        scanned: files (or texts) looked at.
        added: new items encoded and stored.
        updated: known items whose content changed, encoded again.
        unchanged: known items left as they were.
        removed: items that left the index (files deleted from disk).
        reused: items stored without encoding, by reusing the embedding of identical content
            (a renamed, moved or duplicate file).
        truncated: texts cut to the model's context length.
        skipped: inputs that could not be indexed, each with its reason.
        seconds: wall-clock time of the run.
    """

    scanned: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    reused: int = 0
    truncated: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass(frozen=True)
class VectorInfo:
    """What one modality's ANN index holds."""

    modality: str
    count: int
    index_type: str
    params: dict[str, Any]
    bytes_per_vector: float


@dataclass(frozen=True)
class IndexInfo:
    """What an index holds, for ``mmsearch info``."""

    path: str
    model: str
    dim: int
    images: int
    texts: int
    schema_version: int
    vectors: list[VectorInfo]
    catalog_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
