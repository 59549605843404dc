"""QueryRuntime: encode texts and images with a model's exported ONNX towers, no torch.

Sessions run on onnxruntime's CPU provider (CUDA first when the installed onnxruntime
has it). A query is one small batch, so the sessions are set up not to compete with a
busy machine: at most two intra-op threads that sleep instead of spinning, one inter-op
thread, sequential execution.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import QueryRuntimeError
from . import format as fmt
from .hf_tokenizer import HFTokenizer
from .preprocess import ImageTransform
from .tokenizer import ClipTokenizer

logger = logging.getLogger(__name__)

TOWERS = ("text", "image")


def _session_options(ort: Any) -> Any:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = min(2, os.cpu_count() or 1)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spinning threads burn a core each while waiting; a query is too short to gain from it.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # errors only: onnxruntime's warnings go to stderr otherwise
    return opts


def _import_onnxruntime(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise QueryRuntimeError(path, f"onnxruntime is not installed ({exc})") from exc
    return onnxruntime


class QueryRuntime:
    """A loaded runtime directory. Create with :meth:`load`.

    Attributes:
        path: the runtime directory.
        identity: identity of the model the towers were exported from.
        dim: embedding dimension.
        context_length: token positions of the text tower.
        image_size: side, in pixels, of the square (the larger side) the image tower sees.
        tokenizer: the CLIP BPE tokenizer, or a Hugging Face ``tokenizer.json`` one.
        transform: the image preprocessing.
        meta: the parsed ``runtime.json``.
    """

    def __init__(self, path: Path, meta: dict[str, Any], ort: Any) -> None:
        self.path = path
        self.meta = meta
        self.identity: str = meta["identity"]
        self.dim = int(meta["dim"])
        self.context_length = int(meta["context_length"])
        self.tokenizer = _load_tokenizer(path, meta)
        self.transform = _load_transform(path, meta)
        self.image_size = max(self.transform.size)
        self._ort = ort
        self._sessions: dict[str, Any] = {}
        self._require_self_test = True

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        expect_identity: str | None = None,
        towers: Iterable[str] = TOWERS,
        *,
        require_self_test: bool = True,
    ) -> QueryRuntime:
        """Open a runtime directory written by ``mmsearch.export.export_model``.

        Args:
            model_dir: the directory.
            expect_identity: the model identity the caller needs (an index's model);
                a runtime exported from another model is refused.
            towers: towers whose sessions are created now; the others are created on
                first use (a text query never pays for the image tower).
            require_self_test: refuse a tower without a recorded self-test embedding
                (only the exporter, which records them, turns this off).

        Returns:
            The loaded runtime.

        Raises:
            QueryRuntimeError: onnxruntime is missing; the directory is missing, not a
                runtime, of another format version or model, or its files are damaged.
        """
        path = Path(model_dir)
        ort = _import_onnxruntime(path)
        meta = _read_meta(path)
        if expect_identity is not None and meta["identity"] != expect_identity:
            raise QueryRuntimeError(
                path, f"exported from model {meta['identity']!r}, not {expect_identity!r}"
            )
        _check_files(path, meta)
        runtime = cls(path, meta, ort)
        runtime._require_self_test = require_self_test
        for tower in towers:
            runtime._session(tower)
        return runtime

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Encode texts (cut to the context length). Returns (N, dim) float32, unit rows."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._run("text", {fmt.TEXT_INPUT: self.text_input(list(texts))})

    def text_input(self, texts: list[str]) -> np.ndarray:
        """Token ids for the text tower: padded to the context length, or — for a tower
        exported with ``trim`` (the embedding depends only on tokens up to the end token) —
        cut after the last end token of the batch, which saves most of the work; for a
        tower that ignores padding (``trim: "pad"``), after the last non-pad token."""
        ids = self.tokenizer(texts)
        trim = self.meta["towers"]["text"].get("trim")
        if trim == fmt.TRIM_PAD:  # cut after the last column holding a non-pad token
            used = np.flatnonzero((ids != self.meta["tokenizer"]["pad_id"]).any(axis=0))
            ids = np.ascontiguousarray(ids[:, : max(int(used[-1]) + 1 if used.size else 0, 2)])
        elif trim:
            ids = np.ascontiguousarray(ids[:, : int(ids.argmax(axis=1).max()) + 1])
        return ids

    def encode_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Encode PIL images (any mode; converted to RGB). Returns (N, dim) float32, unit rows."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._run("image", {fmt.IMAGE_INPUT: self.transform.batch(images[i : i + batch_size])})
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(parts)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Encode already preprocessed images, float32 (N, 3, H, W)."""
        return self._run("image", {fmt.IMAGE_INPUT: np.ascontiguousarray(pixels, np.float32)})

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` including start/end markers (no truncation)."""
        return self.tokenizer.count_tokens(text)

    def is_truncated(self, text: str) -> bool:
        """True when ``text`` is longer than the model's context and will be cut."""
        return self.count_tokens(text) > self.context_length

    def _run(self, tower: str, feed: dict[str, np.ndarray]) -> np.ndarray:
        try:
            (out,) = self._session(tower).run([fmt.OUTPUT], feed)
        except QueryRuntimeError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise QueryRuntimeError(self.path, f"the {tower} tower failed: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        # The graph normalises already; again here so rows are unit length in float32.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _session(self, tower: str) -> Any:
        session = self._sessions.get(tower)
        if session is None:
            session = self._create_session(tower)
            self._sessions[tower] = session
            self._self_test(tower)
        return session

    def self_test_output(self, tower: str) -> np.ndarray:
        """The tower's embedding of its fixed self-test input (see :func:`self_test_input`)."""
        return self._run(tower, {_INPUTS[tower]: self_test_input(tower, self)})[0]

    def _self_test(self, tower: str) -> None:
        """Weights damaged in place (same size) would give wrong answers: encode a fixed
        input and compare with the embedding recorded at export. One small inference."""
        expected = self.meta["towers"][tower].get("self_test")
        if expected is None and not self._require_self_test:
            return
        if not isinstance(expected, list) or len(expected) != self.dim:
            raise QueryRuntimeError(self.path, f"runtime.json lacks the {tower} self-test")
        cosine = float(self.self_test_output(tower) @ np.asarray(expected, np.float32))
        if not cosine >= fmt.MIN_COSINE:  # written so that NaN fails too
            self._sessions.pop(tower, None)
            raise QueryRuntimeError(
                self.path, f"the {tower} tower fails its self-test (cosine {cosine:.6f})"
            )

    def _create_session(self, tower: str) -> Any:
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r} (known: {', '.join(TOWERS)})")
        if tower not in self.meta["towers"]:
            raise QueryRuntimeError(self.path, f"this runtime has no {tower} tower (text only)")
        file = self.path / self.meta["towers"][tower]["file"]
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in self._ort.get_available_providers()]
        try:
            session = self._ort.InferenceSession(
                str(file), sess_options=_session_options(self._ort), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise QueryRuntimeError(self.path, f"cannot load {file.name}: {exc}") from exc
        self._check_signature(tower, session)
        logger.debug("loaded %s on %s", file, session.get_providers())
        return session

    def _check_signature(self, tower: str, session: Any) -> None:
        """A tower whose inputs/outputs do not fit runtime.json is a mismatched file."""
        (inp,), (out,) = session.get_inputs(), session.get_outputs()
        height, width = self.transform.size
        expected_in = {
            "text": (fmt.TEXT_INPUT, [self.context_length]),
            "image": (fmt.IMAGE_INPUT, [3, height, width]),
        }[tower]
        shape = list(inp.shape[1:])
        if tower == "text" and self.meta["towers"]["text"].get("trim") and len(shape) == 1:
            shape = [self.context_length]  # a trimmed tower takes any length up to it
        if (inp.name, shape) != expected_in or (
            out.name,
            list(out.shape[1:]),
        ) != (fmt.OUTPUT, [self.dim]):
            raise QueryRuntimeError(
                self.path,
                f"{tower} tower takes {inp.name}{inp.shape} → {out.name}{out.shape}, "
                f"runtime.json says {expected_in} → {[self.dim]}",
            )


_INPUTS = {"text": fmt.TEXT_INPUT, "image": fmt.IMAGE_INPUT}
SELF_TEST_TEXT = "a photo of a dog on a beach"


def self_test_input(tower: str, runtime: QueryRuntime) -> np.ndarray:
    """A fixed input of each tower: a tokenised caption, or a smooth pixel ramp."""
    if tower == "text":
        return runtime.text_input([SELF_TEST_TEXT])
    height, width = runtime.transform.size
    ramp = np.linspace(-2.0, 2.0, 3 * height * width, dtype=np.float32)
    return ramp.reshape(1, 3, height, width)


def _read_meta(path: Path) -> dict[str, Any]:
    file = path / fmt.RUNTIME_FILE
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise QueryRuntimeError(path, f"no {fmt.RUNTIME_FILE} (not exported yet?)") from exc
    except (OSError, ValueError) as exc:
        raise QueryRuntimeError(path, f"unreadable {fmt.RUNTIME_FILE}: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != fmt.FORMAT_NAME:
        raise QueryRuntimeError(path, f"{fmt.RUNTIME_FILE} is not an mmsearch query runtime")
    if meta.get("version") != fmt.FORMAT_VERSION:
        raise QueryRuntimeError(
            path, f"format version {meta.get('version')}, this mmsearch reads {fmt.FORMAT_VERSION}"
        )
    required = ("identity", "dim", "context_length", "tokenizer", "image", "towers", "files")
    missing = [k for k in required if k not in meta]
    # A text-only runtime (an index's extra text encoder) has no image tower.
    towers = ("text",) if meta.get("text_only") is True else TOWERS
    if missing or not all(t in meta["towers"] for t in towers):
        raise QueryRuntimeError(path, f"{fmt.RUNTIME_FILE} lacks {missing or 'a tower'}")
    return meta


def _check_files(path: Path, meta: dict[str, Any]) -> None:
    """Every file present with its recorded size: a cheap check against truncation."""
    for name, size in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise QueryRuntimeError(path, f"{name} is missing")
        if file.stat().st_size != size:
            raise QueryRuntimeError(
                path, f"{name} has {file.stat().st_size} bytes, {size} were written"
            )


def _load_tokenizer(path: Path, meta: dict[str, Any]) -> ClipTokenizer | HFTokenizer:
    spec = meta["tokenizer"]
    if spec.get("kind") == fmt.TOKENIZER_HF:
        return _load_hf_tokenizer(path, meta)
    if spec.get("kind") != fmt.TOKENIZER_CLIP_BPE:
        raise QueryRuntimeError(path, f"tokenizer kind {spec.get('kind')!r} is not supported")
    try:
        return ClipTokenizer(
            path / spec["files"]["bpe"], meta["context_length"], spec.get("clean", "lower")
        )
    except (OSError, EOFError, KeyError, ValueError) as exc:
        raise QueryRuntimeError(path, f"cannot read the tokenizer: {exc}") from exc


def _load_hf_tokenizer(path: Path, meta: dict[str, Any]) -> HFTokenizer:
    spec = meta["tokenizer"]
    try:
        return HFTokenizer(
            path / spec["files"]["tokenizer"],
            meta["context_length"],
            start_id=spec["start_id"],
            end_id=spec["end_id"],
            pad_id=spec["pad_id"],
            clean=spec.get("clean"),
        )
    except ImportError as exc:
        raise QueryRuntimeError(
            path, f"its tokenizer needs the tokenizers package ({exc}): mmsearch[multilingual]"
        ) from exc
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise QueryRuntimeError(path, f"cannot read the tokenizer: {exc}") from exc


def _load_transform(path: Path, meta: dict[str, Any]) -> ImageTransform:
    try:
        return ImageTransform.from_config(meta["image"])
    except (KeyError, TypeError, ValueError) as exc:
        raise QueryRuntimeError(path, f"bad image preprocessing config: {exc}") from exc
