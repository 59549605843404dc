"""``mmsearch query``: search by text or image, with filters, sessions and explanations."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..errors import MMSearchError
from ..explain import COMBINES, DEFAULT_COMBINE, DEFAULT_RELATIONS, RELATION_MODES
from ..query import Filters, Query, Term
from .app import (
    F,
    _open,
    cli,
    escape,
    handle_errors,
    index_option,
    json_option,
    model_options,
)


def filter_options(func: F) -> F:
    """The query filters: path, extension, date, size, tag, score."""
    options = [
        click.option("--path", "path_glob", metavar="GLOB", help="Only paths matching GLOB."),
        click.option("--ext", "extensions", multiple=True, help="Only this extension. Repeatable."),
        click.option("--after", metavar="DATE", help="Taken on/after DATE (YYYY-MM-DD[THH:MM])."),
        click.option("--before", metavar="DATE", help="Taken before DATE."),
        click.option("--min-width", type=click.IntRange(1), help="At least this many pixels wide."),
        click.option("--min-height", type=click.IntRange(1), help="At least this tall (pixels)."),
        click.option("--tag", "tags", multiple=True, help="Only items with this tag. Repeatable."),
        click.option("--min-score", type=float, help="Drop hits scoring below this."),
        click.option(
            "--include-offline",
            is_flag=True,
            help="Also items of folders the last run could not see (an unplugged drive).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@cli.command("query")
@click.argument("text", required=False)
@click.option("--image", "image", type=click.Path(path_type=Path), help="Query with this image.")
@click.option(
    "--add", "add", multiple=True, metavar="TERM", help="Add a term (text, img:PATH, id:N, W:…)."
)
@click.option("--sub", "sub", multiple=True, metavar="TERM", help="Subtract a term. Repeatable.")
@click.option(
    "--target",
    type=click.Choice(["image", "text"]),
    default="image",
    show_default=True,
    help="What to return.",
)
@click.option(
    "-k",
    "--top",
    "k",
    default=10,
    show_default=True,
    type=click.IntRange(1),
    help="Number of hits.",
)
@click.option("--include-self", is_flag=True, help="Let an indexed query image be its own hit.")
@click.option("--nprobe", type=click.IntRange(1), help="IVF lists to visit (large indexes).")
@click.option("--paths-only", is_flag=True, help="Print only paths (or texts), one per line.")
@click.option(
    "--lang",
    metavar="LANG",
    help="Language of the text (zh …): its taught text encoder [default: detected].",
)
@click.option(
    "--text-encoder",
    metavar="NAME",
    help="Encode the text with this text encoder of the index (main: the model's own).",
)
@click.option(
    "-0",
    "--print0",
    is_flag=True,
    help="Print only paths (or texts), each ended by a NUL byte, unescaped (for xargs -0).",
)
@click.option(
    "--session",
    metavar="NAME",
    help="Start (or restart) the search session NAME with this query; continue it with "
    "`mmsearch refine NAME`.",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Split TEXT into parts (and, with, commas; without/not/no: negative), rank by how "
    "well hits match every part, and show each part's score.",
)
@click.option(
    "--combine",
    type=click.Choice(COMBINES),
    default=DEFAULT_COMBINE,
    show_default=True,
    help="With --explain: how the whole query's and the parts' scores are combined.",
)
@click.option(
    "--relations",
    type=click.Choice(RELATION_MODES),
    default=DEFAULT_RELATIONS,
    show_default=True,
    help='With --explain: keep "A left of B" as one part, split it, or keep the objects.',
)
@click.option("--dedupe", is_flag=True, help="Fold near-duplicate images into the best hit.")
@filter_options
@model_options
@index_option
@json_option
@handle_errors
def query_cmd(
    text: str | None,
    image: Path | None,
    add: tuple[str, ...],
    sub: tuple[str, ...],
    target: str,
    k: int,
    include_self: bool,
    nprobe: int | None,
    paths_only: bool,
    lang: str | None,
    text_encoder: str | None,
    print0: bool,
    explain: bool,
    combine: str,
    relations: str,
    dedupe: bool,
    model: str | None,
    pretrained: str | None,
    device: str | None,
    index_dir: Path | None,
    as_json: bool,
    session: str | None = None,
    **filter_args: Any,
) -> None:
    """Search with TEXT, --image and --add/--sub terms; print one hit per line: score, a
    tab, path or text.

    \b
    A term is a text, img:PATH (or an existing file), or id:N (an indexed item); a
    weight may lead it: 2:dog, -0.5:grass. text:… or a leading backslash makes the rest
    a literal text. The weighted sum of the terms is what is searched for.

    Control characters in paths and texts are printed escaped (a newline as \\n, a tab
    as \\t, an undecodable byte as \\xff), so every hit is one line; --json and
    --print0 give them exactly.
    """
    if text is not None and image is not None:
        raise click.UsageError("give either TEXT or --image, not both")
    if text is None and image is None and not add and not sub:
        raise click.UsageError("give a TEXT query, --image PATH or --add TERM")
    main = Term("image", str(image)) if image is not None else None
    terms = Query.parse(text, add, sub).terms if (text is not None or add or sub) else ()
    query = Query((main, *terms) if main else terms, _filters(Filters, filter_args))
    if explain:
        if text is None or image is not None or add or sub:
            raise click.UsageError("--explain explains a TEXT query (no --image, --add, --sub)")
        _explain(query, text, k, target, combine, relations, dedupe, nprobe, as_json, paths_only,
                 print0, (index_dir, model, pretrained, device))  # fmt: skip
        return
    if session is not None and dedupe:
        raise click.UsageError("--dedupe does not apply to a --session query")
    with _open(index_dir, model, pretrained, device, create=False, few_queries=True) as index:
        if session is not None:
            hits = index.session(session).query(query, k=k, target=target)
        else:
            hits = index.search(
                query,
                k=k,
                target=target,
                include_self=include_self,
                nprobe=nprobe,
                lang=lang,
                text_encoder=text_encoder,
                dedupe=dedupe,
            )
        # Which text encoder answered: only --json reports it (it reads the registry again).
        texts = " ".join(t.value for t in query.terms if t.kind == "text") if as_json else ""
        tower = index.choose_text_encoder(texts, lang, text_encoder) if texts else None
    if as_json:
        out = {"query": query.to_dict(), "hits": [h.to_dict() for h in hits]}
        if session:
            out["session"] = session
        if dedupe:
            out["collapsed"] = sum(len(h.duplicates or ()) for h in hits)
        click.echo(json.dumps({**out, "text_encoder": tower} if tower else out))
        return
    _print_hits(hits, paths_only, print0)


def _print_hits(hits: list[Any], paths_only: bool, print0: bool, extra: Any = None) -> None:
    """Hits as lines: score, tab, label (and ``extra(hit)``, tab-separated), or labels."""
    if print0:
        out = click.get_binary_stream("stdout")
        for hit in hits:
            raw = hit.text.encode("utf-8", "surrogateescape") if hit.text is not None else None
            out.write((raw if raw is not None else os.fsencode(hit.label)) + b"\0")
        out.flush()
        return
    for hit in hits:
        label = " ".join(hit.label.split()) if hit.text is not None else hit.label
        label = escape(label)
        tail = f"\t{extra(hit)}" if extra is not None else ""
        click.echo(label if paths_only else f"{hit.score:.3f}\t{label}{tail}")


def _explain(
    query: Query,
    text: str,
    k: int,
    target: str,
    combine: str,
    relations: str,
    dedupe: bool,
    nprobe: int | None,
    as_json: bool,
    paths_only: bool,
    print0: bool,
    opening: tuple[Any, ...],
) -> None:
    """``query --explain``: hits ranked by the part-wise combination, each part's score
    in a last column (``part=score; …``; a negative part is shown as ``-part``)."""
    with _open(*opening, create=False) as index:
        result = index.explain(
            text, k=k, target=target, combine=combine, relations=relations, nprobe=nprobe,
            filters=query.filters, dedupe=dedupe,
        )  # fmt: skip
    if as_json:
        out = {"query": query.to_dict(), **result.to_dict()}
        if dedupe:
            out["collapsed"] = sum(len(h.duplicates or ()) for h in result.hits)
        click.echo(json.dumps(out))
        return
    names = [("-" if p["negative"] else "") + " ".join(p["text"].split()) for p in result.parts]

    def column(hit: Any) -> str:
        scores = zip(names, hit.part_scores or (), strict=False)
        return escape("; ".join(f"{n}={s:.3f}" for n, s in scores))

    if not paths_only and not print0:
        click.echo(escape(f"# parts: {' | '.join(names)} (combine: {result.combine})"), err=True)
    _print_hits(result.hits, paths_only, print0, column)


def _filters(filters_cls: Any, args: dict[str, Any]) -> Any:
    """The Filters of the query command's filter options (dates parsed)."""
    from ..query import parse_date

    values = dict(args)
    for key in ("after", "before"):
        if values.get(key) is not None:
            try:
                values[key] = parse_date(values[key])
            except MMSearchError as exc:
                raise click.BadParameter(str(exc), param_hint=f"--{key}") from exc
    values["extensions"] = tuple(values.get("extensions") or ())
    values["tags"] = tuple(values.get("tags") or ())
    return filters_cls(**values)
