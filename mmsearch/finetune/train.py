"""Fine-tune the dual encoder on in-domain image–caption pairs, and measure the gain.

Contrastive training with open_clip's CLIP loss, starting from any model mmsearch can load.
A validation split is set aside (seeded) before training; retrieval recall is measured on
it before and after, and written as ``eval.json`` beside the saved model. The output
directory is a self-contained model: ``--model DIR`` accepts it everywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmsearch.encoder import Encoder
from mmsearch.errors import InputError, MMSearchError

from .data import PairData, load_pairs, split_pairs
from .evaluation import model_metrics
from .pairs import read_pairs

logger = logging.getLogger(__name__)

EVAL_FILE = "eval.json"


@dataclass
class FinetuneConfig:
    """Training settings.

    Attributes:
        epochs: passes over the training split.
        batch_size: pairs per optimiser step (before accumulation); the contrastive loss
            uses the other pairs of a batch as negatives, so larger is better.
        accum_steps: batches whose gradients are summed before a step.
        lr: peak learning rate (AdamW), reached after the warm-up.
        warmup: fraction of the run spent warming up linearly; then cosine decay.
        min_lr_ratio: where the cosine decay ends, as a fraction of ``lr``. Short runs from
            random weights learn markedly more with a floor (0.1) than decaying to 0.
        weight_decay: AdamW weight decay on matrices (not on biases, norms, embeddings).
        lock_image: freeze the image tower (except its last ``unlocked_image_groups``).
        unlocked_image_groups: layer groups left trainable at the top of a locked image tower.
        lock_text: freeze the text tower (except its last ``unlocked_text_layers``).
        unlocked_text_layers: layers left trainable at the top of a locked text tower.
        val_fraction: share of the pairs held out for validation.
        max_val: most pairs held out (recall on thousands of pairs is stable enough).
        seed: seeds the split, the batch order and the initialisation of new parameters.
        amp: mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling).
        max_seconds: stop training after this much time; the schedule then follows the
            elapsed time (warm-up and decay fit the budget) unless the epochs end first.
    """

    epochs: int = 10
    batch_size: int = 128
    accum_steps: int = 1
    lr: float = 5e-4
    warmup: float = 0.1
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    lock_image: bool = False
    unlocked_image_groups: int = 0
    lock_text: bool = False
    unlocked_text_layers: int = 0
    val_fraction: float = 0.1
    max_val: int = 2000
    seed: int = 0
    amp: bool = True
    max_seconds: float | None = None


@dataclass
class FinetuneResult:
    """What a fine-tuning run did."""

    out_dir: str
    before: dict[str, float]
    after: dict[str, float]
    train_pairs: int
    val_pairs: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    pairs_per_second: float = 0.0
    final_loss: float | None = None
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or "logit_scale" in name or "embedding" in name
        (no_decay if exempt else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def lr_at(progress: float, peak: float, warmup: float, min_ratio: float = 0.0) -> float:
    """The learning rate at ``progress`` (0 → 1) through a run: linear warm-up over the
    first ``warmup`` of it, then cosine decay from ``peak`` to ``min_ratio``·peak."""
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return peak * max(progress / warmup, 1e-3)
    decayed = (progress - warmup) / max(1e-9, 1.0 - warmup)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * decayed)))


def _lock(model: torch.nn.Module, cfg: FinetuneConfig) -> None:
    if cfg.lock_image:
        model.lock_image_tower(unlocked_groups=cfg.unlocked_image_groups)
    if cfg.lock_text:
        model.lock_text_tower(unlocked_layers=cfg.unlocked_text_layers)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not [n for n in trainable if "logit_scale" not in n]:  # Chinese-CLIP: clip.logit_scale
        raise MMSearchError("both towers are locked: nothing to train but the temperature")


class _Trainer:
    """One training run: the loop, its schedule, mixed precision and checkpoints."""

    def __init__(self, encoder: Encoder, data: PairData, cfg: FinetuneConfig) -> None:
        from open_clip.loss import ClipLoss

        self.encoder, self.data, self.cfg = encoder, data, cfg
        self.model = encoder.model
        self.loss_fn = ClipLoss()
        self.tokens = encoder.tokenizer(data.captions)
        self.opt = torch.optim.AdamW(
            _param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6
        )
        cuda = encoder.device.type == "cuda"
        self.amp_dtype = None
        if cuda and cfg.amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        batch = min(cfg.batch_size, len(data.captions))
        self.batch = batch
        self.steps_per_epoch = max(1, len(data.captions) // (batch * cfg.accum_steps))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step = 0
        self.seen = 0
        self.loss: float | None = None

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.amp_dtype)

    def _micro_batch(self, idx: torch.Tensor) -> float:
        dev = self.encoder.device
        images = self.data.images[idx].to(dev, non_blocking=True).float()
        tokens = self.tokens[idx].to(dev, non_blocking=True)
        # Batches repeat captions (a catalogue's "a red chair" ×20): encode each distinct
        # one once and share its features. Same loss and gradients, less text-tower work.
        unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        with self._autocast():
            img = self.model.encode_image(images, normalize=True)
            txt = self.model.encode_text(unique, normalize=True)[inverse]
            loss = self.loss_fn(img.float(), txt.float(), self.model.logit_scale.exp())
        self.scaler.scale(loss / self.cfg.accum_steps).backward()
        return float(loss.detach())

    def _progress(self, started: float) -> float:
        """How far through the run: by steps, or by time when a time budget ends it first."""
        progress = self.step / self.total_steps
        if self.cfg.max_seconds:
            progress = max(progress, (time.perf_counter() - started) / self.cfg.max_seconds)
        return progress

    def run(self, bar: Any) -> None:
        self.model.train()
        n = len(self.data.captions)
        started = time.perf_counter()
        cfg = self.cfg
        deadline = started + cfg.max_seconds if cfg.max_seconds else None
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=self.gen)
            for s in range(self.steps_per_epoch):
                lr = lr_at(self._progress(started), cfg.lr, cfg.warmup, cfg.min_lr_ratio)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                losses = []
                for a in range(cfg.accum_steps):
                    start = (s * cfg.accum_steps + a) * self.batch
                    losses.append(self._micro_batch(order[start : start + self.batch]))
                self.scaler.step(self.opt)
                self.scaler.update()
                self.opt.zero_grad(set_to_none=True)
                with torch.no_grad():  # as in CLIP: the temperature stays ≤ 100
                    self.model.logit_scale.clamp_(0, math.log(100))
                self.step += 1
                self.seen += self.batch * cfg.accum_steps
                self.loss = sum(losses) / len(losses)
                if bar is not None:
                    bar.update(self.batch * cfg.accum_steps)
                    if hasattr(bar, "set_postfix"):
                        bar.set_postfix(loss=f"{self.loss:.3f}", lr=f"{lr:.1e}", refresh=False)
                if deadline is not None and time.perf_counter() >= deadline:
                    return


def finetune(
    pairs_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model: str | os.PathLike[str] | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    config: FinetuneConfig | None = None,
    image_column: str = "image",
    caption_column: str = "caption",
    progress: Callable[[int, str], Any] | None = None,
) -> FinetuneResult:
    """Fine-tune ``model`` on the pairs of a file and save it to ``out_dir``.

    Args:
        pairs_path: CSV/TSV/JSONL of image paths and captions.
        out_dir: where the fine-tuned model (and ``eval.json``) is written.
        model: starting model (any form mmsearch accepts); default ViT-B-32.
        pretrained: its pretrained tag or checkpoint file.
        device: ``cpu``/``cuda``; default CUDA when available.
        config: training settings.
        image_column: column/key of image paths.
        caption_column: column/key of captions.
        progress: progress-bar factory ``(total, description)``.

    Returns:
        The run's :class:`FinetuneResult`; on Ctrl-C, the model trained so far is saved
        and the result says ``interrupted``.
    """
    cfg = config or FinetuneConfig()
    # Seeded without touching the caller's global RNG: its state is restored on return.
    with torch.random.fork_rng(devices=_cuda_devices()):
        torch.manual_seed(cfg.seed)
        return _finetune(
            pairs_path,
            out_dir,
            model,
            pretrained,
            device,
            cfg,
            image_column,
            caption_column,
            progress,
        )


def _cuda_devices() -> list[int]:
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


def _finetune(
    pairs_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model: str | os.PathLike[str] | None,
    pretrained: str | None,
    device: str | None,
    cfg: FinetuneConfig,
    image_column: str,
    caption_column: str,
    progress: Callable[[int, str], Any] | None,
) -> FinetuneResult:
    pairs = read_pairs(pairs_path, image_column, caption_column)
    if len(pairs.pairs) < 3:
        raise InputError(pairs_path, f"only {len(pairs.pairs)} usable pairs; need at least 3")
    train_pairs, val_pairs = split_pairs(pairs.pairs, cfg.val_fraction, cfg.max_val, cfg.seed)
    encoder = Encoder.load(model, pretrained, device=device)
    skipped = list(pairs.skipped)
    train = load_pairs(train_pairs, encoder, skipped, progress, "loading train images")
    val = load_pairs(val_pairs, encoder, skipped, progress, "loading val images")
    before = model_metrics(encoder, val)
    _lock(encoder.model, cfg)
    trainer = _Trainer(encoder, train, cfg)
    started = time.perf_counter()
    bar = (
        progress(trainer.total_steps * trainer.batch * cfg.accum_steps, "training")
        if progress
        else None
    )
    interrupted = False
    try:
        trainer.run(bar)
    except KeyboardInterrupt:
        interrupted = True
        logger.warning("interrupted: saving the model trained so far")
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - started
    encoder.model.eval()
    after = model_metrics(encoder, val)
    result = FinetuneResult(
        out_dir=str(Path(out_dir).resolve()),
        before=before,
        after=after,
        train_pairs=len(train.captions),
        val_pairs=len(val.captions),
        skipped=skipped,
        steps=trainer.step,
        seconds=round(seconds, 2),
        pairs_per_second=round(trainer.seen / seconds, 1) if seconds else 0.0,
        final_loss=trainer.loss,
        interrupted=interrupted,
    )
    _save(encoder, Path(out_dir), cfg, result)
    return result


def _save(encoder: Encoder, out: Path, cfg: FinetuneConfig, result: FinetuneResult) -> None:
    meta = {
        "finetune": asdict(cfg),
        "train_pairs": result.train_pairs,
        "steps": result.steps,
        "interrupted": result.interrupted,
    }
    encoder.save(out, meta=meta)
    report = {
        "before": result.before,
        "after": result.after,
        **{k: v for k, v in result.to_dict().items() if k not in ("before", "after")},
    }
    (out / EVAL_FILE).write_text(json.dumps(report, indent=2))
