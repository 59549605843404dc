"""``mmsearch dups``: near-duplicate groups."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import (
    _open,
    cli,
    escape,
    handle_errors,
    index_option,
    json_option,
)


@cli.command("dups")
@click.option(
    "--threshold",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Least embedding cosine of a candidate pair [default: measured, see README].",
)
@click.option(
    "--pixel-threshold",
    type=click.FloatRange(-1, 1),
    default=None,
    help="Least thumbprint similarity of a pair's files [default: measured].",
)
@click.option("--no-pixel-check", is_flag=True, help="Trust the embeddings alone.")
@index_option
@json_option
@handle_errors
def dups_cmd(
    threshold: float | None,
    pixel_threshold: float | None,
    no_pixel_check: bool,
    index_dir: Path | None,
    as_json: bool,
) -> None:
    """List groups of near-duplicate images, largest first: the suggested keeper (most
    pixels, then oldest) is marked "keep", the others "dup". Nothing is deleted.

    \b
    Plain output: one line per image (keep|dup, tab, embedding score, tab, pixel score,
    tab, WxH, tab, path), a blank line between groups.
    """
    from ..duplicates import DEFAULT_THRESHOLD
    from ..nearcopy import DEFAULT_PIXEL_THRESHOLD

    pixel = pixel_threshold if pixel_threshold is not None else DEFAULT_PIXEL_THRESHOLD
    pixel = None if no_pixel_check else pixel
    with _open(index_dir, create=False) as index:
        groups = index.duplicates(
            threshold if threshold is not None else DEFAULT_THRESHOLD, pixel_threshold=pixel
        )
    if as_json:
        click.echo(json.dumps({"groups": [g.to_dict() for g in groups]}))
        return
    for n, group in enumerate(groups):
        if n:
            click.echo("")
        for item in group.items:
            role = "keep" if item.id == group.keeper.id else "dup"
            px = "-" if item.pixel is None else f"{item.pixel:.3f}"
            size = f"{item.width}x{item.height}" if item.width else "?"
            click.echo(f"{role}\t{item.score:.3f}\t{px}\t{size}\t{escape(item.path or '')}")
    images = sum(len(g.items) for g in groups)
    click.echo(f"{len(groups)} groups, {images} images", err=True)
