"""Fingerprints of derived files, so they are verified before they are trusted.

A FAISS file is fingerprinted when it is saved: its size, a SHA-256 of the whole file,
and a short digest of every 1 MiB chunk. On open, a file up to :data:`FULL_VERIFY_MAX`
bytes is hashed whole; a larger one has its size, first and last chunk and
:data:`SAMPLED_CHUNKS` random chunks checked (a torn write or a truncation shows in the
size or the last chunk; random damage in the middle is caught with a probability that
grows with its extent, and always by ``mmsearch check``).

Why these numbers (measured on the 2-core CI machine, ``docs/integrity.md``): SHA-256 ran
at 455 MB/s against 220 MB/s for BLAKE2b (the CPU has SHA extensions), and
``faiss.read_index`` of a 206 MB flat index took 1.8 s, so hashing a whole file costs
about 60 % of reading it. Up to 64 MiB (an IVF-PQ index of ~800k vectors) that is under
0.15 s and is paid in full; above it, ten 1 MiB chunks cost ~25 ms whatever the size.

Manifests (JSON) carry a checksum of their own content, so a garbled manifest is told
from one that merely describes another file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from pathlib import Path
from typing import Any

#: Bytes per fingerprinted chunk.
CHUNK = 1 << 20
#: Files up to this size are hashed whole when opened.
FULL_VERIFY_MAX = 64 << 20
#: Random chunks checked (besides the first and the last) in a larger file.
SAMPLED_CHUNKS = 8
#: Hex characters kept of each chunk's digest (64 bits: plenty to notice damage).
CHUNK_DIGEST_HEX = 16


def fingerprint(path: str | Path) -> dict[str, Any]:
    """Size, whole-file SHA-256 and per-chunk digests of ``path`` (read once)."""
    whole = hashlib.sha256()
    chunks = []
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            whole.update(block)
            chunks.append(_chunk_digest(block))
            size += len(block)
    return {"size": size, "sha256": whole.hexdigest(), "chunk": CHUNK, "chunks": chunks}


def verify(path: str | Path, expected: dict[str, Any], full: bool | None = None) -> str | None:
    """What is wrong with ``path`` compared with its :func:`fingerprint`, or None.

    Args:
        path: the file.
        expected: its fingerprint, as saved.
        full: hash the whole file (default: when it is at most :data:`FULL_VERIFY_MAX`).
    """
    if not expected or "size" not in expected:
        return "no fingerprint recorded"
    try:
        size = os.path.getsize(path)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if size != expected["size"]:
        return f"size {size} bytes, {expected['size']} expected (truncated or overwritten)"
    if full is None:
        full = size <= FULL_VERIFY_MAX
    if full:  # the whole-file digest only, not the chunks' too (half the CPU)
        whole = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                whole.update(block)
        if whole.hexdigest() != expected["sha256"]:
            return "content does not match its checksum"
        return None
    chunks: list[str] = expected["chunks"]
    picks = {
        0,
        len(chunks) - 1,
        *random.sample(range(len(chunks)), min(SAMPLED_CHUNKS, len(chunks))),
    }
    with open(path, "rb") as f:
        for n in sorted(picks):
            f.seek(n * expected["chunk"])
            if _chunk_digest(f.read(expected["chunk"])) != chunks[n]:
                return f"chunk {n} (at byte {n * expected['chunk']}) does not match its checksum"
    return None


def _chunk_digest(block: bytes) -> str:
    return hashlib.blake2b(block, digest_size=CHUNK_DIGEST_HEX // 2).hexdigest()


def seal(data: dict[str, Any]) -> str:
    """``data`` as JSON with a checksum of its content added (key ``checksum``)."""
    body = {k: v for k, v in data.items() if k != "checksum"}
    return json.dumps({**body, "checksum": _checksum(body)}, indent=2, sort_keys=True)


def unseal(text: str) -> dict[str, Any]:
    """The content of a :func:`seal`-ed JSON text.

    Raises:
        ValueError: the text is not JSON, has no checksum, or does not match it.
    """
    data = json.loads(text)
    if not isinstance(data, dict) or "checksum" not in data:
        raise ValueError("no checksum (written by an older mmsearch, or not ours)")
    body = {k: v for k, v in data.items() if k != "checksum"}
    if _checksum(body) != data["checksum"]:
        raise ValueError("content does not match its checksum (garbled)")
    return body


def _checksum(body: dict[str, Any]) -> str:
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _umask() -> int:
    """The process umask (read by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(path: str | Path) -> None:
    """Give a temp file the mode a plain ``open()`` would have (0666 less the umask),
    not mkstemp's 0600, so derived files are as readable as the catalog beside them."""
    with contextlib.suppress(OSError):  # a file system without modes keeps what it has
        os.chmod(path, 0o666 & ~_umask())
