"""``mmsearch finetune`` and ``mmsearch eval``: fine-tuning on image–caption pairs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .app import (
    F,
    Interrupted,
    _progress,
    cli,
    echo_skipped,
    handle_errors,
    json_option,
    model_options,
)


def pairs_options(func: F) -> F:
    func = click.option(
        "--caption-column",
        default="caption",
        show_default=True,
        help="Column (or JSONL key) of the captions.",
    )(func)
    return click.option(
        "--image-column",
        default="image",
        show_default=True,
        help="Column (or JSONL key) of the image paths.",
    )(func)


def _print_metrics_table(rows: dict[str, dict[str, float]]) -> None:
    from ..finetune.evaluation import METRIC_KEYS

    click.echo("            " + "  ".join(f"{k:>7}" for k in METRIC_KEYS))
    for name, metrics in rows.items():
        click.echo(f"{name:<12}" + "  ".join(f"{metrics[k]:>7.3f}" for k in METRIC_KEYS))


@cli.command("finetune")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write the fine-tuned model to.",
)
@pairs_options
@click.option("--epochs", default=10, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(2))
@click.option(
    "--accum-steps",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Batches whose gradients are summed per optimiser step.",
)
@click.option(
    "--lr",
    default=5e-4,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Peak learning rate.",
)
@click.option(
    "--warmup",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Fraction of steps for linear warm-up (then cosine decay).",
)
@click.option(
    "--min-lr-ratio",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Where the cosine decay ends, as a fraction of --lr.",
)
@click.option("--weight-decay", default=0.1, show_default=True, type=click.FloatRange(min=0))
@click.option("--lock-image", is_flag=True, help="Freeze the image tower.")
@click.option(
    "--unlocked-image-groups",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="With --lock-image: last layer groups left trainable.",
)
@click.option("--lock-text", is_flag=True, help="Freeze the text tower.")
@click.option(
    "--unlocked-text-layers",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="With --lock-text: last layers left trainable.",
)
@click.option(
    "--val-fraction",
    default=0.1,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    help="Share of pairs held out for validation.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--no-amp", is_flag=True, help="Full precision on the GPU too.")
@click.option(
    "--max-seconds",
    type=click.FloatRange(min=0, min_open=True),
    help="Stop training after this long.",
)
@model_options
@json_option
@click.pass_obj
@handle_errors
def finetune_cmd(
    obj: dict[str, Any],
    pairs: Path,
    out_dir: Path,
    image_column: str,
    caption_column: str,
    epochs: int,
    batch_size: int,
    accum_steps: int,
    lr: float,
    warmup: float,
    min_lr_ratio: float,
    weight_decay: float,
    lock_image: bool,
    unlocked_image_groups: int,
    lock_text: bool,
    unlocked_text_layers: int,
    val_fraction: float,
    seed: int,
    no_amp: bool,
    max_seconds: float | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Fine-tune the encoders on image–caption PAIRS (CSV/TSV/JSONL) and save to --out.

    Recall on a held-out split is measured before and after, printed, and written to
    OUT/eval.json. Use the result with `--model OUT` (re-index with --reembed).
    """
    from ..finetune import FinetuneConfig, finetune

    cfg = FinetuneConfig(
        epochs=epochs,
        batch_size=batch_size,
        accum_steps=accum_steps,
        lr=lr,
        warmup=warmup,
        min_lr_ratio=min_lr_ratio,
        weight_decay=weight_decay,
        lock_image=lock_image,
        unlocked_image_groups=unlocked_image_groups,
        lock_text=lock_text,
        unlocked_text_layers=unlocked_text_layers,
        val_fraction=val_fraction,
        seed=seed,
        amp=not no_amp,
        max_seconds=max_seconds,
    )
    result = finetune(
        pairs,
        out_dir,
        model=model,
        pretrained=pretrained,
        device=device,
        config=cfg,
        image_column=image_column,
        caption_column=caption_column,
        progress=_progress(not obj["quiet"]),
    )
    if as_json:
        click.echo(json.dumps(result.to_dict()))
    else:
        click.echo(
            f"trained on {result.train_pairs} pairs ({result.steps} steps, "
            f"{result.seconds:.0f}s, {result.pairs_per_second:.0f} pairs/s); "
            f"validated on {result.val_pairs}"
        )
        _print_metrics_table({"before": result.before, "after": result.after})
        click.echo(f"model saved to {result.out_dir}")
    for path, reason in result.skipped:
        echo_skipped(path, reason)
    if result.interrupted:
        raise Interrupted("interrupted: the model trained so far was saved")


@cli.command("eval")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pairs_options
@model_options
@json_option
@click.pass_obj
@handle_errors
def eval_cmd(
    obj: dict[str, Any],
    pairs: Path,
    image_column: str,
    caption_column: str,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    as_json: bool,
) -> None:
    """Retrieval recall@1/5/10 (text→image, image→text) of a model on PAIRS."""
    from ..finetune import evaluate

    metrics, parsed = evaluate(
        pairs,
        model=model,
        pretrained=pretrained,
        device=device,
        image_column=image_column,
        caption_column=caption_column,
        progress=_progress(not obj["quiet"]),
    )
    if as_json:
        click.echo(json.dumps(metrics))
    else:
        _print_metrics_table({"model": metrics})
        click.echo(f"{int(metrics['n'])} pairs")
    for path, reason in parsed.skipped:
        echo_skipped(path, reason)
