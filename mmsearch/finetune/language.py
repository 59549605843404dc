"""Teach an index a new language: train a text tower against its FROZEN image tower.

The images of the caption pairs are embedded once — an image whose content is indexed
already reuses its stored vector (same content hash), any other is encoded by the index
model's image tower — and never again: training only runs the text tower, so it is cheap
(the shapes demo: a few minutes on two CPU cores). The text tower starts from the index
model's own (same byte-level BPE tokenizer, which spells any script as UTF-8 bytes) or
another model's of the same architecture, and learns with a contrastive loss against the
fixed image vectors. The index's image vectors are read, never written.

Several images often share one caption ("一个红色的圆形"), so the loss counts every image
of the batch with the text's caption as a positive (multi-positive InfoNCE, both
directions); the plain CLIP loss would push those same-caption pairs apart.

Scripts that take several byte tokens a character (a Han character: 2-3 tokens) need more
positions than an English caption: when training captions do not fit the base tower's
context, the new tower gets a longer one (positional embeddings extended; see
:class:`LanguageConfig`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmsearch.catalog import Catalog
from mmsearch.catalog_base import from_blobs
from mmsearch.encoder import Encoder
from mmsearch.errors import InputError, InvalidValueError, MMSearchError
from mmsearch.media import content_hash, load_many

from .data import split_pairs
from .evaluation import retrieval_metrics
from .pairs import Pair, read_pairs
from .train import lr_at

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "text_tower.safetensors"
META_FILE = "text_tower.json"
#: Longest context a new tower is given on its own (longer only when asked for).
MAX_AUTO_CONTEXT = 256


@dataclass
class LanguageConfig:
    """Settings of a text-tower training run.

    Attributes:
        epochs: passes over the training captions.
        batch_size: captions per step; the other images of a batch are the negatives.
        lr: peak learning rate (AdamW), after a linear warm-up, then cosine decay.
        warmup: fraction of the run spent warming up.
        min_lr_ratio: where the decay ends, as a fraction of ``lr``.
        weight_decay: AdamW weight decay on matrices.
        val_fraction: share of the pairs held out to measure recall on.
        max_val: most pairs held out.
        seed: seeds the split, the batch order and new positions.
        max_seconds: stop after this much training time (the schedule follows the time).
        context_length: token positions of the new tower; None: the base tower's, or —
            when a training caption needs more — the longest caption's count rounded up to
            a multiple of 8 (at most :data:`MAX_AUTO_CONTEXT`).
    """

    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    warmup: float = 0.1
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.1
    val_fraction: float = 0.1
    max_val: int = 2000
    seed: int = 0
    max_seconds: float | None = None
    context_length: int | None = None


@dataclass
class TaughtTower:
    """A trained text tower and what was measured.

    Attributes:
        encoder: the index model with the trained text tower and its tokenizer (the
            image tower is the index's, untouched).
        heldout: recall of the new tower on the held-out pairs.
        main_heldout: recall of the index model's own text tower on the same pairs.
        train_pairs / val_pairs: pairs trained on / held out.
        reused_vectors: distinct images whose stored index vectors were used.
        encoded_images: distinct images encoded (not in the index).
        truncated: training captions longer than the context (cut).
        steps / seconds / final_loss: the run.
        skipped: rows of the pairs file not used, with reasons.
    """

    encoder: Encoder
    heldout: dict[str, float]
    main_heldout: dict[str, float]
    train_pairs: int
    val_pairs: int
    reused_vectors: int
    encoded_images: int
    truncated: int
    steps: int
    seconds: float
    final_loss: float | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


# -- the tower's weights ------------------------------------------------------------------


def _is_text_key(key: str) -> bool:
    return not key.startswith("visual.")


def text_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The text tower's parameters and buffers (everything but ``visual.*``), on CPU."""
    return {
        k: v.detach().to("cpu").contiguous()
        for k, v in model.state_dict().items()
        if _is_text_key(k)
    }


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A content hash of a text tower's weights (names, shapes and values)."""
    h = hashlib.blake2b(digest_size=10)
    for key in sorted(state):
        tensor = state[key].float().contiguous()
        h.update(f"{key}:{tuple(tensor.shape)};".encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def extend_context(model: torch.nn.Module, length: int, seed: int = 0) -> None:
    """Give an open_clip CLIP text tower ``length`` token positions (never fewer). The
    learned positions are kept; new ones start as the last learned one plus small noise.

    Raises:
        MMSearchError: the tower is not open_clip's built-in CLIP text transformer.
    """
    pos = getattr(model, "positional_embedding", None)
    if not isinstance(pos, torch.nn.Parameter) or getattr(model, "attn_mask", None) is None:
        raise MMSearchError("only open_clip's CLIP text tower can get a longer context")
    current = int(pos.shape[0])
    if length <= current:
        return
    gen = torch.Generator().manual_seed(seed)
    extra = pos.detach()[-1:].cpu().repeat(length - current, 1)
    extra = extra + 0.01 * torch.randn(extra.shape, generator=gen)
    grown = torch.cat([pos.detach().cpu(), extra]).to(pos.device, pos.dtype)
    model.positional_embedding = torch.nn.Parameter(grown)
    mask = torch.full((length, length), float("-inf")).triu_(1)
    model.attn_mask = mask.to(model.attn_mask.device, model.attn_mask.dtype)
    model.context_length = length


def _with_tower(
    base: Encoder, model: torch.nn.Module, context_length: int, identity: str, display: str
) -> Encoder:
    """An Encoder sharing ``base``'s image side, with ``model``'s text tower."""
    tokenizer = copy.copy(base.tokenizer)
    tokenizer.context_length = context_length
    cfg = copy.deepcopy(base.model_cfg)
    cfg.setdefault("text_cfg", {})["context_length"] = context_length
    spec = dataclasses.replace(base.spec, identity=identity, display=display)
    return Encoder(spec, model, base.preprocess, tokenizer, base.device, cfg)


def tower_identity(base_identity: str, state: dict[str, torch.Tensor]) -> str:
    """Identity of the model made of ``base_identity``'s image tower and this text tower."""
    return f"{base_identity}+text:{fingerprint(state)}"


def save_tower(encoder: Encoder, out_dir: str | os.PathLike[str], meta: dict[str, Any]) -> Path:
    """Write the text tower's weights and ``text_tower.json`` to ``out_dir``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(text_state(encoder.model), str(out / WEIGHTS_FILE))
    info = {"context_length": encoder.context_length, "identity": encoder.spec.identity, **meta}
    (out / META_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


def load_tower(base: Encoder, directory: str | os.PathLike[str], display: str) -> Encoder:
    """The encoder of a saved text tower: ``base``'s model (copied) with its weights.

    Raises:
        MMSearchError: the files are missing, unreadable or do not fit ``base``.
    """
    from safetensors.torch import load_file

    path = Path(directory)
    try:
        meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
        state = load_file(str(path / WEIGHTS_FILE))
    except (OSError, ValueError) as exc:
        raise MMSearchError(f"cannot read the text encoder in {path}: {exc}") from exc
    model = copy.deepcopy(base.model)
    extend_context(model, int(meta["context_length"]))
    _load_text_state(model, state, str(path))
    return _with_tower(base, model.eval(), int(meta["context_length"]), meta["identity"], display)


def _load_text_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = {k: v for k, v in model.state_dict().items() if _is_text_key(k)}
    bad = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if bad:
        raise MMSearchError(f"the text tower of {source} does not fit this model ({bad[0]})")
    model.load_state_dict(state, strict=False)


# -- training data ------------------------------------------------------------------------


def image_vectors(
    catalog: Catalog,
    encoder: Encoder,
    paths: Sequence[str],
    skipped: list[tuple[str, str]],
    progress: Callable[[int, str], Any] | None = None,
) -> tuple[dict[str, np.ndarray], int, int]:
    """Unit vectors of the images at ``paths`` in the index's embedding space: the stored
    vector of an indexed image (same content hash), else encoded by the image tower.

    Returns:
        path → vector, and how many were reused and encoded. Unreadable files are added
        to ``skipped``.
    """
    hashes: dict[str, str] = {}
    for path in paths:
        try:
            hashes[path] = content_hash(path, algorithm=catalog.file_hash)
        except InputError as exc:
            skipped.append((path, exc.reason))
    stored = catalog.embeddings_by_hash("image", hashes.values())
    out: dict[str, np.ndarray] = {}
    missing = []
    for path, digest in hashes.items():
        blob = stored.get(digest)
        if blob is None:
            missing.append(path)
        else:  # float16 in the catalog: back to unit length in float32
            vec = from_blobs([blob], encoder.dim)[0]
            out[path] = vec / max(float(np.linalg.norm(vec)), 1e-12)
    reused = len(out)
    bar = progress(len(missing), "encoding images") if progress and missing else None
    batch: list[tuple[str, torch.Tensor]] = []

    def flush() -> None:
        vecs = encoder.encode_image_tensors([t for _, t in batch])
        out.update((p, v) for (p, _), v in zip(batch, vecs, strict=True))
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    for path, _, tensor, error in load_many(missing, transform=encoder.preprocess):
        if error is not None:
            skipped.append((path, error.reason))
            continue
        batch.append((path, tensor))
        if len(batch) == 64:
            flush()
    if batch:
        flush()
    if bar is not None:
        bar.close()
    return out, reused, len(out) - reused


def _context_for(base: Encoder, captions: Sequence[str], requested: int | None) -> int:
    """The new tower's context length (see :class:`LanguageConfig`)."""
    own = base.context_length
    if requested is not None:
        if requested < own:
            raise InvalidValueError(f"context length {requested} is below the model's {own}")
        return requested
    longest = max(base.count_tokens(c) for c in captions)
    if longest <= own:
        return own
    return min(MAX_AUTO_CONTEXT, int(math.ceil(longest / 8) * 8))


# -- training -----------------------------------------------------------------------------


def _caption_ids(captions: Sequence[str]) -> torch.Tensor:
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    return torch.tensor([ids[c] for c in captions])


def _multi_positive_loss(
    text: torch.Tensor, image: torch.Tensor, cid: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """InfoNCE both ways where every pair with the same caption is a positive."""
    logits = scale * text @ image.T
    positive = cid[:, None] == cid[None, :]
    masked = logits.masked_fill(~positive, float("-inf"))
    t2i = torch.logsumexp(logits, 1) - torch.logsumexp(masked, 1)
    i2t = torch.logsumexp(logits, 0) - torch.logsumexp(masked, 0)
    return (t2i.mean() + i2t.mean()) / 2


def _encode_text(model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """Unit text embeddings, the sequence cut after the batch's last end token: open_clip's
    CLIP text tower has a causal mask and pools at the end token (the largest id), so the
    positions after it change nothing — and a short caption costs a fraction of the work."""
    if getattr(model, "text_pool_type", None) != "argmax":
        return model.encode_text(tokens, normalize=True)
    from open_clip.transformer import text_global_pool

    seq = int(tokens.argmax(dim=1).max()) + 1
    tokens = tokens[:, :seq]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:seq].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:seq, :seq])
    x = text_global_pool(model.ln_final(x), tokens, "argmax")
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection
    return torch.nn.functional.normalize(x, dim=-1)


class _CompactEmbedding(contextlib.AbstractContextManager["_CompactEmbedding"]):
    """While training, the token embedding holds only the rows of the ids the captions use
    (a few hundred of 49,408): the optimiser then updates (and keeps moments for) those
    rows alone — the same result, since unused rows get no gradient and no decay — which
    takes most of the time out of a step. The ids are renumbered in order, so the end
    token stays the largest (argmax pooling finds it); the rows go back on exit."""

    def __init__(self, model: Any, tokens: torch.Tensor) -> None:
        self.model = model
        self.full = model.token_embedding
        self.used = torch.unique(tokens)
        remap = torch.zeros(self.full.num_embeddings, dtype=torch.long)
        remap[self.used] = torch.arange(len(self.used))
        self.tokens = remap[tokens]

    def __enter__(self) -> _CompactEmbedding:
        weight = self.full.weight.detach()[self.used.to(self.full.weight.device)].clone()
        self.model.token_embedding = torch.nn.Embedding.from_pretrained(weight, freeze=False)
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            rows = self.used.to(self.full.weight.device)
            self.full.weight[rows] = self.model.token_embedding.weight.detach()
        self.model.token_embedding = self.full


def _train(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    cid: torch.Tensor,
    cfg: LanguageConfig,
    progress: Callable[[int, str], Any] | None,
) -> tuple[int, float | None]:
    """The training loop over the text tower only; returns (steps, last loss)."""
    with _CompactEmbedding(model, tokens) as compact:
        return _train_loop(model, compact.tokens, targets, cid, cfg, progress)


def _train_loop(
    model: Any,
    tokens: torch.Tensor,
    targets: torch.Tensor,
    cid: torch.Tensor,
    cfg: LanguageConfig,
    progress: Callable[[int, str], Any] | None,
) -> tuple[int, float | None]:
    params = [(n, p) for n, p in model.named_parameters() if _is_text_key(n) and p.requires_grad]
    # As in fine-tuning: no decay on biases, norms, embeddings and the temperature.
    exempt = [p for n, p in params if p.ndim < 2 or "embedding" in n or "logit_" in n]
    decay = [p for n, p in params if not any(p is q for q in exempt)]
    no_decay = exempt
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.0,
    )
    n = len(tokens)
    batch = min(cfg.batch_size, n)
    per_epoch = max(1, n // batch)
    total = per_epoch * cfg.epochs
    gen = torch.Generator().manual_seed(cfg.seed)
    device = next(model.parameters()).device
    tokens, targets, cid = tokens.to(device), targets.to(device), cid.to(device)
    bar = progress(total, "training text tower") if progress else None
    started = time.perf_counter()
    step, loss_value = 0, None
    model.train()
    try:
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=gen).to(device)
            for s in range(per_epoch):
                progress_frac = step / total
                if cfg.max_seconds:
                    elapsed = time.perf_counter() - started
                    progress_frac = max(progress_frac, elapsed / cfg.max_seconds)
                    if elapsed >= cfg.max_seconds:
                        return step, loss_value
                lr = lr_at(progress_frac, cfg.lr, cfg.warmup, cfg.min_lr_ratio)
                for group in opt.param_groups:
                    group["lr"] = lr
                idx = order[s * batch : (s + 1) * batch]
                # Repeated captions ("一个红色的圆形" ×20 a batch): encode each once.
                unique, inverse = torch.unique(tokens[idx], dim=0, return_inverse=True)
                text = _encode_text(model, unique)[inverse]
                loss = _multi_positive_loss(text, targets[idx], cid[idx], model.logit_scale.exp())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():  # as in CLIP: the temperature stays <= 100
                    model.logit_scale.clamp_(0, math.log(100))
                step += 1
                loss_value = float(loss.detach())
                if bar is not None:
                    bar.update(1)
    finally:
        model.eval()
        if bar is not None:
            bar.close()
    return step, loss_value


def _heldout(encoder: Encoder, captions: list[str], images: np.ndarray) -> dict[str, float]:
    texts = np.concatenate(
        [encoder.encode_texts(captions[i : i + 256]) for i in range(0, len(captions), 256)]
    )
    return retrieval_metrics(images, texts, captions)


def teach_text_tower(
    catalog: Catalog,
    base: Encoder,
    pairs_path: str | os.PathLike[str],
    config: LanguageConfig | None = None,
    init: Encoder | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    display: str = "",
    progress: Callable[[int, str], Any] | None = None,
) -> TaughtTower:
    """Train a text tower for the captions of a pairs file against ``base``'s frozen
    image tower (see the module docs).

    Args:
        catalog: the index's catalog: indexed images reuse their stored vectors.
        base: the index model (left untouched: the new tower is a copy).
        pairs_path: CSV/TSV/JSONL of image paths and captions in the new language.
        config: training settings.
        init: a model whose text tower (same architecture) to start from; default base's.
        image_column / caption_column: columns of the pairs file.
        display: a name for the new encoder in messages.
        progress: progress-bar factory ``(total, description)``.

    Raises:
        InputError: too few usable pairs.
        MMSearchError: ``init``'s text tower does not fit ``base``.
    """
    cfg = config or LanguageConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _teach(
            catalog, base, pairs_path, cfg, init, image_column, caption_column, display, progress
        )


def _teach(
    catalog: Catalog,
    base: Encoder,
    pairs_path: str | os.PathLike[str],
    cfg: LanguageConfig,
    init: Encoder | None,
    image_column: str,
    caption_column: str,
    display: str,
    progress: Callable[[int, str], Any] | None,
) -> TaughtTower:
    pairs_file = read_pairs(pairs_path, image_column, caption_column)
    skipped = list(pairs_file.skipped)
    vectors, reused, encoded = image_vectors(
        catalog, base, sorted({p.image for p in pairs_file.pairs}), skipped, progress
    )
    usable = [p for p in pairs_file.pairs if p.image in vectors]
    if len(usable) < 3:
        raise InputError(pairs_path, f"only {len(usable)} usable pairs; need at least 3")
    train, val = split_pairs(usable, cfg.val_fraction, cfg.max_val, cfg.seed)
    val_images = _stack(vectors, val)
    base.model.eval()
    main_heldout = _heldout(base, [p.caption for p in val], val_images)

    model = copy.deepcopy(base.model)
    for name, p in model.named_parameters():
        p.requires_grad_(_is_text_key(name))
    if init is not None:
        _load_text_state(model, text_state(init.model), init.spec.display)
    context = _context_for(base, [p.caption for p in usable], cfg.context_length)
    extend_context(model, context, cfg.seed)
    captions = [p.caption for p in train]
    work = _with_tower(base, model, context, base.spec.identity, display)
    truncated = sum(1 for c in captions if work.is_truncated(c))
    if truncated:
        logger.warning("%d training captions are longer than %d tokens: cut", truncated, context)
    started = time.perf_counter()
    tokens = work.tokenizer(captions)
    targets = torch.from_numpy(_stack(vectors, train))
    steps, loss = _train(model, tokens, targets, _caption_ids(captions), cfg, progress)
    seconds = time.perf_counter() - started
    identity = tower_identity(base.spec.identity, text_state(model))
    taught = _with_tower(base, model, context, identity, display or identity)
    return TaughtTower(
        encoder=taught,
        heldout=_heldout(taught, [p.caption for p in val], val_images),
        main_heldout=main_heldout,
        train_pairs=len(train),
        val_pairs=len(val),
        reused_vectors=reused,
        encoded_images=encoded,
        truncated=truncated,
        steps=steps,
        seconds=round(seconds, 2),
        final_loss=loss,
        skipped=skipped,
    )


def _stack(vectors: dict[str, np.ndarray], pairs: Sequence[Pair]) -> np.ndarray:
    return np.stack([vectors[p.image] for p in pairs]).astype(np.float32)
