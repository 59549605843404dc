"""Text corpora: read them (plain text, one text per line; JSON Lines; CSV and TSV) and index
them (:func:`index_texts`: the same text is stored once).

Every text keeps its source (``file:line``, or ``file:row`` for CSV/TSV with the header as
row 1) so a search hit can point back at where it came from. A record that cannot be used
is skipped with its reason; an empty text is skipped silently.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from indexer.common import EncoderLike, batches, load_encoder
from mmsearch.catalog import Catalog
from mmsearch.errors import InputError
from mmsearch.media import os_reason
from mmsearch.results import ProgressFactory, RunSummary, no_progress

logger = logging.getLogger(__name__)

_JSONL_EXTENSIONS = frozenset({".jsonl", ".ndjson"})
_DELIMITERS = {".csv": ",", ".tsv": "\t"}


@dataclass(frozen=True)
class TextRecord:
    """One text and where it came from."""

    text: str  # stripped, never empty
    source: str  # "<path>:<line>" (1-based), or "<path>:<row>" for CSV/TSV (header = 1)


@dataclass
class TextReadResult:
    """Texts read from one or more files, and the records skipped."""

    records: list[TextRecord] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    replaced: int = 0  # lines with bytes that are not UTF-8 (read with U+FFFD)

    def extend(self, other: TextReadResult) -> None:
        """Append another result's records and skipped entries."""
        self.records.extend(other.records)
        self.skipped.extend(other.skipped)
        self.replaced += other.replaced


def read_texts(
    path: str | os.PathLike, column: str | None = None, field: str = "text"
) -> TextReadResult:
    """Read the texts of one file; the format follows the extension.

    ``.jsonl``/``.ndjson``: one JSON object per line, text under ``field``. ``.csv`` and
    ``.tsv``: a header row, text in ``column``. Anything else: one text per line. Files are
    read as UTF-8 (a BOM is ignored, undecodable bytes replaced); texts are stripped. A file
    that is not text (a NUL byte, an image or archive magic number, or many bytes that are
    not UTF-8 in its first KB) is skipped whole, with its reason, rather than read as garbage lines.

    Args:
        path: The file.
        column: CSV/TSV column holding the text (default ``"text"``).
        field: JSON Lines field holding the text.

    Returns:
        The texts in file order, and the skipped records with reasons.

    Raises:
        InputError: The file cannot be read, or the CSV/TSV has no header or no such column.
    """
    name = os.fspath(path)
    ext = os.path.splitext(name)[1].lower()
    try:
        binary = _binary_reason(name)
        if binary is not None:
            logger.info("%s: skipped: %s", name, binary)
            return TextReadResult(skipped=[(name, binary)])
        with open(name, encoding="utf-8-sig", errors="replace", newline="") as f:
            if ext in _JSONL_EXTENSIONS:
                result = _read_jsonl(name, f, field)
            elif ext in _DELIMITERS:
                result = _read_table(name, f, column or "text", _DELIMITERS[ext])
            else:
                result = _read_lines(name, f)
        result.replaced = _undecodable_lines(name)
    except OSError as exc:
        raise InputError(name, os_reason(exc)) from exc
    if result.replaced:
        logger.warning(
            "%s: %d lines have bytes that are not UTF-8 (read with replacement characters)",
            name, result.replaced,
        )  # fmt: skip
    logger.info("%s: %d texts, %d skipped", name, len(result.records), len(result.skipped))
    return result


#: Magic numbers of formats people hand over by mistake (images, archives, PDF).
_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"RIFF": "a RIFF file (WebP, WAV, AVI)",
    b"II*\x00": "a TIFF image",
    b"MM\x00*": "a TIFF image",
    b"BM": "a BMP image",
    b"%PDF": "a PDF document",
    b"PK\x03\x04": "a ZIP archive (or an office document)",
    b"\x1f\x8b": "a gzip archive",
}

#: Bytes read to tell text from binary.
_SNIFF = 1024
#: Undecodable bytes in the sample a text file may have (replaced when read), beyond 2%.
_STRAY_BYTES = 4


def _binary_reason(name: str) -> str | None:
    """Why the file is not text (None if it looks like text): a known binary magic
    number, a NUL byte, or bytes that are not UTF-8 in its first KB."""
    with open(name, "rb") as f:
        head = f.read(_SNIFF)
    for magic, kind in _MAGIC.items():
        if head.startswith(magic) and (magic != b"BM" or b"\x00" in head[:14]):
            return f"not a text file: {kind}"
    if b"\x00" in head:
        return "not a text file: binary data (NUL bytes)"
    # final=False: a character cut at the end of the sample is not an error.
    sample = codecs.getincrementaldecoder("utf-8")("replace").decode(head, len(head) < _SNIFF)
    bad = sample.count("\ufffd")
    if bad > max(_STRAY_BYTES, len(sample) // 50):  # a stray bad byte is replaced, not fatal
        return "not a text file: not UTF-8 (binary data or another encoding; convert it to UTF-8)"
    return None


def _undecodable_lines(name: str) -> int:
    """How many lines of the file hold bytes that are not UTF-8 (each is read with
    replacement characters: the summary says so rather than index garbage silently)."""
    bad = 0
    with open(name, "rb") as f:
        for line in f:
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                bad += 1
    return bad


def read_text_sources(
    paths: Sequence[str | os.PathLike], column: str | None = None, field: str = "text"
) -> TextReadResult:
    """Read several text files with :func:`read_texts` and concatenate the results.

    Args:
        paths: The files, read in order.
        column: CSV/TSV column holding the text.
        field: JSON Lines field holding the text.

    Returns:
        All texts in order, and all skipped records.

    Raises:
        InputError: One of the files cannot be read (see :func:`read_texts`).
    """
    result = TextReadResult()
    for path in paths:
        result.extend(read_texts(path, column=column, field=field))
    return result


def _lines(f: IO[str]) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, stripped line) for non-blank lines."""
    for number, line in enumerate(f, start=1):
        text = line.strip()
        if text:
            yield number, text


def _read_lines(name: str, f: IO[str]) -> TextReadResult:
    """One text per line."""
    records = [TextRecord(text, f"{name}:{n}") for n, text in _lines(f)]
    return TextReadResult(records=records)


def _read_jsonl(name: str, f: IO[str], field: str) -> TextReadResult:
    """One JSON object per line; the text is the string under ``field``."""
    result = TextReadResult()
    for n, line in _lines(f):
        source = f"{name}:{n}"
        text, reason = _json_text(line, field)
        if reason is not None:
            result.skipped.append((source, reason))
        elif text:
            result.records.append(TextRecord(text, source))
    return result


def _json_text(line: str, field: str) -> tuple[str, str | None]:
    """The stripped text of one JSON line, or a reason why there is none."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return "", f"invalid JSON: {exc.msg}"
    if not isinstance(obj, dict):
        return "", "not a JSON object"
    if field not in obj:
        return "", f"no {field!r} field"
    value = obj[field]
    if not isinstance(value, str):
        return "", f"{field!r} is not a string ({type(value).__name__})"
    return value.strip(), None


def _read_table(name: str, f: IO[str], column: str, delimiter: str) -> TextReadResult:
    """CSV/TSV with a header row; the text is in ``column``."""
    reader = csv.reader(f, delimiter=delimiter)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(name, f"malformed header row: {exc}") from exc
    if header is None:
        raise InputError(name, "empty file: no header row")
    header = [h.strip() for h in header]
    if column not in header:
        available = ", ".join(repr(h) for h in header)
        raise InputError(name, f"no column {column!r}; available columns: {available}")
    index = header.index(column)
    result = TextReadResult()
    for row_number, row in enumerate(_rows(reader), start=2):
        source = f"{name}:{row_number}"
        if isinstance(row, csv.Error):
            result.skipped.append((source, f"malformed row: {row}"))
        elif index >= len(row):
            if any(cell.strip() for cell in row):
                result.skipped.append((source, f"row has no {column!r} value"))
        elif text := row[index].strip():
            result.records.append(TextRecord(text, source))
    return result


def _rows(reader: Iterator[list[str]]) -> Iterator[list[str] | csv.Error]:
    """Rows of a CSV reader, with a malformed row (e.g. a huge field) yielded as its error."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader has consumed the bad line; go on after it
            yield exc


def text_digest(text: str) -> str:
    """Content hash of a text: texts with the same hash are stored once."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def index_texts(
    catalog: Catalog,
    records: Iterable[TextRecord],
    get_encoder: Callable[[], EncoderLike],
    batch_size: int = 256,
    progress: ProgressFactory | None = None,
    encode_texts: Callable[..., None] | None = None,
) -> RunSummary:
    """Add texts not already in the catalog (the same text is stored once).

    Texts longer than the model's context are cut to it and counted in ``truncated``.
    ``encode_texts`` encodes and adds the new texts elsewhere instead of here
    (:meth:`indexer.distributed.RayEncoding.encode_texts`: on a Ray cluster).
    """
    started = time.perf_counter()
    progress = progress or no_progress
    summary = RunSummary()
    known = catalog.text_hashes()
    todo: list[tuple[TextRecord, str]] = []
    for rec in records:
        summary.scanned += 1
        digest = text_digest(rec.text)
        if digest in known:
            summary.unchanged += 1
            continue
        known.add(digest)
        todo.append((rec, digest))
    if todo and encode_texts is not None:  # distributed: same texts in, same rows out
        encode_texts(catalog, todo, get_encoder, progress, summary)
    elif todo:
        encoder = load_encoder(catalog, get_encoder, summary)
        bar = progress(len(todo), "encoding texts")
        try:
            for batch in batches(todo, batch_size):
                texts = [r.text for r, _ in batch]
                summary.truncated += sum(encoder.is_truncated(t) for t in texts)
                encoding = time.perf_counter()
                vectors = encoder.encode_texts(texts)
                summary.encode_seconds += time.perf_counter() - encoding
                catalog.add(
                    [
                        {
                            "modality": "text",
                            "text": r.text,
                            "source": r.source,
                            "content_hash": d,
                            "embedding": v,
                        }
                        for (r, d), v in zip(batch, vectors, strict=True)
                    ]
                )
                summary.added += len(batch)
                bar.update(len(batch))
        finally:
            bar.close()
    summary.seconds = time.perf_counter() - started
    return summary
