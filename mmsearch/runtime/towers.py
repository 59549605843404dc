"""QueryRuntime: encode texts and images with a model's exported ONNX towers, no torch.

Sessions run on onnxruntime's CPU provider (CUDA first when the installed onnxruntime
has it). A query is one small batch, so the sessions are set up not to compete with a
busy machine: intra-op threads that sleep instead of spinning, one inter-op thread,
sequential execution — and as many intra-op threads (at most two) as there are cores free
when the query comes (:func:`free_cores`). Two threads encode a query's text in about
two-thirds of one thread's time on an idle machine, but beside a process that keeps a
core busy the second thread waits for that core at every layer; the runtime then uses a
one-thread session of the same tower (created on first need) on the free core.

What a cold query pays for is kept small: a tower's session is created on its first use
(a text query never loads the image tower); a tower optimised by onnxruntime at export
is loaded without optimising it again; and a tower's self-test (one inference compared
with the embedding recorded at export) runs only when its files are not the ones last
verified (:data:`~.format.VERIFIED_FILE`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import cpu_cores
from ..errors import QueryRuntimeError
from . import format as fmt
from .hf_tokenizer import HFTokenizer
from .preprocess import ImageTransform
from .tokenizer import ClipTokenizer

logger = logging.getLogger(__name__)

TOWERS = ("text", "image")
#: Most intra-op threads a session gets: a query is one small batch, and beyond two
#: threads the weights' memory bandwidth, not compute, bounds the text tower.
MAX_THREADS = 2
_LOADAVG = "/proc/loadavg"
_CORES = cpu_cores()  # asked once: this process's affinity


def free_cores(cores: int | None = None) -> int:
    """Cores not taken by other threads right now: the cores minus the threads running
    or waiting to run besides the caller (Linux's ``/proc/loadavg``, an instantaneous
    count, not an average), at least 1; all the cores where that cannot be read."""
    cores = cores or _CORES
    try:
        with open(_LOADAVG, encoding="ascii") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, cores - max(0, runnable - 1))


def _session_options(
    ort: Any, optimized: bool = False, prepack: bool = True, threads: int = MAX_THREADS
) -> Any:
    opts = ort.SessionOptions()
    if optimized:  # optimised at export: doing it again costs start-up and changes nothing
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if not prepack:  # see QueryRuntime.load
        opts.add_session_config_entry("session.disable_prepacking", "1")
    opts.intra_op_num_threads = threads
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

    def __init__(self, path: Path, meta: dict[str, Any], ort: Any, digest: str = "") -> None:
        self.path = path
        self.meta = meta
        self._digest = digest  # of runtime.json: a verification holds for this one only
        self.identity: str = meta["identity"]
        self.dim = int(meta["dim"])
        self.context_length = int(meta["context_length"])
        self.tokenizer = _load_tokenizer(path, meta)
        self.transform = _load_transform(path, meta)
        self.image_size = max(self.transform.size)
        self._ort = ort
        self._sessions: dict[tuple[str, int], Any] = {}  # (tower, threads) → session
        self._most_threads = max(1, min(MAX_THREADS, _CORES))
        self._require_self_test = True
        self._prepack = True

    @classmethod
    def load(
        cls,
        model_dir: str | os.PathLike,
        expect_identity: str | None = None,
        towers: Iterable[str] = TOWERS,
        *,
        require_self_test: bool = True,
        prepack: bool = True,
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
            prepack: let onnxruntime repack the weights for its matrix kernels when a
                session is created. False suits a process that answers one query (the
                CLI): for ViT-B-32's text tower the session costs about 0.2 s less CPU
                to create and each inference about 3x more (0.03 s → 0.08 s), so one
                query costs about half; a long-lived process wants the default.

        Returns:
            The loaded runtime.

        Raises:
            QueryRuntimeError: onnxruntime is missing; the directory is missing, not a
                runtime, of another format version or model, or its files are damaged.
        """
        path = Path(model_dir)
        ort = _import_onnxruntime(path)
        meta, digest = _read_meta(path)
        if expect_identity is not None and meta["identity"] != expect_identity:
            raise QueryRuntimeError(
                path, f"exported from model {meta['identity']!r}, not {expect_identity!r}"
            )
        _check_files(path, meta)
        runtime = cls(path, meta, ort, digest)
        runtime._require_self_test = require_self_test
        runtime._prepack = prepack
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

    def encode_pixels(self, pixels: np.ndarray, threads: int | None = None) -> np.ndarray:
        """Encode already preprocessed images, float32 (N, 3, H, W), with ``threads``
        intra-op threads (default: as for a query, :meth:`threads_now`)."""
        session = self._session("image", threads) if threads else None
        feed = {fmt.IMAGE_INPUT: np.ascontiguousarray(pixels, np.float32)}
        return self._run("image", feed, session)

    def open_tower(self, tower: str, threads: int | None = None) -> None:
        """Create the tower's session now (the first one of a tower is self-tested), not on
        its first use.

        Raises:
            QueryRuntimeError: the tower cannot be opened or fails its self-test.
        """
        self._session(tower, threads)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` including start/end markers (no truncation)."""
        return self.tokenizer.count_tokens(text)

    def is_truncated(self, text: str) -> bool:
        """True when ``text`` is longer than the model's context and will be cut."""
        return self.count_tokens(text) > self.context_length

    def _run(self, tower: str, feed: dict[str, np.ndarray], session: Any = None) -> np.ndarray:
        try:
            (out,) = (session or self._session(tower)).run([fmt.OUTPUT], feed)
        except QueryRuntimeError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise QueryRuntimeError(self.path, f"the {tower} tower failed: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        # The graph normalises already; again here so rows are unit length in float32.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def threads_now(self) -> int:
        """Intra-op threads for an inference starting now: up to :data:`MAX_THREADS`, no
        more than the cores free (:func:`free_cores`)."""
        if self._most_threads == 1:
            return 1
        return min(self._most_threads, free_cores())

    def _session(self, tower: str, threads: int | None = None) -> Any:
        """The tower's session with ``threads`` intra-op threads (default: as many as are
        free now), created on first use; the first of a tower is self-tested."""
        threads = threads or self.threads_now()
        session = self._sessions.get((tower, threads))
        if session is None:
            first = not any(t == tower for t, _ in self._sessions)
            fingerprint = self._fingerprint(tower) if first else {}  # before reading
            session = self._create_session(tower, threads)
            tested = first and not self._verified(tower, fingerprint)
            if tested and self._self_test(tower, session):
                self._record_verified(tower, fingerprint)
            self._sessions[(tower, threads)] = session
        return session

    def _tower_files(self, tower: str) -> list[str]:
        """The files a tower's answers depend on: its graph and weights, and for the text
        tower the tokenizer's files."""
        names = [name for name in self.meta["files"] if name.startswith(f"{tower}.")]
        if tower == "text":
            names += [str(name) for name in self.meta["tokenizer"].get("files", {}).values()]
        return sorted(set(names))

    def _fingerprint(self, tower: str) -> dict[str, list[int]]:
        """Each of the tower's files as (size, mtime, ctime, inode): rewriting a file in
        place, even keeping its size and mtime, changes its ctime; a copy, its inode."""
        out = {}
        for name in self._tower_files(tower):
            try:
                st = (self.path / name).stat()
            except OSError:
                return {}
            out[name] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        return out

    def _verified(self, tower: str, fingerprint: dict[str, list[int]]) -> bool:
        """Whether this tower, with these very files and this runtime.json, passed its
        self-test before (recorded in :data:`~.format.VERIFIED_FILE`)."""
        if not fingerprint or not self._digest:
            return False
        try:
            record = json.loads((self.path / fmt.VERIFIED_FILE).read_text(encoding="utf-8"))
            return bool(
                record["runtime_json"] == self._digest and record["towers"][tower] == fingerprint
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False

    def _record_verified(self, tower: str, fingerprint: dict[str, list[int]]) -> None:
        """Remember a passed self-test (best effort: a read-only directory just means the
        next process tests again)."""
        if not fingerprint or not self._digest:
            return
        file = self.path / fmt.VERIFIED_FILE
        record: dict[str, Any] = {"runtime_json": self._digest, "towers": {}}
        try:
            old = json.loads(file.read_text(encoding="utf-8"))
            if old.get("runtime_json") == self._digest and isinstance(old.get("towers"), dict):
                record["towers"].update(old["towers"])
        except (OSError, ValueError, AttributeError):
            pass
        record["towers"][tower] = fingerprint
        tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, file)
        except OSError as exc:
            logger.debug("cannot record the %s tower's verification: %s", tower, exc)
            tmp.unlink(missing_ok=True)

    def self_test_output(self, tower: str, session: Any = None) -> np.ndarray:
        """The tower's embedding of its fixed self-test input (see :func:`self_test_input`)."""
        return self._run(tower, {_INPUTS[tower]: self_test_input(tower, self)}, session)[0]

    def _self_test(self, tower: str, session: Any) -> bool:
        """Weights damaged in place (same size) would give wrong answers: encode a fixed
        input and compare with the embedding recorded at export. One small inference.
        Returns whether it ran (a tower without a recorded embedding is not tested when
        the caller allowed that)."""
        expected = self.meta["towers"][tower].get("self_test")
        if expected is None and not self._require_self_test:
            return False
        if not isinstance(expected, list) or len(expected) != self.dim:
            raise QueryRuntimeError(self.path, f"runtime.json lacks the {tower} self-test")
        cosine = float(self.self_test_output(tower, session) @ np.asarray(expected, np.float32))
        if not cosine >= fmt.MIN_COSINE:  # written so that NaN fails too
            raise QueryRuntimeError(
                self.path, f"the {tower} tower fails its self-test (cosine {cosine:.6f})"
            )
        return True

    def _create_session(self, tower: str, threads: int) -> Any:
        if tower not in TOWERS:
            raise ValueError(f"unknown tower {tower!r} (known: {', '.join(TOWERS)})")
        if tower not in self.meta["towers"]:
            raise QueryRuntimeError(self.path, f"this runtime has no {tower} tower (text only)")
        spec = self.meta["towers"][tower]
        file = self.path / spec["file"]
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        providers = [p for p in wanted if p in self._ort.get_available_providers()]
        optimized = spec.get("optimized") == fmt.OPTIMIZED_EXTENDED
        try:
            session = self._ort.InferenceSession(
                str(file),
                sess_options=_session_options(self._ort, optimized, self._prepack, threads),
                providers=providers,
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


def _read_meta(path: Path) -> tuple[dict[str, Any], str]:
    """runtime.json, checked, and the digest of its bytes."""
    file = path / fmt.RUNTIME_FILE
    try:
        raw = file.read_bytes()
        meta = json.loads(raw.decode("utf-8"))
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
    return meta, hashlib.sha256(raw).hexdigest()


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
    tables = spec["files"].get("tables")  # absent from older exports: built from the bpe
    try:
        return ClipTokenizer(
            path / spec["files"]["bpe"],
            meta["context_length"],
            spec.get("clean", "lower"),
            tables_path=path / tables if tables else None,
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
