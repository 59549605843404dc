"""Result types returned by the library (a leaf module: imports nothing of ours)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol


class Progress(Protocol):
    """What a progress bar must offer (tqdm does)."""

    def update(self, n: int = 1) -> Any: ...
    def close(self) -> Any: ...


#: Makes a progress bar: ``factory(total, description)``.
ProgressFactory = Callable[[int, str], Progress]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(total: int, desc: str) -> Progress:
    """A progress factory that shows nothing (the library's default)."""
    return _NoProgress()


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
        tags: the item's tags from ``mmsearch tag``, most probable first (None: none).
        query_score: an explained query's plain score (cosine with the whole query); then
            ``score`` is the combination of it and the parts' scores.
        part_scores: an explained query's cosine with each part, in the parts' order.
        duplicates: ids of near-duplicates collapsed into this hit (``dedupe``).
    """

    id: int
    score: float
    modality: str
    path: str | None = None
    text: str | None = None
    source: str | None = None
    width: int | None = None
    height: int | None = None
    tags: tuple[str, ...] | None = None
    query_score: float | None = None
    part_scores: tuple[float, ...] | None = None
    duplicates: tuple[int, ...] | None = None

    @property
    def label(self) -> str:
        """The path of an image or the text of a text: what a person wants to see."""
        return self.path if self.path is not None else (self.text or "")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class Skipped:
    """An input that was not indexed, and why.

    Attributes:
        path: the file (or text source).
        reason: why it could not be indexed.
        remembered: an earlier run failed on the same version of the file (same size and
            modification time), so it was not read again; it is tried again once it
            changes.
    """

    path: str
    reason: str
    remembered: bool = False


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
        model_seconds: of ``seconds``, loading the model (0 when it was loaded already,
            nothing needed encoding, or the encoding ran on a Ray cluster).
        encode_seconds: time the model spent encoding, summed over devices: for images on
            the CPU, ``seconds`` less this is what reading, decoding and storing added.
            0 when the encoding ran elsewhere (on a Ray cluster).
        links_outside: symbolic links met under the folders that lead outside all of them
            (followed, unless the run refused them: ``links_refused``).
        links_refused: of those, not followed (``--no-follow-outside``).
        replaced_lines: text lines (or records) with bytes that are not UTF-8, read with
            replacement characters.
        offline: folders the run could not see (missing, empty, unmounted), with why:
            their items were kept, not removed.
        engine: what encoded the run here: ``onnx`` (the model's exported towers),
            ``torch:cpu``, ``torch:cuda``…; empty when nothing was encoded here. Two runs
            summed with different engines give both, joined by ``+``.
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
    model_seconds: float = 0.0
    encode_seconds: float = 0.0
    links_outside: int = 0
    links_refused: int = 0
    replaced_lines: int = 0
    offline: list[Skipped] = field(default_factory=list)
    engine: str = ""

    def __add__(self, other: RunSummary) -> RunSummary:
        """Two runs' summaries as one (counts and seconds add up, skips concatenate)."""
        out = RunSummary(skipped=[*self.skipped, *other.skipped])
        for f in fields(self):
            if f.name not in ("skipped", "engine"):
                setattr(out, f.name, getattr(self, f.name) + getattr(other, f.name))
        engines = {e for s in (self, other) for e in s.engine.split("+") if e}
        out.engine = "+".join(sorted(engines))
        return out

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("seconds", "model_seconds", "encode_seconds"):
            data[name] = round(data[name], 3)
        return data


@dataclass(frozen=True)
class QueryTuning:
    """The search parameters an IVF index was tuned to for one query modality."""

    nprobe: int
    rerank_factor: int
    recall: float | None  # recall@10 reached on held-out queries when tuning


@dataclass(frozen=True)
class VectorInfo:
    """What one modality's ANN index holds.

    Attributes:
        modality: ``image`` or ``text``.
        count: vectors held.
        index_type: the FAISS factory string.
        params: build and search parameters (nlist, nprobe, re-rank factor …).
        bytes_per_vector: RAM held per vector.
        by_query: per query modality, the tuned search parameters (IVF indexes).
    """

    modality: str
    count: int
    index_type: str
    params: dict[str, Any]
    bytes_per_vector: float
    by_query: dict[str, QueryTuning] = field(default_factory=dict)


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
    query_runtime: str = ""  # how queries are encoded: onnx (its directory) or torch (why)
    index_runtime: str = ""  # what the next indexing run encodes with: onnx or torch (why)
    tags: dict[str, int] = field(default_factory=dict)  # items per tag, most first
    skipped_files: list[Skipped] = field(default_factory=list)  # remembered bad files
    # extra text encoders (taught languages), as mmsearch.languages.TextEncoderInfo dicts
    text_encoders: list[dict[str, Any]] = field(default_factory=list)
    # folders indexed: path, online, reason, items (mmsearch.catalog_base.RootRecord)
    roots: list[dict[str, Any]] = field(default_factory=list)
    trash: int = 0  # items that left the index, kept for their return (mmsearch gc)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CheckProblem:
    """One thing ``mmsearch check`` found wrong.

    Attributes:
        component: ``store``, ``image index``, ``text index``, ``catalog`` …
        message: what is wrong.
        repaired: whether it was rebuilt from the catalog.
    """

    component: str
    message: str
    repaired: bool = False


@dataclass
class CheckReport:
    """The result of :meth:`mmsearch.Index.check`.

    Attributes:
        problems: everything found wrong, repaired or not.
        checked: what was verified, and how many items of each.
    """

    problems: list[CheckProblem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong any more (no problem, or all repaired)."""
        return all(p.repaired for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


@dataclass
class Classification:
    """Zero-shot label probabilities of one image.

    Attributes:
        source: the image's path (or ``"<image N>"`` for an in-memory image).
        scores: label → probability (softmax over the labels), most probable first.
        error: why the image could not be classified (then ``scores`` is empty).
    """

    source: str
    scores: dict[str, float]
    error: str | None = None

    @property
    def label(self) -> str | None:
        """The most probable label (None for an image that could not be read)."""
        return next(iter(self.scores), None)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass
class TagSummary:
    """What one ``mmsearch tag`` run did.

    Attributes:
        vocabulary: labels in the vocabulary.
        vocabulary_hash: fingerprint of labels and templates (a change re-scores all).
        scored: items scored in this run (0 when nothing was new).
        tagged: of those, items given at least one tag.
        tags: tags stored in this run.
        rescored_all: the vocabulary, templates, threshold, top or model changed, so
            every item was scored again (from stored embeddings; nothing decoded).
        seconds: wall-clock time of the run.
    """

    vocabulary: int = 0
    vocabulary_hash: str = ""
    scored: int = 0
    tagged: int = 0
    tags: int = 0
    rescored_all: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds"] = round(self.seconds, 3)
        return data


@dataclass(frozen=True)
class Explanation:
    """The hits of a compound query and the parts it was split into.

    Attributes:
        query: the query as typed.
        whole: its positive text (negative parts left out): what the plain query scores.
        parts: ``{"text", "negative", "relation"?}`` of each part, in order.
        combine: how the scores were combined (see :mod:`mmsearch.explain`).
        hits: best first; each with ``query_score`` and ``part_scores`` (one per part).
    """

    query: str
    whole: str
    parts: list[dict[str, Any]]
    combine: str
    hits: list[Hit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "whole": self.whole,
            "parts": self.parts,
            "combine": self.combine,
            "hits": [h.to_dict() for h in self.hits],
        }


@dataclass(frozen=True)
class DuplicateItem:
    """One image of a group of near-duplicates.

    Attributes:
        id: catalog id.
        path: the file.
        width: pixels.
        height: pixels.
        date: capture date (EXIF) or else file modification time, seconds since the epoch.
        score: cosine similarity of its embedding with the keeper's (1 for the keeper).
        pixel: thumbprint similarity with the keeper (None: not checked).
    """

    id: int
    path: str | None
    width: int | None
    height: int | None
    date: float | None
    score: float
    pixel: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-duplicate images; ``items[0]`` is the suggested keeper (largest resolution,
    then oldest). Nothing is ever deleted: this is a suggestion."""

    items: tuple[DuplicateItem, ...]

    @property
    def keeper(self) -> DuplicateItem:
        return self.items[0]

    def to_dict(self) -> dict[str, Any]:
        return {"keeper": self.keeper.id, "items": [i.to_dict() for i in self.items]}
