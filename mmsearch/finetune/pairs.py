"""Image–caption pair files for fine-tuning and evaluation (a leaf: imports only errors).

Formats, by extension: ``.csv`` / ``.tsv`` with a header row (columns named by the caller,
``image`` and ``caption`` by default), or ``.jsonl`` (one object per line, same keys).
Relative image paths resolve against the pair file's folder. A bad row (no image path, an
image that does not exist, an empty caption, a malformed line) is skipped and listed.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mmsearch.errors import InputError


@dataclass(frozen=True)
class Pair:
    """One image and its caption."""

    image: str
    caption: str


@dataclass
class PairsFile:
    """The usable pairs of a file and the rows skipped, each with its reason."""

    pairs: list[Pair] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _rows(path: Path) -> list[tuple[str, dict | None, str]]:
    """(row label, row dict or None when malformed, reason) for each data row."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        out: list[tuple[str, dict | None, str]] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                out.append((f"line {n}", None, "not valid JSON"))
                continue
            out.append((f"line {n}", obj if isinstance(obj, dict) else None, "not an object"))
        return out
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    return [(f"row {n}", row, "") for n, row in enumerate(reader, 2)]


def read_pairs(
    path: str | os.PathLike[str], image_column: str = "image", caption_column: str = "caption"
) -> PairsFile:
    """Read a pair file.

    Args:
        path: ``.csv``, ``.tsv`` or ``.jsonl`` file.
        image_column: column / key holding the image path.
        caption_column: column / key holding the caption.

    Raises:
        InputError: the file cannot be read, or lacks one of the columns entirely.
    """
    path = Path(path)
    try:
        rows = _rows(path)
    except OSError as exc:
        raise InputError(path, exc.strerror or str(exc)) from exc
    if rows and path.suffix.lower() not in (".jsonl", ".ndjson"):
        header = list(rows[0][1] or {})
        missing = [c for c in (image_column, caption_column) if c not in header]
        if missing:
            raise InputError(path, f"no column {missing[0]!r} (columns: {', '.join(header)})")
    result = PairsFile()
    base = path.parent
    for label, row, reason in rows:
        if row is None:
            result.skipped.append((label, reason))
            continue
        image = str(row.get(image_column) or "").strip()
        caption = " ".join(str(row.get(caption_column) or "").split())
        if not image:
            result.skipped.append((label, "no image path"))
        elif not caption:
            result.skipped.append((label, "empty caption"))
        else:
            full = Path(image).expanduser()
            full = full if full.is_absolute() else base / full
            if not full.is_file():
                result.skipped.append((label, f"image not found: {image}"))
            else:
                result.pairs.append(Pair(str(full.resolve()), caption))
    return result
