"""``mmsearch classify`` and ``mmsearch tag``: zero-shot labels."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import (
    F,
    _open,
    cli,
    echo_skipped,
    escape,
    handle_errors,
    index_option,
    json_option,
    model_options,
)


def _labels(labels: str | None, labels_file: Path | None, default: bool) -> list[str]:
    from ..zeroshot import default_vocabulary, parse_labels, read_labels

    if labels and labels_file:
        raise click.UsageError("give --labels or --labels-file, not both")
    if labels:
        return parse_labels(labels)
    if labels_file:
        return read_labels(labels_file)
    if default:
        return default_vocabulary()
    raise click.UsageError("give --labels 'cat,dog,car' or --labels-file FILE")


def label_options(func: F) -> F:
    func = click.option(
        "--template",
        "templates",
        multiple=True,
        help='Prompt template, {} = the label [default: "a photo of a {}."]. Repeatable: '
        "the prompts' embeddings are averaged.",
    )(func)
    func = click.option(
        "--labels-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Labels, one per line (# comments).",
    )(func)
    return func


@cli.command("classify")
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", help='Comma-separated labels, e.g. "cat,dog,car".')
@label_options
@click.option("-n", "--show", default=3, show_default=True, type=click.IntRange(1),
              help="Labels printed per image (--json prints all).")  # fmt: skip
@model_options
@index_option
@json_option
@handle_errors
def classify_cmd(
    images: tuple[Path, ...],
    labels: str | None,
    labels_file: Path | None,
    templates: tuple[str, ...],
    show: int,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    index_dir: Path | None,
    as_json: bool,
) -> None:
    """Zero-shot: each image's probability for each label (softmax over the labels).

    Uses --model, else the index's model.
    """
    from ..zeroshot import classify

    names = _labels(labels, labels_file, default=False)
    if model is not None:
        from ..encoder import Encoder  # torch: only a command that runs a model imports it

        results = classify(Encoder.load(model, pretrained, device), images, names, templates)
    else:
        with _open(index_dir, model, pretrained, device, create=False) as index:
            results = index.classify(images, names, templates or ())
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results]))
        return
    for r in results:
        if r.error:
            echo_skipped(r.source, r.error)
            continue
        best = list(r.scores.items())[:show]
        click.echo(escape(r.source) + "\t" + "\t".join(f"{name} {p:.3f}" for name, p in best))


@cli.command("tag")
@label_options
@click.option("--threshold", type=click.FloatRange(0, 1), default=None,
              help="Least probability a tag needs [default: 0.1].")  # fmt: skip
@click.option("--top", type=click.IntRange(1), default=None, help="Most tags per image [3].")
@model_options
@index_option
@json_option
@handle_errors
def tag_cmd(
    labels_file: Path | None,
    templates: tuple[str, ...],
    threshold: float | None,
    top: int | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    index_dir: Path | None,
    as_json: bool,
) -> None:
    """Tag every indexed image with labels of a vocabulary (default: a built-in list of
    everyday subjects). Incremental: only new images are scored, unless the vocabulary or
    settings changed; scoring uses stored embeddings, so no image is read again."""
    from ..zeroshot import DEFAULT_THRESHOLD, DEFAULT_TOP

    names = _labels(None, labels_file, default=True)
    with _open(index_dir, model, pretrained, device, create=False) as index:
        summary = index.tag(
            names,
            templates or (),
            threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
            top=top or DEFAULT_TOP,
        )
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    click.echo(
        f"vocabulary {summary.vocabulary} labels, scored {summary.scored} images"
        f"{' (all: the vocabulary or settings changed)' if summary.rescored_all else ''}, "
        f"tagged {summary.tagged} with {summary.tags} tags in {summary.seconds:.1f}s"
    )
