"""Zero-shot labels: classify images against a list of labels, and tag a whole library.

A label's vector is the normalised mean of its prompts' text embeddings (one prompt per
template, e.g. ``"a photo of a {}."``: prompt ensembling, as in the CLIP paper). An
image's label probabilities are the softmax over labels of its cosine similarities times
the model's logit scale. Tagging scores the images' *stored* embeddings, so changing the
vocabulary never decodes an image again.

No torch here: the encoder is used through its methods (``encode_texts``,
``encode_images``, ``logit_scale``, ``image_size``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from .errors import InputError, QueryError
from .media import draft_size, load_image
from .results import Classification, TagSummary

if TYPE_CHECKING:  # SQLAlchemy: imported only by what writes tags
    from .catalog import Catalog

logger = logging.getLogger(__name__)

#: Prompt templates used when none are given.
DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)
#: Tags kept per item when not told otherwise, and their least probability.
DEFAULT_TOP = 3
DEFAULT_THRESHOLD = 0.1
#: Catalog meta key of the tagging state (vocabulary hash, settings, high-water id).
TAG_STATE_KEY = "tags:state"
_BATCH = 64


class LabelEncoder(Protocol):
    """What zero-shot labelling needs of a model (:class:`mmsearch.encoder.Encoder`)."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...
    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...
    @property
    def logit_scale(self) -> float: ...
    @property
    def image_size(self) -> int: ...


def parse_labels(text: str) -> list[str]:
    """``"cat, dog,car"`` → ``["cat", "dog", "car"]`` (empty entries dropped, order kept,
    duplicates once)."""
    return list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))


def read_labels(path: str | os.PathLike[str]) -> list[str]:
    """Labels from a file: one per line; blank lines and ``#`` comments ignored.

    Raises:
        InputError: the file cannot be read.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(str(path), f"cannot read labels: {exc}") from exc
    return _clean(lines)


def default_vocabulary() -> list[str]:
    """The built-in vocabulary of everyday photo subjects (``mmsearch/data/tags.txt``)."""
    text = resources.files("mmsearch").joinpath("data/tags.txt").read_text(encoding="utf-8")
    return _clean(text.splitlines())


def _clean(lines: Sequence[str]) -> list[str]:
    kept = (line.split("#", 1)[0].strip() for line in lines)
    return list(dict.fromkeys(line for line in kept if line))


def prompts(label: str, templates: Sequence[str]) -> list[str]:
    """The prompts of one label: each template with ``{}`` replaced by the label."""
    return [t.replace("{}", label) for t in templates]


def check_templates(templates: Sequence[str]) -> tuple[str, ...]:
    """The templates to use (the defaults when none); each must contain ``{}``."""
    templates = tuple(templates) or DEFAULT_TEMPLATES
    for template in templates:
        if "{}" not in template:
            raise QueryError(f"template {template!r} has no {{}} where the label goes")
    return templates


def label_vectors(
    encoder: LabelEncoder, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> np.ndarray:
    """(len(labels), dim) unit rows: each label's prompt embeddings averaged."""
    if not labels:
        raise QueryError("no labels given")
    templates = check_templates(templates)
    texts = [p for label in labels for p in prompts(label, templates)]
    encoded = np.concatenate(
        [encoder.encode_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)]
    )
    means = encoded.reshape(len(labels), len(templates), -1).mean(axis=1)
    return (means / np.linalg.norm(means, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def probabilities(vectors: np.ndarray, labels: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N, L) softmax over labels of ``logit_scale`` × cosine similarity."""
    logits = logit_scale * (np.asarray(vectors, dtype=np.float32) @ labels.T)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def classify(
    encoder: LabelEncoder,
    images: Sequence[str | os.PathLike[str] | Image.Image],
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> list[Classification]:
    """Each image's label probabilities, in input order. An image file that cannot be
    read gets an empty result with its reason; the others are classified."""
    label_vecs = label_vectors(encoder, labels, templates)
    out: list[Classification | None] = [None] * len(images)
    loaded: list[tuple[int, Image.Image]] = []
    for n, image in enumerate(images):
        if isinstance(image, Image.Image):
            loaded.append((n, image))
            continue
        try:
            loaded.append((n, load_image(image, draft_size=draft_size(encoder.image_size)).image))
        except InputError as exc:
            out[n] = Classification(os.fspath(image), {}, error=exc.reason)
    for start in range(0, len(loaded), _BATCH):
        batch = loaded[start : start + _BATCH]
        probs = probabilities(
            encoder.encode_images([img for _, img in batch]), label_vecs, encoder.logit_scale
        )
        for (n, _), row in zip(batch, probs, strict=True):
            source = images[n]
            name = f"<image {n}>" if isinstance(source, Image.Image) else os.fspath(source)
            out[n] = Classification(name, _ranked(labels, row))
    return [c for c in out if c is not None]


def _ranked(labels: Sequence[str], probs: np.ndarray) -> dict[str, float]:
    order = np.argsort(-probs, kind="stable")
    return {labels[i]: float(probs[i]) for i in order}


def vocabulary_hash(labels: Sequence[str], templates: Sequence[str]) -> str:
    """Fingerprint of a vocabulary and its templates."""
    data = json.dumps({"labels": list(labels), "templates": list(templates)})
    return hashlib.blake2b(data.encode(), digest_size=8).hexdigest()


def tag_library(
    catalog: Catalog,
    get_encoder: Callable[[], LabelEncoder],
    model: str,
    dim: int,
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    threshold: float = DEFAULT_THRESHOLD,
    top: int = DEFAULT_TOP,
) -> TagSummary:
    """Score indexed images against ``labels`` and store their tags (incremental).

    Each image keeps its ``top`` most probable labels whose probability reaches
    ``threshold``. Only images added since the last run are scored, unless the vocabulary,
    templates, threshold, top or model changed: then all are, from stored embeddings.

    Args:
        catalog: the index's catalog.
        get_encoder: returns the model; called only when something must be scored.
        model: identity of the index's model.
        dim: embedding dimension.
        labels: the vocabulary.
        templates: prompt templates (``{}`` = the label).
        threshold: least probability a tag needs.
        top: most tags per image.
    """
    started = time.perf_counter()
    templates = check_templates(templates)
    if not labels:
        raise QueryError("empty tag vocabulary")
    if top < 1:
        raise QueryError("top must be at least 1")
    wanted = {
        "vocabulary": vocabulary_hash(labels, templates),
        "threshold": threshold,
        "top": top,
        "model": model,
    }
    raw = catalog.get_meta(TAG_STATE_KEY)
    state: dict[str, Any] = json.loads(raw) if raw else {}
    same = all(state.get(key) == value for key, value in wanted.items())
    after = int(state.get("through", -1)) if same else -1
    summary = TagSummary(len(labels), wanted["vocabulary"], rescored_all=not same)
    ids = catalog.ids("image")
    if not same:
        catalog.replace_tags([], clear=None)
    if len(ids) and int(ids[-1]) > after:
        encoder = get_encoder()
        vectors = label_vectors(encoder, labels, templates)
        for batch_ids, embeddings in catalog.iter_embeddings("image", dim, after=after):
            rows = _tags(batch_ids, probabilities(embeddings, vectors, encoder.logit_scale),
                         labels, threshold, top)  # fmt: skip
            catalog.replace_tags(rows, clear=batch_ids.tolist())
            after = int(batch_ids[-1])
            catalog.set_meta(TAG_STATE_KEY, json.dumps({**wanted, "through": after}))
            summary.scored += len(batch_ids)
            summary.tags += len(rows)
            summary.tagged += len({r[0] for r in rows})
    catalog.set_meta(TAG_STATE_KEY, json.dumps({**wanted, "through": after}))
    summary.seconds = time.perf_counter() - started
    logger.info("tagged %d of %d images scored", summary.tagged, summary.scored)
    return summary


def _tags(
    ids: np.ndarray, probs: np.ndarray, labels: Sequence[str], threshold: float, top: int
) -> list[tuple[int, str, float]]:
    """(item, label, probability) of each row's ``top`` labels reaching ``threshold``."""
    top = min(top, probs.shape[1])
    best = np.argpartition(-probs, top - 1, axis=1)[:, :top]
    rows = []
    for item_id, row, cols in zip(ids, probs, best, strict=True):
        for col in cols:
            if row[col] >= threshold:
                rows.append((int(item_id), labels[col], float(row[col])))
    return rows
