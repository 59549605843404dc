"""Tokenizers of the multilingual models without torch: a Hugging Face ``tokenizer.json``
run by the ``tokenizers`` library (Rust; no transformers, no torch).

Serves the two kinds of text tower the query runtime knows beside CLIP's BPE: open_clip's
``HFTokenizer`` (XLM-RoBERTa, NLLB … SentencePiece/Unigram or BPE vocabularies) and
Chinese-CLIP's BERT WordPiece tokenizer (its vocabulary written as a ``tokenizer.json`` at
export). Both lay out a text the same way, which is what this class reproduces: the start
id, the text's ids cut to ``context_length - 2``, the end id, padding with the pad id.
The exporter checks the ids against the torch-side tokenizer on probe texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .tokenizer import _CLEANERS


class HFTokenizer:
    """``tokenizer.json`` → (N, context_length) int64 token ids.

    Args:
        path: the ``tokenizer.json`` file.
        context_length: token positions of the text tower.
        start_id: id put before the text (``<s>``, ``[CLS]``).
        end_id: id put after it (``</s>``, ``[SEP]``).
        pad_id: id of the padding.
        clean: open_clip's text cleaning applied first (``whitespace``, ``lower``,
            ``canonicalize``), or None for none (Chinese-CLIP).

    Raises:
        ImportError: the ``tokenizers`` package is missing.
        ValueError: unknown clean mode; an unreadable tokenizer file.
    """

    def __init__(
        self,
        path: str | Path,
        context_length: int,
        start_id: int,
        end_id: int,
        pad_id: int,
        clean: str | None = None,
    ) -> None:
        from tokenizers import Tokenizer  # the multilingual extra; imported only when used

        if clean is not None and clean not in _CLEANERS:
            raise ValueError(f"unknown clean mode {clean!r}")
        try:
            self._tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises its own Exception type
            raise ValueError(f"cannot read {path}: {exc}") from exc
        self._clean = _CLEANERS[clean] if clean else None
        self.context_length = int(context_length)
        self.start_id, self.end_id, self.pad_id = int(start_id), int(end_id), int(pad_id)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without start/end ids and without truncation."""
        return list(self._encode_batch([text])[0])

    def _encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if self._clean is not None:
            texts = [self._clean(t) for t in texts]
        found = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in found]

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` including the start/end ids, before truncation."""
        return len(self.encode(text)) + 2

    def __call__(self, texts: str | Sequence[str]) -> np.ndarray:
        """Token ids, shape (N, context_length), int64, padded with the pad id."""
        if isinstance(texts, str):
            texts = [texts]
        out = np.full((len(texts), self.context_length), self.pad_id, dtype=np.int64)
        for row, ids in enumerate(self._encode_batch(texts)):
            kept = [self.start_id, *ids[: self.context_length - 2], self.end_id]
            out[row, : len(kept)] = kept
        return out
