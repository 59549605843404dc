"""``mmsearch language``: extra text encoders for other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .app import (
    _open,
    _progress,
    cli,
    echo_skipped,
    handle_errors,
    index_option,
    json_option,
)
from .training import _print_metrics_table, pairs_options

# -- languages: extra text encoders ---------------------------------------------------------


def _text_encoder_lines(encoders: list[dict[str, Any]]) -> list[str]:
    """``mmsearch info`` lines: the main tower, then each taught language."""
    if not encoders:
        return []
    lines = ["text encoders: main (the model's own)"]
    for e in encoders:
        r1, main_r1 = e["heldout"].get("t2i_r1"), e["main_heldout"].get("t2i_r1")
        state = " STALE (trained for another model: teach it again)" if e["stale"] else ""
        lines.append(
            f"          {e['name']}: lang {e['lang']}, held-out text→image R@1 {r1} "
            f"(main tower {main_r1}), {e['train_pairs']} training pairs, "
            f"context {e['context_length']}{state}"
        )
    return lines


@cli.group("language")
def language_group() -> None:
    """Teach the index a language: extra text encoders trained onto its image vectors.

    \b
      mmsearch language add zh pairs-zh.csv    train a Chinese text encoder (images kept)
      mmsearch language list                   the index's text encoders
      mmsearch query "一个红色的圆形"             Han characters: the zh encoder answers
    """


@language_group.command("add")
@click.argument("lang")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Name of the encoder [default: LANG]; an existing one is replaced.")
@pairs_options
@click.option("--epochs", default=30, show_default=True, type=click.IntRange(1))
@click.option("--batch-size", default=256, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=2e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Stop training after this long.")  # fmt: skip
@click.option("--context-length", type=click.IntRange(2),
              help="Token positions of the new tower [default: the model's, longer when "
              "captions need it].")  # fmt: skip
@click.option("--val-fraction", default=0.1, show_default=True,
              type=click.FloatRange(0, 1, min_open=True, max_open=True))  # fmt: skip
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--init", "init", help="Start from this model's text tower [default: the index's].")
@click.option("--init-pretrained", help="Pretrained tag or checkpoint of --init.")
@click.option("--device", help="cpu, cuda … [default: cuda when available].")
@index_option
@json_option
@click.pass_obj
@handle_errors
def language_add_cmd(
    obj: dict[str, Any],
    lang: str,
    pairs: Path,
    name: str | None,
    image_column: str,
    caption_column: str,
    epochs: int,
    batch_size: int,
    lr: float,
    max_seconds: float | None,
    context_length: int | None,
    val_fraction: float,
    seed: int,
    init: str | None,
    init_pretrained: str | None,
    device: str | None,
    index_dir: Path | None,
    as_json: bool,
) -> None:
    """Train a text encoder for LANG on the image–caption PAIRS (CSV/TSV/JSONL) against
    the index's frozen image tower, and add it to the index. Indexed images reuse their
    stored vectors; the index's vectors are not changed."""
    from ..finetune.language import LanguageConfig

    training = LanguageConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        max_seconds=max_seconds,
        context_length=context_length,
        val_fraction=val_fraction,
        seed=seed,
    )
    with _open(index_dir, device=device, create=False) as index:
        info = index.add_text_encoder(
            pairs,
            lang,
            name=name,
            training=training,
            init=init,
            init_pretrained=init_pretrained,
            image_column=image_column,
            caption_column=caption_column,
            progress=_progress(not obj["quiet"]),
        )
    if as_json:
        click.echo(json.dumps(info.to_dict()))
        return
    click.echo(
        f"text encoder {info.name} ({info.lang}): {info.train_pairs} pairs, "
        f"{info.reused_vectors} indexed images reused, {info.encoded_images} encoded, "
        f"{info.seconds:.0f} s"
    )
    _print_metrics_table({"main tower": info.main_heldout, info.name: info.heldout})
    for path, reason in info.skipped:
        echo_skipped(path, reason)


@language_group.command("list")
@index_option
@json_option
@handle_errors
def language_list_cmd(index_dir: Path | None, as_json: bool) -> None:
    """List the index's extra text encoders."""
    with _open(index_dir, create=False) as index:
        encoders = [e.to_dict() for e in index.text_encoders()]
    if as_json:
        click.echo(json.dumps(encoders))
        return
    for line in _text_encoder_lines(encoders) or ["text encoders: main (the model's own)"]:
        click.echo(line)


@language_group.command("remove")
@click.argument("name")
@index_option
@handle_errors
def language_remove_cmd(name: str, index_dir: Path | None) -> None:
    """Remove the extra text encoder NAME (queries in its language use the main tower)."""
    with _open(index_dir, create=False) as index:
        index.remove_text_encoder(name)
    click.echo(f"removed text encoder {name}")
