"""The ``mmsearch`` command line: thin commands, one library call each.

Results go to stdout (plain lines or ``--json``); progress, logs and errors go to stderr.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import config
from .errors import MMSearchError
from .explain import COMBINES, DEFAULT_COMBINE, DEFAULT_RELATIONS, RELATION_MODES
from .query import Filters, Query, Term
from .server.command import serve_cmd
from .status import ExitStatus, MMSearchException

F = TypeVar("F", bound=Callable[..., Any])


class Interrupted(click.ClickException):
    """Ctrl-C ended a command after it saved what it could; exits 130."""

    exit_code = int(ExitStatus.INTERRUPTED)


def handle_errors(func: F) -> F:
    """Turn library errors into one-line messages (tracebacks only with --traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return func(*args, **kwargs)
        except MMSearchError as exc:
            if ctx.find_root().params.get("traceback"):
                raise
            raise MMSearchException(exc) from exc

    return wrapper  # type: ignore[return-value]


def index_option(func: F) -> F:
    return click.option(
        "--index",
        "index_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar=config.ENV_INDEX,
        show_envvar=True,
        help="Index directory [default: platform data dir, e.g. ~/.local/share/mmsearch/index].",
    )(func)


def model_options(func: F) -> F:
    func = click.option("--device", help="cpu, cuda, cuda:1 … [default: cuda when available].")(
        func
    )
    func = click.option(
        "--pretrained", help="Pretrained tag (e.g. laion2b_s34b_b79k) or checkpoint file."
    )(func)
    return click.option(
        "--model",
        help=f"open_clip architecture, hf-hub:org/repo, or a model directory "
        f"[default: the index's model; {config.DEFAULT_MODEL} for a new index].",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON on stdout.")(func)


#: Invisible characters that reorder or hide text on a terminal (bidi overrides).
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape(text: str) -> str:
    """``text`` safe to print as one line: control characters, line separators and bidi
    overrides are shown as escapes (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``), the bytes of
    an undecodable file name as ``\\xff``, and (on POSIX) a backslash as ``\\\\``, so no
    file name can forge or hide an output line. ``--json`` and ``--print0`` are exact."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape_char(ch) for ch in text)


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if ch == "\\":
        return "\\\\" if os.sep != "\\" else ch
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of an undecodable file name (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp"):
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    return ch


def _quiet_c_libraries(ctx: click.Context) -> None:
    """Under ``-q``: send what C libraries write straight to file descriptor 2 (faiss'
    k-means warnings, libtiff) to /dev/null, for this command only. Python's stderr stays
    the real one (a duplicate of fd 2), so errors, and tracebacks with --traceback, show."""
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no fd 2 (a daemon): nothing to silence
        return
    original = sys.stderr
    if _fileno(original) == 2:  # Python writes to fd 2 itself: give it the duplicate
        original.flush()
        sys.stderr = os.fdopen(
            os.dup(saved), "w", buffering=1, encoding=original.encoding, errors="backslashreplace"
        )
    os.dup2(devnull, 2)
    os.close(devnull)

    def restore() -> None:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if sys.stderr is not original:
            sys.stderr.close()
            sys.stderr = original

    ctx.call_on_close(restore)


def _fileno(stream: Any) -> int | None:
    try:
        return int(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None


def _progress(enabled: bool) -> Any:
    """A tqdm progress-bar factory writing to stderr, or None when disabled."""
    if not enabled:
        return None
    from tqdm import tqdm

    def make(total: int, desc: str) -> Any:
        return tqdm(
            total=total, desc=desc, unit="item", file=sys.stderr, dynamic_ncols=True, smoothing=0.1
        )

    return make


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mmsearch")
@click.option("--traceback", is_flag=True, help="Show the full traceback of errors.")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or warnings.")
@click.pass_context
def cli(ctx: click.Context, traceback: bool, verbose: int, quiet: bool) -> None:
    """Search photos and texts by meaning (OpenCLIP + FAISS).

    \b
      mmsearch index ./photos             embed every image under ./photos
      mmsearch index --texts notes.txt    embed a text corpus
      mmsearch query "a red car"          text → image
      mmsearch query --image q.jpg        image → image
      mmsearch info                       what the index holds
    """
    level = (
        logging.ERROR if quiet else [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    )
    if quiet:  # no warnings: Python's (Pillow's DecompressionBombWarning ...) nor C's
        warnings.simplefilter("ignore")
        _quiet_c_libraries(ctx)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    ctx.obj = {"quiet": quiet}


def _open(
    index_dir: Path | None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str | None = None,
    create: bool = True,
    wait: bool = True,
    few_queries: bool = False,
) -> Any:
    from .index import Index

    return Index.open(
        index_dir,
        model=model,
        pretrained=pretrained,
        device=device,
        create=create,
        wait=wait,
        on_wait=_say_waiting,
        few_queries=few_queries,
    )


def _say_waiting(pid: int | None) -> None:
    who = f"pid {pid}" if pid else "pid unknown"
    click.echo(f"waiting for another mmsearch process ({who}) writing this index…", err=True)


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
    from .ann.policy import parse_size  # pure Python: loads no faiss

    try:
        return parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--memory-budget") from exc


def _print_summary(summary: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(summary.to_dict()))
        return
    click.echo(
        f"scanned {summary.scanned}, added {summary.added}, updated {summary.updated}, "
        f"unchanged {summary.unchanged}, removed {summary.removed}, reused {summary.reused}, "
        f"skipped {len(summary.skipped)} in {summary.seconds:.1f}s"
    )
    if summary.truncated:
        click.echo(f"{summary.truncated} texts were cut to the model's context length", err=True)
    for item in summary.skipped:
        again = " (remembered: unchanged since it failed)" if item.remembered else ""
        click.echo(f"skipped {escape(item.path)}: {escape(item.reason)}{again}", err=True)


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
    from .query import parse_date

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


def _labels(labels: str | None, labels_file: Path | None, default: bool) -> list[str]:
    from .zeroshot import default_vocabulary, parse_labels, read_labels

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
    from .zeroshot import classify

    names = _labels(labels, labels_file, default=False)
    if model is not None:
        from .encoder import Encoder  # torch: only a command that runs a model imports it

        results = classify(Encoder.load(model, pretrained, device), images, names, templates)
    else:
        with _open(index_dir, model, pretrained, device, create=False) as index:
            results = index.classify(images, names, templates or ())
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in results]))
        return
    for r in results:
        if r.error:
            click.echo(f"skipped {r.source}: {r.error}", err=True)
            continue
        best = list(r.scores.items())[:show]
        click.echo(r.source + "\t" + "\t".join(f"{name} {p:.3f}" for name, p in best))


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
    from .zeroshot import DEFAULT_THRESHOLD, DEFAULT_TOP

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
    from .finetune.evaluation import METRIC_KEYS

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
    from .finetune import FinetuneConfig, finetune

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
        click.echo(f"skipped {path}: {reason}", err=True)
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
    from .finetune import evaluate

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
        click.echo(f"skipped {path}: {reason}", err=True)


cli.add_command(serve_cmd)


# -- search sessions (mmsearch.refine) ----------------------------------------------------------


def _examples(values: tuple[str, ...], option: str) -> list[int | str]:
    """``--more 12,31 --more photo.jpg``: item ids (``12`` or ``id:12``) and image files."""
    out: list[int | str] = []
    for value in values:
        for piece in (p.strip() for p in value.split(",")):
            if not piece:
                continue
            number = piece[3:] if piece.startswith("id:") else piece
            if number.isdigit():
                out.append(int(number))
            elif piece.startswith("id:"):
                raise click.BadParameter(f"{piece!r} is not an item id", param_hint=option)
            else:
                out.append(piece)
    return out


def _print_session_hits(
    hits: list[Any], as_json: bool, paths_only: bool, extra: dict[str, Any]
) -> None:
    if as_json:
        click.echo(json.dumps({**extra, "hits": [h.to_dict() for h in hits]}))
        return
    for hit in hits:
        label = " ".join(hit.label.split()) if hit.text is not None else hit.label
        click.echo(escape(label) if paths_only else f"{hit.score:.3f}\t{escape(label)}")


@cli.command("refine")
@click.argument("name")
@click.option("--more", multiple=True, metavar="IDS|IMAGE",
              help="Items like what you want: ids (12,31) as `query --json` prints them, or "
              "image files. Repeatable.")  # fmt: skip
@click.option("--less", multiple=True, metavar="IDS|IMAGE",
              help="Items unlike what you want (ids or image files). Repeatable.")  # fmt: skip
@click.option("--text", help='A follow-up text added to the query, e.g. "at night".')
@click.option("-k", "--top", "k", type=click.IntRange(1), help="Hits [default: the session's].")
@click.option("--show-marked", is_flag=True, help="Show items marked in earlier turns too.")
@click.option("--paths-only", is_flag=True, help="Print only paths (or texts), one per line.")
@index_option
@json_option
@handle_errors
def refine_cmd(
    name: str,
    more: tuple[str, ...],
    less: tuple[str, ...],
    text: str | None,
    k: int | None,
    show_marked: bool,
    paths_only: bool,
    index_dir: Path | None,
    as_json: bool,
) -> None:
    """Continue the search session NAME: more like some hits, less like others, and/or a
    follow-up text. Prints the next hits like `query` (items marked in any turn are not
    shown again unless --show-marked)."""
    positives, negatives = _examples(more, "--more"), _examples(less, "--less")
    if not positives and not negatives and not (text and text.strip()):
        raise click.UsageError("give --more, --less or --text")
    with _open(index_dir, create=False) as index:
        session = index.session(name)
        hits = session.refine(positives, negatives, text, k=k, show_marked=show_marked)
        turn = len(session.turns) - 1
    _print_session_hits(hits, as_json, paths_only, {"session": name, "turn": turn})


@cli.group("session")
def session_group() -> None:
    """List, show or drop search sessions (`query --session NAME` starts one)."""


def _when(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds")


@session_group.command("list")
@index_option
@json_option
@handle_errors
def session_list_cmd(index_dir: Path | None, as_json: bool) -> None:
    """Every session: name, turns, last used, most recent first."""
    with _open(index_dir, create=False) as index:
        sessions = index.sessions()
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in sessions]))
        return
    for s in sessions:
        click.echo(f"{escape(s.name)}\t{s.turns} turns\t{_when(s.updated)}")


@session_group.command("show")
@click.argument("name")
@index_option
@json_option
@handle_errors
def session_show_cmd(name: str, index_dir: Path | None, as_json: bool) -> None:
    """A session's turns: the starting query, then each turn's feedback and shown ids."""
    with _open(index_dir, create=False) as index:
        session = index.session(name)
        info, turns = session.info(), session.turns
    if as_json:
        click.echo(json.dumps({**info.to_dict(), "turns": [t.to_dict() for t in turns]}))
        return
    w = info.weights
    click.echo(f"session {escape(info.name)}: {info.target}s, k={info.k}, "
               f"weights α={w.alpha} β={w.beta} γ={w.gamma} text={w.text}")  # fmt: skip
    for t in turns:
        parts = []
        if t.query is not None:
            parts.append("query " + " ".join(
                f"{term.weight:g}:{term.kind}:{term.value}" if term.weight != 1
                else f"{term.kind}:{term.value}" for term in t.query.terms
            ))  # fmt: skip
        if t.text:
            parts.append(f"text {t.text!r}")
        if t.more or t.more_files:
            parts.append("more " + ",".join([*map(str, t.more), *t.more_files]))
        if t.less or t.less_files:
            parts.append("less " + ",".join([*map(str, t.less), *t.less_files]))
        parts.append("shown " + ",".join(map(str, t.shown)))
        click.echo(f"{t.seq}\t{_when(t.created)}\t" + escape("; ".join(parts)))


@session_group.command("drop")
@click.argument("name")
@index_option
@json_option
@handle_errors
def session_drop_cmd(name: str, index_dir: Path | None, as_json: bool) -> None:
    """Delete a session."""
    from .errors import SessionNotFoundError

    with _open(index_dir, create=False) as index:
        if not index.drop_session(name):
            raise SessionNotFoundError(name)
    click.echo(json.dumps({"dropped": name}) if as_json else f"dropped session {escape(name)}")


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
    from .duplicates import DEFAULT_THRESHOLD
    from .nearcopy import DEFAULT_PIXEL_THRESHOLD

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


def quiet_openmp() -> None:
    """Let OpenMP threads (faiss', torch's) sleep when idle instead of busy-waiting, unless
    the user chose otherwise. Must run before faiss or torch is imported: OpenMP reads it
    once, when it loads (this module imports neither).

    Measured (bench/query.py, 2-core machine with other jobs running): the torch
    encoder's warm text query took 0.4-1.5 s with OpenMP's default and 0.15-0.17 s with
    passive threads (2.2 s vs 0.34 s beside a busy process); the flat search of 1k vectors
    0.8 ms instead of 8 ms. The ONNX encoder does not use OpenMP (its own threads never
    spin)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    """Console-script entry point: click's handling, but Ctrl-C exits 130 with one line."""
    quiet_openmp()
    try:
        cli.main(prog_name="mmsearch", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted: what was already indexed is kept", err=True)
        sys.exit(int(ExitStatus.INTERRUPTED))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


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
    from .finetune.language import LanguageConfig

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
        click.echo(f"skipped {escape(path)}: {escape(reason)}", err=True)


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
