"""``mmsearch refine`` and ``mmsearch session``: search sessions refined over turns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .app import (
    _open,
    cli,
    escape,
    handle_errors,
    index_option,
    json_option,
)

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
    from ..errors import SessionNotFoundError

    with _open(index_dir, create=False) as index:
        if not index.drop_session(name):
            raise SessionNotFoundError(name)
    click.echo(json.dumps({"dropped": name}) if as_json else f"dropped session {escape(name)}")
