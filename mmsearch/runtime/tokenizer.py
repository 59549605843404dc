"""CLIP's byte-level BPE tokenizer (open_clip's ``SimpleTokenizer``) without torch.

Gives the same token ids as ``open_clip.get_tokenizer(name)(texts)``: the same text
cleaning (ftfy, HTML unescape twice, whitespace runs collapsed, lower case), the same
pre-tokenising regex, the same merges, ``<start_of_text>``/``<end_of_text>`` markers and
the same truncation (cut to the context length, the last kept token replaced by the end
marker). Ids come back as a numpy int64 array.

ftfy costs about 0.1 s to import, so it is imported lazily and skipped for plain
printable ASCII without ``&``: ftfy and ``html.unescape`` leave such text unchanged
(every ftfy fixer acts only on non-ASCII characters, ``&`` entities, ``\\r``, escape
and control characters), which the tests check against open_clip.

Building the merge ranks and the vocabulary from open_clip's gzipped merges file takes
0.1-0.2 s of CPU (two dicts of 49k strings), more than encoding a query. The exporter
therefore also writes them ready to use (:func:`write_tables`: sorted byte-string arrays
in an ``.npz``, no pickle) and the tokenizer looks pairs and tokens up there by binary
search: loading them takes a few milliseconds, a lookup a few microseconds.
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import re as _re
import string
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import regex

#: Cleaning modes of open_clip's tokenizer (``text_cfg.tokenizer_kwargs.clean``).
CLEAN_MODES = ("lower", "whitespace", "canonicalize")
#: The merges open_clip keeps from the vocabulary file (49152 - 256 - 2 of them).
_N_MERGES = 49152 - 256 - 2
_SPECIAL = ("<start_of_text>", "<end_of_text>")
_PATTERN = regex.compile(
    "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# Printable ASCII plus tab/newline and no '&': ftfy and html.unescape return it unchanged.
_PLAIN = _re.compile(r"[\t\n\x20-\x25\x27-\x7e]*")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's reversible map from bytes to printable unicode characters."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _basic_clean(text: str) -> str:
    if not _PLAIN.fullmatch(text):
        import ftfy  # lazy: 0.1 s of start-up, needed only for non-ASCII or '&' text

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return text.strip()


def _clean_lower(text: str) -> str:
    return " ".join(_basic_clean(text).split()).lower()


def _clean_whitespace(text: str) -> str:
    return " ".join(_basic_clean(text).split())


def _clean_canonicalize(text: str) -> str:
    text = _basic_clean(text).replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


_CLEANERS: dict[str, Callable[[str], str]] = {
    "lower": _clean_lower,
    "whitespace": _clean_whitespace,
    "canonicalize": _clean_canonicalize,
}


class BpeTables(Protocol):
    """Merge ranks and token ids of a CLIP BPE vocabulary."""

    size: int

    def rank(self, first: str, second: str) -> int | None:
        """The rank of merging ``first`` and ``second`` (None: never merged)."""
        ...

    def token_id(self, token: str) -> int:
        """The id of a token (KeyError: not in the vocabulary)."""
        ...


class DictTables:
    """The tables built from open_clip's gzipped merges file, as open_clip builds them."""

    def __init__(self, bpe_path: str | Path) -> None:
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1 : _N_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        byte_chars = list(_bytes_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
        vocab += _SPECIAL
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.size = len(self.encoder)

    def rank(self, first: str, second: str) -> int | None:
        return self.ranks.get((first, second))

    def token_id(self, token: str) -> int:
        return self.encoder[token]


#: Arrays of a tables file: sorted UTF-8 keys ("first second" merges; tokens) and values.
_ARRAYS = ("pairs", "pair_ranks", "tokens", "token_ids")


class ArrayTables:
    """The tables of a file :func:`write_tables` wrote: looked up by binary search."""

    def __init__(self, path: str | Path) -> None:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in _ARRAYS}
        pairs, ranks, tokens, ids = (arrays[name] for name in _ARRAYS)
        if (
            pairs.dtype.kind != "S"
            or tokens.dtype.kind != "S"
            or pairs.shape != ranks.shape
            or tokens.shape != ids.shape
            or pairs.ndim != 1
            or tokens.ndim != 1
        ):
            raise ValueError(f"{path} is not a BPE tables file")
        self._pairs, self._ranks = pairs, ranks.astype(np.int64)
        self._tokens, self._ids = tokens, ids.astype(np.int64)
        self.size = len(tokens)

    def rank(self, first: str, second: str) -> int | None:
        return _find(self._pairs, self._ranks, f"{first} {second}".encode())

    def token_id(self, token: str) -> int:
        found = _find(self._tokens, self._ids, token.encode())
        if found is None:
            raise KeyError(token)
        return found


def _find(keys: np.ndarray, values: np.ndarray, key: bytes) -> int | None:
    i = int(np.searchsorted(keys, key))
    return int(values[i]) if i < len(keys) and keys[i] == key else None


def write_tables(bpe_path: str | Path, out: BinaryIO) -> None:
    """Write the tables of ``bpe_path`` (open_clip's merges file) for :class:`ArrayTables`."""
    tables = DictTables(bpe_path)

    def sorted_arrays(items: list[tuple[bytes, int]]) -> tuple[np.ndarray, np.ndarray]:
        keys = np.array([k for k, _ in items], dtype=np.bytes_)
        values = np.array([v for _, v in items], dtype=np.int32)
        order = np.argsort(keys, kind="stable")
        return keys[order], values[order]

    pairs, ranks = sorted_arrays([(f"{a} {b}".encode(), r) for (a, b), r in tables.ranks.items()])
    tokens, ids = sorted_arrays([(t.encode(), i) for t, i in tables.encoder.items()])
    np.savez(out, pairs=pairs, pair_ranks=ranks, tokens=tokens, token_ids=ids)


class ClipTokenizer:
    """CLIP BPE tokenizer: texts → (N, context_length) int64 token ids.

    Args:
        bpe_path: open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (or a file like it).
        context_length: number of token positions the text tower takes.
        clean: one of :data:`CLEAN_MODES` (open_clip's default is ``lower``).
        tables_path: the same vocabulary's tables written by :func:`write_tables`; when
            given, ``bpe_path`` is not read (loading takes milliseconds instead of 0.1 s+).
    """

    def __init__(
        self,
        bpe_path: str | Path,
        context_length: int,
        clean: str = "lower",
        tables_path: str | Path | None = None,
    ) -> None:
        if clean not in _CLEANERS:
            raise ValueError(f"unknown clean mode {clean!r} (known: {', '.join(CLEAN_MODES)})")
        self._tables: BpeTables = (
            ArrayTables(tables_path) if tables_path is not None else DictTables(bpe_path)
        )
        self._cache: dict[str, list[int]] = {}
        self._clean = _CLEANERS[clean]
        self._byte_map = _bytes_to_unicode()
        self.context_length = int(context_length)
        self.sot_token_id = self._tables.token_id(_SPECIAL[0])
        self.eot_token_id = self._tables.token_id(_SPECIAL[1])
        self.vocab_size = self._tables.size

    def _bpe(self, word: str) -> list[int]:
        """Token ids of one pre-tokenised word (byte-mapped), merges applied by rank."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        if word in _SPECIAL:
            ids = [self._tables.token_id(word)]
        else:
            ids = [self._tables.token_id(p) for p in self._merge(word)]
        self._cache[word] = ids
        return ids

    def _merge(self, token: str) -> tuple[str, ...]:
        rank = self._tables.rank
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            # The pair of least rank (ranks are unique); none ranked: the word is done.
            best, bigram = None, ("", "")
            for pair in set(itertools.pairwise(word)):
                r = rank(*pair)
                if r is not None and (best is None or r < best):
                    best, bigram = r, pair
            if best is None:
                break
            first, second = bigram
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end markers and without truncation."""
        ids: list[int] = []
        for token in _PATTERN.findall(self._clean(text)):
            mapped = "".join(self._byte_map[b] for b in token.encode("utf-8"))
            ids.extend(self._bpe(mapped))
        return ids

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` including the start/end markers, before truncation."""
        return len(self.encode(text)) + 2

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token ids, shape (N, context_length), int64, zero-padded, cut like open_clip."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.zeros((len(texts), self.context_length), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.eot_token_id
            out[row, : len(ids)] = ids
        return out
