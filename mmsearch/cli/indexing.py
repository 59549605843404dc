"""``mmsearch index``: bring an index up to date with folders of images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..status import ExitStatus
from .app import (
    _open,
    _progress,
    cli,
    echo_skipped,
    escape,
    handle_errors,
    index_option,
    json_option,
    model_options,
)


@cli.command("index")
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--texts",
    "text_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Text corpus: .txt (a line each), .jsonl or .csv/.tsv. Repeatable.",
)
@click.option("--column", help="CSV/TSV column holding the text [default: text].")
@click.option("--field", default="text", show_default=True, help="JSONL field holding the text.")
@click.option(
    "--exclude", multiple=True, help="Leave out files/folders matching this glob. Repeatable."
)
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(1))
@click.option(
    "--workers", type=click.IntRange(1), help="Image decoding threads [default: from the cores]."
)
@click.option(
    "--reembed", is_flag=True, help="Encode everything again with --model (switch models)."
)
@click.option(
    "--retry-skipped",
    is_flag=True,
    help="Try again files remembered as undecodable (e.g. after installing mmsearch[formats]).",
)
@click.option(
    "--prune",
    is_flag=True,
    help="Remove what is not there, even where a folder looks offline (missing, empty, "
    "unmounted) or most of its items are gone.",
)
@click.option(
    "--no-follow-outside",
    is_flag=True,
    help="Do not follow symbolic links that lead outside the folders given.",
)
@click.option(
    "--index-type",
    type=click.Choice(["auto", "flat", "ivfpq"]),
    help="ANN index: auto (exact while small, IVF-PQ beyond), flat or ivfpq. Kept.",
)
@click.option(
    "--memory-budget",
    metavar="SIZE",
    help="Most RAM the vector index may hold, e.g. 512M, 2G. Kept.",
)
@click.option(
    "--recall-target",
    type=click.FloatRange(0, 1, min_open=True),
    help="recall@10 that IVF nprobe is tuned to reach [default: 0.95]. Kept.",
)
@click.option(
    "--no-wait",
    is_flag=True,
    help=f"If another process is writing the index, fail (exit {int(ExitStatus.BUSY)}) "
    "instead of waiting for it.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    metavar="[ADDRESS]",
    help="Decode and encode on a Ray cluster: local (default: start one here), auto, "
    "ray://HOST:PORT or HOST:PORT. Needs mmsearch[ray].",
)
@click.option(
    "--ray-workers",
    type=click.IntRange(1),
    help="Ray encoding workers [default: one per GPU of the cluster, else per CPU].",
)
@model_options
@index_option
@json_option
@click.pass_obj
@handle_errors
def index_cmd(
    obj: dict[str, Any],
    paths: tuple[Path, ...],
    text_files: tuple[Path, ...],
    column: str | None,
    field: str,
    exclude: tuple[str, ...],
    batch_size: int,
    workers: int | None,
    reembed: bool,
    retry_skipped: bool,
    no_follow_outside: bool,
    prune: bool,
    index_type: str | None,
    memory_budget: str | None,
    recall_target: float | None,
    no_wait: bool,
    ray_address: str | None,
    ray_workers: int | None,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    index_dir: Path | None,
    as_json: bool,
) -> None:
    """Add images under PATHS (and --texts corpora) to the index, or bring them up to date.

    Unchanged files are skipped, changed ones re-encoded, deleted ones removed; renamed,
    moved or duplicate files reuse their stored embedding.
    """
    ray = _ray_options(ray_address, ray_workers, batch_size)
    tuning = index_type or memory_budget or recall_target
    if not paths and not text_files and not reembed and not tuning:
        raise click.UsageError("give image folders/files to index, --texts FILE, or --reembed")
    budget = _parse_budget(memory_budget)
    with _open(index_dir, model, pretrained, device, wait=not no_wait) as index:
        summary = index.update(
            images=list(paths),
            text_files=list(text_files),
            reembed=reembed,
            settings={
                "index_type": index_type,
                "memory_budget": budget,
                "recall_target": recall_target,
            },
            exclude=exclude,
            column=column,
            field=field,
            batch_size=batch_size,
            workers=workers,
            progress=_progress(not obj["quiet"]),
            retry_skipped=retry_skipped,
            ray=ray,
            follow_outside=not no_follow_outside,
            prune=prune,
        )
    _print_summary(summary, as_json)


def _ray_options(address: str | None, workers: int | None, batch_size: int) -> Any:
    """The Ray run asked for by --ray/--ray-workers (None: encode here)."""
    if address is None:
        if workers is not None:
            raise click.UsageError("--ray-workers needs --ray")
        return None
    from indexer.distributed import RayOptions, check_address  # loads no ray

    try:
        check_address(address)
    except ValueError as exc:
        hint = (
            " (put --ray after the paths, or write --ray=local)" if Path(address).exists() else ""
        )
        raise click.BadParameter(f"{exc}{hint}", param_hint="--ray") from exc
    return RayOptions(address=address, workers=workers, batch_size=batch_size)


def _parse_budget(text: str | None) -> int | None:
    if text is None:
        return None
    from ..ann.policy import parse_size  # pure Python: loads no faiss

    try:
        return parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory-budget") from exc


def _where_time_went(summary: Any) -> str:
    """`` (onnx: model load 1.2s, encoding 22.7s)`` when a model was loaded or used."""
    if not (summary.model_seconds or summary.encode_seconds):
        return ""
    engine = f"{summary.engine}: " if summary.engine else ""
    times = f"model load {summary.model_seconds:.1f}s, encoding {summary.encode_seconds:.1f}s"
    return f" ({engine}{times})"


def _print_summary(summary: Any, as_json: bool) -> None:
    _warn(summary)
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    click.echo(
        f"scanned {summary.scanned}, added {summary.added}, updated {summary.updated}, "
        f"unchanged {summary.unchanged}, removed {summary.removed}, reused {summary.reused}, "
        f"skipped {len(summary.skipped)} in {summary.seconds:.1f}s{_where_time_went(summary)}"
    )
    if summary.truncated:
        click.echo(f"{summary.truncated} texts were cut to the model's context length", err=True)
    for item in summary.skipped:
        again = " (remembered: unchanged since it failed)" if item.remembered else ""
        echo_skipped(item.path, item.reason, again)


def _warn(summary: Any) -> None:
    """What a run must say on stderr whatever the output format."""
    for root in summary.offline:
        click.echo(
            f"offline: {escape(root.path)} ({root.reason}): its items are kept, and left out "
            "of results unless --include-offline; --prune removes them",
            err=True,
        )
    if summary.links_outside:
        how = (
            "not followed (--no-follow-outside)"
            if summary.links_refused
            else "followed (--no-follow-outside refuses them)"
        )
        click.echo(
            f"{summary.links_outside} symbolic links lead outside the folders given: {how}",
            err=True,
        )
    if summary.replaced_lines:
        click.echo(
            f"{summary.replaced_lines} text lines had bytes that are not UTF-8 "
            "(read with replacement characters)",
            err=True,
        )
