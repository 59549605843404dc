"""The ``mmsearch`` group, the options and helpers every command shares, and ``main``."""

from __future__ import annotations

import functools
import logging
import os
import sys
import unicodedata
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from .. import config
from ..click_options import index_option as index_option  # the commands' import
from ..errors import MMSearchError
from ..status import ExitStatus, MMSearchException

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


def echo_skipped(path: str, reason: str, note: str = "") -> None:
    """One ``skipped PATH: REASON`` line on stderr, the path and reason escaped like
    result lines (a file name cannot break it into several lines)."""
    click.echo(f"skipped {escape(path)}: {escape(reason)}{note}", err=True)


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
    from ..index import Index

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
