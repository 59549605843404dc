"""Commands for other tools: ``mcp`` (the MCP server over stdio; its code is
:mod:`mmsearch.mcp`), ``export`` and ``import`` of embeddings (:mod:`mmsearch.exchange`)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..mcp.command import mcp_cmd
from .app import _open, cli, escape, handle_errors, index_option, json_option

cli.add_command(mcp_cmd)


@cli.command("export")
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["clip", "parquet"]),
    default="clip",
    show_default=True,
    help="clip: clip-retrieval's layout in the folder OUT; parquet: one file OUT.",
)
@click.option(
    "--url",
    help="Template of each image's url column (clip layout), {id} replaced, e.g. "
    "http://127.0.0.1:8765/api/items/{id}/thumbnail.",
)
@index_option
@json_option
@handle_errors
def export_cmd(out: Path, fmt: str, url: str | None, index_dir: Path | None, as_json: bool) -> None:
    """Write every item's embedding and metadata for other tools (numpy, pandas, DuckDB,
    clip-retrieval's back end)."""
    with _open(index_dir, create=False) as index:
        report = index.export_embeddings(out, format=fmt, url=url)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
        return
    click.echo(f"exported {report.images} images and {report.texts} texts:")
    for name in report.files:
        click.echo(f"  {escape(name)}")


@cli.command("import")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--model",
    help="The model the embeddings were made with (an export without mmsearch_model.json).",
)
@click.option("--pretrained", help="Pretrained tag or checkpoint file for --model.")
@index_option
@json_option
@handle_errors
def import_cmd(
    source: Path, model: str | None, pretrained: str | None, index_dir: Path | None, as_json: bool
) -> None:
    """Store the items of an export (a clip-retrieval folder or a Parquet file) with their
    embeddings, encoding nothing: searchable at once. The model must match."""
    with _open(index_dir, model=model, pretrained=pretrained) as index:
        summary = index.import_embeddings(source)
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    click.echo(f"imported {summary.added} items")
    for skip in summary.skipped:
        click.echo(f"skipped {escape(skip.path)}: {skip.reason}", err=True)
