"""``mmsearch info``, ``export-model`` and ``check``: an index, its exported model, its
integrity."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..status import ExitStatus
from .app import (
    _open,
    cli,
    escape,
    handle_errors,
    index_option,
    json_option,
)
from .languages import _text_encoder_lines


@cli.command("info")
@index_option
@json_option
@handle_errors
def info_cmd(index_dir: Path | None, as_json: bool) -> None:
    """Show what the index holds: model, item counts, vector index type and size."""
    with _open(index_dir, create=False) as index:
        info = index.info()
    if as_json:
        click.echo(json.dumps(info.to_dict()))
        return
    click.echo(f"index:    {info.path}")
    click.echo(f"model:    {info.model or '(none yet)'} (dim {info.dim})")
    click.echo(f"images:   {info.images}")
    click.echo(f"texts:    {info.texts}")
    click.echo(f"catalog:  {info.catalog_bytes / 1e6:.1f} MB, schema v{info.schema_version}")
    click.echo(f"queries:  {info.query_runtime}")
    click.echo(f"indexing: {info.index_runtime}")
    for root in info.roots:
        state = "online" if root["online"] else f"OFFLINE: {root['reason']}"
        click.echo(f"root:     {escape(root['path'])} ({root['items']} items, {state})")
    if info.trash:
        click.echo(f"trash:    {info.trash} items removed, kept for their return (mmsearch gc)")
    if info.skipped_files:
        click.echo(
            f"skipped:  {len(info.skipped_files)} files remembered as undecodable, not read "
            "again until they change (--json lists them)"
        )
    for v in info.vectors:
        params = ", ".join(f"{k}={val}" for k, val in sorted(v.params.items()))
        click.echo(
            f"vectors:  {v.modality}: {v.count} in {v.index_type}"
            f"{' (' + params + ')' if params else ''}, {v.bytes_per_vector:.0f} B/vector"
        )
        for query, tuned in v.by_query.items():
            click.echo(
                f"          {query} queries: nprobe={tuned.nprobe}, "
                f"re-rank x{tuned.rerank_factor}"
                + (f", tuned recall@10 {tuned.recall}" if tuned.recall is not None else "")
            )
    for line in _text_encoder_lines(info.text_encoders):
        click.echo(line)
    if info.tags:
        shown = ", ".join(f"{t} {n}" for t, n in list(info.tags.items())[:20])
        more = f", … ({len(info.tags)} tags)" if len(info.tags) > 20 else ""
        click.echo(f"tags:     {shown}{more}")


@cli.command("export-model")
@click.option("--force", is_flag=True, help="Export again even if a valid export exists.")
@index_option
@json_option
@handle_errors
def export_model_cmd(force: bool, index_dir: Path | None, as_json: bool) -> None:
    """Export the index's model for torch-free queries (ONNX towers, checked against torch).

    `mmsearch index` does this once by itself; use this for an index built before, or
    with --force after a failed or damaged export.
    """
    with _open(index_dir, create=False) as index:
        report = index.export_runtime(force=force)
        status = index.query_runtime_status()
    if as_json:
        click.echo(
            json.dumps({"exported": report.to_dict() if report else None, "queries": status})
        )
    elif report is None:
        click.echo(f"already exported: queries use {status}")
    else:
        click.echo(
            f"exported to {report.out_dir} in {report.seconds:.1f}s (min cosine to torch: "
            f"text {report.text_min_cosine:.6f}, image {report.image_min_cosine:.6f})"
        )


@cli.command("check")
@click.option("--repair", is_flag=True, help="Rebuild from the catalog whatever is wrong.")
@index_option
@json_option
@handle_errors
def check_cmd(repair: bool, index_dir: Path | None, as_json: bool) -> None:
    """Verify the derived files (embedding store, vector indexes) against the catalog.

    Prints one line per problem; exits 7 when a problem is found and not repaired.
    """
    with _open(index_dir, create=False) as index:
        report = index.check(repair=repair)
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for problem in report.problems:
            state = "repaired" if problem.repaired else "NOT repaired"
            click.echo(f"{problem.component}: {problem.message} ({state})")
        checked = ", ".join(f"{n} {what}" for what, n in report.checked.items())
        click.echo(
            f"checked {checked or 'nothing (empty index)'}: "
            + ("ok" if report.ok else "problems found")
        )
    if not report.ok:
        raise click.exceptions.Exit(int(ExitStatus.CORRUPT))


@cli.command("gc")
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(0),
    metavar="DAYS",
    help="Forget only items removed more than DAYS days ago [default: all].",
)
@index_option
@json_option
@handle_errors
def gc_cmd(older_than: float | None, index_dir: Path | None, as_json: bool) -> None:
    """Empty the trash: items that left the index are kept (embedding, tags) so that a file
    coming back is not encoded again; index runs forget them after 30 days."""
    with _open(index_dir, create=False) as index:
        forgotten = index.gc(older_than_days=older_than)
    if as_json:
        click.echo(json.dumps({"forgotten": forgotten}))
    else:
        click.echo(f"forgot {forgotten} items from the trash")
