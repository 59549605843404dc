"""Export a loaded model's text and image towers to ONNX for the torch-free query runtime.

:func:`export_model` writes a runtime directory (layout in :mod:`mmsearch.runtime.format`)
that :class:`mmsearch.runtime.QueryRuntime` reads: ``text.onnx``, ``image.onnx`` (each
optimised once by onnxruntime, so a query's session need not do it), the CLIP BPE
vocabulary copied from open_clip with its tables ready to use, and ``runtime.json``.
Before the directory is moved into place, the runtime is loaded from it and checked
against torch on probe inputs: the same token ids, the same preprocessed pixels, and
embeddings with cosine >= :data:`MIN_COSINE` for every probe. A failed check raises
:class:`ExportError` and leaves nothing at ``out_dir``.

Exporter: ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript, opset 18).
With torch 2.14 both exporters handle the open_clip ViT towers offline and match torch
to within 1e-6 cosine; the dynamo one is torch's default since 2.9 and traces the batch
axis symbolically, while the TorchScript one is deprecated ("will be removed"), warns
that its advanced-indexing export is wrong for negative indices, and bakes Python-side
tensor checks into the trace. The price is export time (ViT-B-32 on 2 cores: about 20 s
a tower against 4-5 s), paid once per model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from PIL import Image

from .encoder import Encoder
from .errors import ExportError, QueryRuntimeError
from .runtime import format as fmt
from .runtime.preprocess import ImageTransform
from .runtime.tokenizer import write_tables
from .runtime.towers import QueryRuntime

logger = logging.getLogger(__name__)

MIN_COSINE = fmt.MIN_COSINE
_OPSET = 18
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: Token ids open_clip's SimpleTokenizer has with no extra special tokens.
_CLIP_VOCAB_SIZE = 49408

DEFAULT_PROBE_TEXTS = (
    "",
    " ",
    "a",
    "a red car",
    "A PHOTO OF A DOG ON THE BEACH!!!",
    "café crème brûlée, naïve façade",
    "北京的天空很蓝",
    "مرحبا بالعالم",
    "emoji 🚗🐕‍🦺 and ♥",
    "&amp; html &lt;b&gt; entities",
    "tabs\tand\nnew lines   and   runs",
    "3.14159 is pi, 42 is the answer",
    "a very long caption " * 40,
)


@dataclass(frozen=True)
class Probes:
    """Inputs the export is checked on.

    Attributes:
        texts: texts compared through tokenizer + text tower.
        images: PIL images compared through preprocessing + image tower (None: a default
            set of synthetic images of several sizes and modes).
        n_random: random pixel tensors compared on the image tower alone.
    """

    texts: Sequence[str] = DEFAULT_PROBE_TEXTS
    images: Sequence[Image.Image] | None = None
    n_random: int = 3


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_model` wrote and measured.

    Attributes:
        out_dir: the runtime directory.
        identity: identity of the exported model.
        text_min_cosine: least cosine, runtime vs torch, over the probe texts.
        image_min_cosine: least cosine, runtime vs torch, over the probe images/tensors.
        max_pixel_diff: largest absolute difference of preprocessed pixels vs open_clip.
        seconds: wall time of the export and its checks.
        files: file name → size in bytes.
    """

    out_dir: Path
    identity: str
    text_min_cosine: float
    image_min_cosine: float
    max_pixel_diff: float
    seconds: float
    files: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "out_dir": str(self.out_dir)}


def _text_trimmable(model: torch.nn.Module) -> bool:
    """Whether the text tower's output depends only on the tokens up to the end token: a
    causal attention mask and pooling at the end token (open_clip's CLIP text tower). Such a
    tower is exported for any sequence length, and queries feed it only up to the end token
    — "a red car" is 5 of 77 positions, a fraction of the work, with the same embedding."""
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    return (
        all(hasattr(model, name) for name in needed)
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) == "argmax"
    )


def _pad_trimmable(model: torch.nn.Module) -> bool:
    """Whether the text tower ignores padding: a Hugging Face transformer under an attention
    mask built from the pad id, pooled over the unmasked tokens or at the first one
    (open_clip's ``HFTextEncoder``), or Chinese-CLIP's BERT (mask from [PAD], the [CLS]
    token). Queries then feed it only up to the last non-pad token of the batch (marked
    ``trim: "pad"``); the export check compares that with torch on full-length input."""
    from open_clip.hf_model import HFTextEncoder

    from .chinese_clip import ChineseClip

    return isinstance(getattr(model, "text", None), HFTextEncoder) or isinstance(model, ChineseClip)


def _encode_trimmed_text(model: Any, text: torch.Tensor) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` for ``text`` of any length up to the context: the
    positional embedding and the causal mask cut to that length."""
    from open_clip.transformer import text_global_pool

    seq = text.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast) + model.positional_embedding[:seq].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:seq, :seq])
    x = text_global_pool(model.ln_final(x), text, "argmax")
    if model.text_projection is None:
        return x
    if isinstance(model.text_projection, torch.nn.Linear):
        return model.text_projection(x)
    return x @ model.text_projection


class _Tower(torch.nn.Module):
    """One tower of an open_clip model, with the L2 normalisation the index relies on."""

    def __init__(self, model: torch.nn.Module, tower: str, trim: bool | str = False) -> None:
        super().__init__()
        self.model = model
        self.tower = tower
        self.trim = trim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tower == "image":
            feats = self.model.encode_image(x)
        elif self.trim is True:  # CLIP's causal tower: cut to the length it is given
            feats = _encode_trimmed_text(self.model, x)
        else:
            feats = self.model.encode_text(x)
        return torch.nn.functional.normalize(feats.float(), dim=-1)


def export_model(
    encoder: Encoder,
    out_dir: str | os.PathLike,
    *,
    probes: Probes | None = None,
    text_only: bool = False,
) -> ExportReport:
    """Export ``encoder``'s towers to ``out_dir`` and check them against torch.

    Args:
        encoder: the loaded model.
        out_dir: the runtime directory to write; replaced atomically when it exists.
        probes: inputs to check the export on (default :class:`Probes`).
        text_only: export the text tower alone (an index's extra text encoder, whose
            image tower is the index model's); ``image_min_cosine`` is then NaN.

    Returns:
        The report, with the measured least cosines.

    Raises:
        ExportError: the model cannot be exported (unsupported tokenizer or
            preprocessing, an exporter failure) or the export does not match torch.
    """
    started = time.perf_counter()
    probes = probes or Probes()
    out = Path(out_dir)
    meta = _describe(encoder)
    if text_only:
        del meta["towers"]["image"]
        meta["text_only"] = True
    model = _cpu_fp32(encoder)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Not tempfile.mkdtemp: its 0700 mode would stay on the finished directory.
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{time.monotonic_ns()}.tmp")
    tmp.mkdir()
    try:
        _write_tokenizer(encoder, meta["tokenizer"], tmp)
        trim = _text_trimmable(model) or (fmt.TRIM_PAD if _pad_trimmable(model) else False)
        meta["towers"]["text"]["trim"] = trim
        tokens = encoder.tokenizer(["a photo of", "a dog"])
        _export_tower(
            model, "text", tokens[:, :8] if trim else tokens, tmp / "raw-text.onnx", trim=trim,
            max_tokens=encoder.context_length,
        )  # fmt: skip
        if not text_only:
            height, width = meta["image"]["size"]
            pixels = torch.randn(2, 3, height, width, generator=torch.Generator().manual_seed(0))
            _export_tower(model, "image", pixels, tmp / "raw-image.onnx")
        for tower in meta["towers"]:
            _optimize(tmp / f"raw-{tower}.onnx", tmp / meta["towers"][tower]["file"])
            meta["towers"][tower]["optimized"] = fmt.OPTIMIZED_EXTENDED
        _write_meta(tmp, meta)
        checks = _verify(encoder, model, tmp, probes, text_only)
        for tower in meta["towers"]:
            meta["towers"][tower]["min_cosine"] = checks[tower]
            meta["towers"][tower]["self_test"] = checks[f"{tower}_self_test"]
        meta["max_pixel_diff"] = checks["pixels"]
        files = _write_meta(tmp, meta)
        _load(tmp, encoder.spec.identity, towers=tuple(meta["towers"]))  # loads, self-tests pass
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    logger.info(
        "exported %s to %s in %.1f s (min cosine text %.6f, image %.6f)",
        encoder.spec.display, out, seconds, checks["text"], checks["image"],
    )  # fmt: skip
    return ExportReport(
        out,
        encoder.spec.identity,
        checks["text"],
        checks["image"],
        checks["pixels"],
        seconds,
        files,
    )


def _describe(encoder: Encoder) -> dict[str, Any]:
    """runtime.json without file sizes and measurements; refuses what the runtime lacks."""
    try:
        transform = ImageTransform.from_config(encoder.preprocess_cfg())
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"{encoder.spec.display}: preprocessing not supported: {exc}") from exc
    return {
        "format": fmt.FORMAT_NAME,
        "version": fmt.FORMAT_VERSION,
        "identity": encoder.spec.identity,
        "display": encoder.spec.display,
        "dim": encoder.dim,
        "context_length": encoder.context_length,
        "tokenizer": _tokenizer_spec(encoder),
        "image": transform.to_config(),
        "towers": {
            "text": {"file": fmt.TEXT_FILE, "input": fmt.TEXT_INPUT, "output": fmt.OUTPUT},
            "image": {"file": fmt.IMAGE_FILE, "input": fmt.IMAGE_INPUT, "output": fmt.OUTPUT},
        },
        "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}, opset {_OPSET}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _write_tokenizer(encoder: Encoder, spec: dict[str, Any], directory: Path) -> None:
    """The tokenizer's files: CLIP's BPE vocabulary, or a ``tokenizer.json``."""
    if spec["kind"] == fmt.TOKENIZER_CLIP_BPE:
        shutil.copyfile(open_clip.tokenizer.default_bpe(), directory / _BPE_FILE)
        # The merge ranks ready to use, so that a query does not rebuild them at start-up.
        with open(directory / fmt.TOKENIZER_TABLES_FILE, "wb") as f:
            write_tables(directory / _BPE_FILE, f)
        spec["files"]["tables"] = fmt.TOKENIZER_TABLES_FILE
        return
    backend = _hf_backend(encoder.tokenizer)
    if backend is None:
        raise ExportError(f"{encoder.spec.display}: no tokenizer.json to write")
    backend.save(str(directory / spec["files"]["tokenizer"]))


def _hf_backend(tok: Any) -> Any:
    """The ``tokenizers.Tokenizer`` behind a multilingual model's tokenizer: a fast
    transformers tokenizer's own, or one built from Chinese-CLIP's WordPiece vocabulary."""
    inner = getattr(tok, "tokenizer", None)
    if inner is not None and getattr(inner, "is_fast", False):
        return inner.backend_tokenizer
    vocab_file = getattr(tok, "vocab_file", None)
    if vocab_file is None:
        return None
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    from .chinese_clip import MAX_WORD_CHARS

    # cn_clip's BasicTokenizer (clean, split CJK characters, lower case and strip accents,
    # split punctuation) and WordpieceTokenizer, as tokenizers' BERT pieces.
    vocab = {}
    with open(vocab_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            vocab.setdefault(line.rstrip("\n").strip(), i)
    backend = Tokenizer(
        models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=MAX_WORD_CHARS)
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return backend


def _hf_tokenizer_spec(encoder: Encoder) -> dict[str, Any]:
    """runtime.json's record of a ``tokenizer.json`` tokenizer (see
    :class:`mmsearch.runtime.hf_tokenizer.HFTokenizer`), or ExportError."""
    tok = encoder.tokenizer
    display = encoder.spec.display
    inner = getattr(tok, "tokenizer", None)
    if inner is not None:  # open_clip's HFTokenizer
        if getattr(tok, "tokenizer_mode", "") or getattr(tok, "strip_sep_token", False):
            raise ExportError(f"{display}: tokenizer mode 'clips' / strip_sep_token not supported")
        if not getattr(inner, "is_fast", False):
            raise ExportError(
                f"{display}: a slow (Python) transformers tokenizer has no tokenizer.json"
            )
        ends = list(inner("")["input_ids"])
        if len(ends) != 2:
            raise ExportError(f"{display}: tokenizer adds {len(ends)} special tokens, not 2")
        start, end, pad = ends[0], ends[1], inner.pad_token_id
        clean = _CLEANERS.get(getattr(tok, "clean_fn", None))
        if clean is None:
            raise ExportError(f"{display}: unknown tokenizer cleaning {tok.clean_fn!r}")
    else:  # Chinese-CLIP's BERT tokenizer
        start, end, pad, clean = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, None
    return {
        "kind": fmt.TOKENIZER_HF,
        "clean": clean,
        "start_id": int(start),
        "end_id": int(end),
        "pad_id": int(pad),
        "files": {"tokenizer": fmt.HF_TOKENIZER_FILE},
    }


_CLEANERS = {
    open_clip.tokenizer._clean_lower: "lower",
    open_clip.tokenizer._clean_whitespace: "whitespace",
    open_clip.tokenizer._clean_canonicalize: "canonicalize",
}


def _tokenizer_spec(encoder: Encoder) -> dict[str, Any]:
    tok = encoder.tokenizer
    name = type(tok).__name__
    if _hf_backend(tok) is not None:
        return _hf_tokenizer_spec(encoder)
    if not isinstance(tok, open_clip.tokenizer.SimpleTokenizer):
        raise ExportError(
            f"{encoder.spec.display}: tokenizer {name} is not supported by the query runtime "
            "(it implements open_clip's CLIP BPE SimpleTokenizer and fast Hugging Face and "
            "Chinese-CLIP tokenizers)"
        )
    if tok.reduction_fn is not None or tok.vocab_size != _CLIP_VOCAB_SIZE:
        raise ExportError(
            f"{encoder.spec.display}: tokenizer {name} uses a reduction mask or extra special "
            "tokens, which the query runtime does not implement"
        )
    clean = _CLEANERS.get(tok.clean_fn)
    if clean is None:
        raise ExportError(f"{encoder.spec.display}: unknown tokenizer cleaning {tok.clean_fn!r}")
    return {"kind": fmt.TOKENIZER_CLIP_BPE, "clean": clean, "files": {"bpe": _BPE_FILE}}


def _cpu_fp32(encoder: Encoder) -> torch.nn.Module:
    """The model on CPU in float32: what is exported and what the export is checked against
    (a CUDA encoder computes in float16 autocast, which would blur the comparison)."""
    model = encoder.model
    on_cpu = all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    return model if on_cpu else copy.deepcopy(model).to("cpu", torch.float32).eval()


def _export_tower(
    model: torch.nn.Module,
    tower: str,
    example: torch.Tensor,
    path: Path,
    trim: bool | str = False,
    max_tokens: int | None = None,
) -> None:
    wrapper = _Tower(model, tower, trim).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic: dict[int, Any] = {0: batch}
    if trim:  # any length from 2 (start and end tokens) to the context length
        longest = model.positional_embedding.shape[0] if trim is True else max_tokens
        dynamic[1] = torch.export.Dim("tokens", min=2, max=int(longest))
    name = fmt.TEXT_INPUT if tower == "text" else fmt.IMAGE_INPUT
    try:
        # The exporter warns about things that are fine here (and logs its progress).
        with warnings.catch_warnings(), _quiet_exporter(), torch.inference_mode(False):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (example,),
                str(path),
                input_names=[name],
                output_names=[fmt.OUTPUT],
                dynamic_shapes={"x": dynamic},
                opset_version=_OPSET,
                dynamo=True,
                # Weights in a side file (``text.onnx.data``): onnxruntime memory-maps it,
                # which makes a session 3-4x faster to create (ViT-B-32 text tower: 0.2 s
                # instead of 0.75 s) and lifts protobuf's 2 GiB limit on big towers.
                external_data=True,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many types; the reason is in the message
        raise ExportError(f"cannot export the {tower} tower: {type(exc).__name__}: {exc}") from exc


def _optimize(raw: Path, out: Path) -> None:
    """Let onnxruntime optimise an exported graph once, at level "extended" (fusions that
    hold on any hardware), and save it with its weights in ``out`` + ``.data``; ``raw`` is
    removed. A query's session then loads it without optimising (a ViT-B-32 text tower:
    about 0.1 s less CPU per cold query). The checks against torch run on this graph."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise ExportError(f"the query runtime needs onnxruntime ({exc})") from exc
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", out.name + ".data"
    )
    opts.add_session_config_entry(
        "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
    )
    try:
        ort.InferenceSession(str(raw), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot optimise {out.name}: {exc}") from exc
    for path in (raw, raw.with_name(raw.name + ".data")):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_exporter() -> Any:
    """torch.onnx logs each step at INFO/WARNING on its own loggers; keep them at ERROR."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _write_meta(directory: Path, meta: dict[str, Any]) -> dict[str, int]:
    """Write runtime.json with the size of every other file in the directory."""
    files = {
        p.name: p.stat().st_size
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != fmt.RUNTIME_FILE
    }
    meta["files"] = files
    for tower in meta["towers"].values():
        tower["bytes"] = files[tower["file"]]
    (directory / fmt.RUNTIME_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    return files


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished directory to ``out``; an older one is set aside, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _verify(
    encoder: Encoder,
    model: torch.nn.Module,
    directory: Path,
    probes: Probes,
    text_only: bool = False,
) -> dict[str, Any]:
    """Load the runtime from ``directory`` and compare it with torch on the probes."""
    towers = ("text",) if text_only else ("text", "image")
    runtime = _load(directory, encoder.spec.identity, require_self_test=False, towers=towers)
    texts = list(probes.texts)
    torch_ids = encoder.tokenizer(texts).numpy()
    if not np.array_equal(runtime.tokenizer(texts), torch_ids):
        raise ExportError("the runtime tokenizer gives other token ids than open_clip's")
    if text_only:
        return _verify_text(runtime, model, texts, torch_ids)
    images = list(probes.images) if probes.images is not None else _probe_images(runtime)
    torch_pixels = torch.stack([encoder.preprocess(im.convert("RGB")) for im in images])
    pixel_diff = float(np.abs(runtime.transform.batch(images) - torch_pixels.numpy()).max())
    if pixel_diff > 1e-4:
        raise ExportError(f"runtime preprocessing differs from open_clip's by {pixel_diff:.2e}")
    noise = torch.randn(
        probes.n_random, *torch_pixels.shape[1:], generator=torch.Generator().manual_seed(1)
    )
    with torch.inference_mode():
        text_ref = _Tower(model, "text")(torch.from_numpy(torch_ids)).numpy()
        image_ref = _Tower(model, "image")(torch.cat([torch_pixels, noise])).numpy()
    text_cos = _min_cosine(runtime.encode_texts(texts), text_ref)
    image_cos = _min_cosine(
        np.concatenate([runtime.encode_images(images), runtime.encode_pixels(noise.numpy())]),
        image_ref,
    )
    if not (text_cos >= MIN_COSINE and image_cos >= MIN_COSINE):  # NaN fails too
        raise ExportError(
            f"exported towers differ from torch: least cosine text {text_cos:.6f}, "
            f"image {image_cos:.6f} (need >= {MIN_COSINE})"
        )
    return {
        "text": text_cos,
        "image": image_cos,
        "pixels": pixel_diff,
        "text_self_test": runtime.self_test_output("text").tolist(),
        "image_self_test": runtime.self_test_output("image").tolist(),
    }


def _verify_text(
    runtime: QueryRuntime, model: torch.nn.Module, texts: list[str], torch_ids: np.ndarray
) -> dict[str, Any]:
    """The text tower's checks alone (a text-only export)."""
    with torch.inference_mode():
        text_ref = _Tower(model, "text")(torch.from_numpy(torch_ids)).numpy()
    text_cos = _min_cosine(runtime.encode_texts(texts), text_ref)
    if not text_cos >= MIN_COSINE:  # NaN fails too
        raise ExportError(
            f"exported text tower differs from torch: least cosine {text_cos:.6f} "
            f"(need >= {MIN_COSINE})"
        )
    return {
        "text": text_cos,
        "image": float("nan"),
        "pixels": 0.0,
        "text_self_test": runtime.self_test_output("text").tolist(),
    }


def _load(
    directory: Path,
    identity: str,
    require_self_test: bool = True,
    towers: Sequence[str] = ("text", "image"),
) -> QueryRuntime:
    try:
        return QueryRuntime.load(
            directory, expect_identity=identity, towers=towers, require_self_test=require_self_test
        )
    except QueryRuntimeError as exc:
        raise ExportError(f"the exported runtime does not load: {exc.reason}") from exc


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Least row-wise cosine; NaN when any row has one (numpy's min propagates NaN)."""
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a * b).sum(axis=1).min())


def _probe_images(runtime: QueryRuntime) -> list[Image.Image]:
    """Synthetic images of several sizes and modes: noise, a gradient, flat, grey, RGBA."""
    rng = np.random.default_rng(0)
    side = runtime.image_size
    noise = Image.fromarray(rng.integers(0, 256, (side + 37, side * 2 + 5, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 97 * 61, dtype=np.float32).reshape(61, 97).astype(np.uint8)
    rgba = rng.integers(0, 256, (side // 2 + 3, side // 3 + 1, 4), dtype=np.uint8)
    return [
        noise,
        Image.fromarray(ramp, "L"),
        Image.new("RGB", (side, side), (255, 255, 255)),
        Image.fromarray(rgba, "RGBA"),
        noise.resize((13, 300)),
    ]
