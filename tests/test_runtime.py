"""The torch-free query runtime: tokenizer, preprocessing, ONNX export and QueryRuntime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import TINY, noise_image
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from mmsearch.encoder import Encoder
from mmsearch.errors import ExportError, QueryRuntimeError
from mmsearch.export import export_model
from mmsearch.runtime import QueryRuntime, towers
from mmsearch.runtime.preprocess import ImageTransform
from mmsearch.runtime.tokenizer import ClipTokenizer, write_tables

TEXTS = [
    "a red car",
    "A Photo Of A DOG, on the beach!!! (2019)",
    "don't stop: it's 3.5km... #sunset @home $100 50% a+b=c",
    "café crème brûlée — naïve façade Ångström",
    "emoji 🚗🐕‍🦺 ❤️ 👍🏽",
    "北京的天空很蓝，我们去长城吧",
    "مرحبا بالعالم، كيف حالك؟",
    "Привет, мир",
    "&amp; &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &amp;amp;",
    "a <b>tag</b> & an &amp; entity",
    "   leading\t\ttabs\n\nnewlines   and    runs   ",
    "ctrl\x07chars\x1b[31m and \r\n crlf",
    "ﬁne ligatures and ＦＵＬＬＷＩＤＴＨ",
    "‘curly’ “quotes”",
    "",
    " ",
    "<start_of_text> special <end_of_text>",
    "word " * 200,
]


def _ascii_fuzz(n: int = 200) -> list[str]:
    """Random printable ASCII with '&', tabs and newlines: exercises the ftfy-free path."""
    rng = np.random.default_rng(0)
    alphabet = list("abcdefgh XYZ&;'.!?0123456789\t\n-_()") + ["&amp;", "&lt;", "'s", "'ll"]
    return ["".join(rng.choice(alphabet, size=rng.integers(0, 40))) for _ in range(n)]


@pytest.fixture(scope="session")
def tiny() -> Encoder:
    return Encoder.load(TINY, device="cpu")


@pytest.fixture(scope="session")
def exported(tiny: Encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported once for the session."""
    out = tmp_path_factory.mktemp("runtime") / "tiny"
    export_model(tiny, out)
    return out


@pytest.fixture(scope="session")
def runtime(exported: Path, tiny: Encoder) -> QueryRuntime:
    return QueryRuntime.load(exported, expect_identity=tiny.spec.identity)


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_token_ids_match_open_clip(clean: str) -> None:
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=32, clean=clean)
    ours = ClipTokenizer(open_clip.tokenizer.default_bpe(), context_length=32, clean=clean)
    texts = TEXTS + _ascii_fuzz()
    np.testing.assert_array_equal(ours(texts), reference(texts).numpy())
    assert ours(texts).dtype == np.int64
    # The long text is cut to the context and still ends with the end marker.
    assert ours(["word " * 200])[0, -1] == reference.eot_token_id


@pytest.fixture(scope="module")
def bpe_tables(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "bpe_tables.npz"
    with open(path, "wb") as f:
        write_tables(open_clip.tokenizer.default_bpe(), f)
    return path


@pytest.mark.parametrize("clean", ["lower", "whitespace", "canonicalize"])
def test_token_ids_from_tables_match_open_clip(clean: str, bpe_tables: Path) -> None:
    reference = open_clip.tokenizer.SimpleTokenizer(context_length=32, clean=clean)
    # The tables alone: the gzipped merges file is not read (it does not exist).
    ours = ClipTokenizer("no-such.txt.gz", context_length=32, clean=clean, tables_path=bpe_tables)
    texts = TEXTS + _ascii_fuzz()
    np.testing.assert_array_equal(ours(texts), reference(texts).numpy())
    assert ours.vocab_size == reference.vocab_size
    assert ours.count_tokens("word " * 200) == 202


def test_count_tokens_matches_encoder(tiny: Encoder, runtime: QueryRuntime) -> None:
    for text in TEXTS + _ascii_fuzz(50):
        assert runtime.count_tokens(text) == tiny.count_tokens(text), text
        assert runtime.is_truncated(text) == tiny.is_truncated(text), text
    assert runtime.is_truncated("word " * 200)
    assert not runtime.is_truncated("a red car")


PREPROCESS_CFGS = {
    "shortest-square-bicubic": {"size": 64},
    "shortest-nonsquare": {"size": (48, 80)},
    "longest-pad-bilinear": {
        "size": 64,
        "resize_mode": "longest",
        "fill_color": 128,
        "interpolation": "bilinear",
    },  # fmt: skip
    "squash": {"size": (56, 72), "resize_mode": "squash"},
}


def _test_images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(3)
    big = Image.fromarray(rng.integers(0, 256, (731, 1013, 3), dtype=np.uint8))
    return {
        "odd": noise_image(1, size=(97, 61)),
        "odd-round-half-up": noise_image(6, size=(99, 61)),  # crop offset 19.5 → 20
        "tall-small": noise_image(2, size=(7, 33)),
        "exact": noise_image(3, size=(64, 64)),
        "large": big,
        "L": noise_image(4, size=(120, 90)).convert("L"),
        "RGBA": Image.fromarray(rng.integers(0, 256, (50, 81, 4), dtype=np.uint8), "RGBA"),
        "P": noise_image(5, size=(66, 130)).convert("P", palette=Image.Palette.ADAPTIVE),
        "1x1": Image.new("RGB", (1, 1), (10, 200, 30)),
    }


@pytest.mark.parametrize("cfg_name", list(PREPROCESS_CFGS))
def test_preprocess_matches_open_clip(cfg_name: str) -> None:
    cfg = PreprocessCfg(**PREPROCESS_CFGS[cfg_name])
    reference = image_transform_v2(cfg, is_train=False)
    ours = ImageTransform.from_config(
        PREPROCESS_CFGS[cfg_name] | {"mean": cfg.mean, "std": cfg.std}
    )
    for name, img in _test_images().items():
        expected = reference(img.convert("RGB")).numpy()
        got = ours(img)
        assert got.shape == expected.shape and got.dtype == np.float32, name
        assert np.abs(got - expected).max() <= 1e-5, (cfg_name, name)


def test_preprocess_matches_encoder(tiny: Encoder, runtime: QueryRuntime) -> None:
    for name, img in _test_images().items():
        expected = tiny.preprocess(img.convert("RGB")).numpy()
        assert np.abs(runtime.transform(img) - expected).max() <= 1e-5, name


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum(axis=1).min())


def test_runtime_matches_torch(tiny: Encoder, runtime: QueryRuntime) -> None:
    assert (runtime.dim, runtime.context_length, runtime.image_size) == (128, 32, 64)
    assert runtime.identity == tiny.spec.identity
    texts = TEXTS + _ascii_fuzz(30)
    ours = runtime.encode_texts(texts)
    assert ours.shape == (len(texts), 128) and ours.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert _min_cosine(ours, tiny.encode_texts(texts)) >= 0.9999
    images = list(_test_images().values())
    assert _min_cosine(runtime.encode_images(images), tiny.encode_images(images)) >= 0.9999
    assert runtime.encode_texts([]).shape == (0, 128)
    assert runtime.encode_images([]).shape == (0, 128)


def _top_k(queries: np.ndarray, corpus: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ corpus.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids, np.take_along_axis(scores, ids, axis=1)


def _assert_same_search(tiny: Encoder, runtime: QueryRuntime) -> None:
    images = [noise_image(seed, size=(64 + seed, 48 + 2 * seed)) for seed in range(30)]
    texts = [f"photo number {i} of a {c} thing" for i, c in enumerate(["red", "blue", "odd"] * 10)]
    torch_imgs, ours_imgs = tiny.encode_images(images), runtime.encode_images(images)
    torch_txt, ours_txt = tiny.encode_texts(texts), runtime.encode_texts(texts)
    for (q_t, q_o), (c_t, c_o) in [
        ((torch_txt, ours_txt), (torch_imgs, ours_imgs)),  # text → image
        ((torch_imgs, ours_imgs), (torch_imgs, ours_imgs)),  # image → image
        ((torch_txt, ours_txt), (torch_txt, ours_txt)),  # text → text
    ]:
        ids_t, scores_t = _top_k(q_t, c_t, 5)
        ids_o, scores_o = _top_k(q_o, c_o, 5)
        np.testing.assert_array_equal(ids_o, ids_t)
        np.testing.assert_allclose(scores_o, scores_t, atol=1e-3)


def test_runtime_search_matches_torch(tiny: Encoder, runtime: QueryRuntime) -> None:
    _assert_same_search(tiny, runtime)


def test_export_report_and_metadata(exported: Path) -> None:
    meta = json.loads((exported / "runtime.json").read_text())
    assert meta["towers"]["text"]["min_cosine"] >= 0.9999
    assert meta["towers"]["image"]["min_cosine"] >= 0.9999
    assert meta["tokenizer"] == {
        "kind": "clip-bpe",
        "clean": "lower",
        "files": {"bpe": "bpe_simple_vocab_16e6.txt.gz", "tables": "bpe_tables.npz"},
    }
    assert meta["image"]["size"] == [64, 64] and meta["image"]["resize_mode"] == "shortest"
    assert meta["towers"]["text"]["optimized"] == meta["towers"]["image"]["optimized"] == "extended"
    assert sorted(p.name for p in exported.iterdir()) == [
        "bpe_simple_vocab_16e6.txt.gz", "bpe_tables.npz", "image.onnx", "image.onnx.data",
        "runtime.json", "text.onnx", "text.onnx.data", "verified.json",
    ]  # fmt: skip
    # The export's own final load self-tested both towers and recorded it.
    assert set(json.loads((exported / "verified.json").read_text())["towers"]) == {"text", "image"}
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.slow
def test_export_fine_tuned_directory(tiny: Encoder, tmp_path: Path) -> None:
    tuned = Encoder.load(TINY, device="cpu")
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in tuned.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    spec = tuned.save(tmp_path / "tuned")
    tuned = Encoder.load(spec, device="cpu")
    report = export_model(tuned, tmp_path / "rt")
    assert report.identity == spec.identity and report.text_min_cosine >= 0.9999
    runtime = QueryRuntime.load(tmp_path / "rt", expect_identity=spec.identity)
    _assert_same_search(tuned, runtime)
    # The perturbed weights, not the base model's, went into the export.
    assert _min_cosine(runtime.encode_texts(TEXTS[:3]), tiny.encode_texts(TEXTS[:3])) < 0.99


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def _edit_meta(directory: Path, **changes: object) -> None:
    meta = json.loads((directory / "runtime.json").read_text())
    meta.update(changes)
    (directory / "runtime.json").write_text(json.dumps(meta))


def test_refuses_missing_foreign_and_mismatched(exported: Path, tmp_path: Path) -> None:
    with pytest.raises(QueryRuntimeError, match="no runtime.json"):
        QueryRuntime.load(tmp_path / "nowhere")
    with pytest.raises(QueryRuntimeError, match="exported from model"):
        QueryRuntime.load(exported, expect_identity="ViT-B-32:laion2b_s34b_b79k")
    foreign = _copy(exported, tmp_path / "foreign")
    (foreign / "runtime.json").write_text(json.dumps({"model": "something else"}))
    with pytest.raises(QueryRuntimeError, match="not an mmsearch query runtime"):
        QueryRuntime.load(foreign)
    newer = _copy(exported, tmp_path / "newer")
    _edit_meta(newer, version=99)
    with pytest.raises(QueryRuntimeError, match="format version 99"):
        QueryRuntime.load(newer)
    garbled = _copy(exported, tmp_path / "garbled")
    (garbled / "runtime.json").write_text("{not json")
    with pytest.raises(QueryRuntimeError, match="unreadable"):
        QueryRuntime.load(garbled)


def test_refuses_damaged_files(exported: Path, tmp_path: Path) -> None:
    truncated = _copy(exported, tmp_path / "truncated")
    data = (truncated / "text.onnx").read_bytes()
    (truncated / "text.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(QueryRuntimeError, match="text.onnx has"):
        QueryRuntime.load(truncated)
    missing = _copy(exported, tmp_path / "missing")
    (missing / "image.onnx.data").unlink()
    with pytest.raises(QueryRuntimeError, match="image.onnx.data is missing"):
        QueryRuntime.load(missing)
    weights = _copy(exported, tmp_path / "weights")
    weights_data = (weights / "text.onnx.data").read_bytes()
    (weights / "text.onnx.data").write_bytes(weights_data[: len(weights_data) // 2])
    with pytest.raises(QueryRuntimeError, match="text.onnx.data has"):
        QueryRuntime.load(weights)
    # Weights damaged in place (same size): the self-test at load refuses the tower.
    flipped = _copy(exported, tmp_path / "flipped")
    weights_array = np.frombuffer(weights_data, dtype=np.float32).copy()
    weights_array[::7] *= -1.5
    (flipped / "text.onnx.data").write_bytes(weights_array.tobytes())
    with pytest.raises(QueryRuntimeError, match="text tower fails its self-test"):
        QueryRuntime.load(flipped)
    lacking = _copy(exported, tmp_path / "lacking")
    meta = json.loads((lacking / "runtime.json").read_text())
    del meta["towers"]["image"]["self_test"]
    (lacking / "runtime.json").write_text(json.dumps(meta))
    with pytest.raises(QueryRuntimeError, match="lacks the image self-test"):
        QueryRuntime.load(lacking)
    # Same size, garbage content: onnxruntime refuses it, and so do we.
    scrambled = _copy(exported, tmp_path / "scrambled")
    (scrambled / "text.onnx").write_bytes(os.urandom(len(data)))
    with pytest.raises(QueryRuntimeError, match="cannot load text.onnx"):
        QueryRuntime.load(scrambled)
    # The towers swapped (sizes fixed up): a valid model in the wrong place is refused.
    swapped = _copy(exported, tmp_path / "swapped")
    (swapped / "text.onnx").write_bytes((exported / "image.onnx").read_bytes())
    meta = json.loads((swapped / "runtime.json").read_text())
    meta["files"]["text.onnx"] = meta["towers"]["text"]["bytes"] = meta["files"]["image.onnx"]
    (swapped / "runtime.json").write_text(json.dumps(meta))
    with pytest.raises(QueryRuntimeError, match="text tower takes"):
        QueryRuntime.load(swapped)
    # A lazily created tower fails with the same error type, not a wrong answer.
    lazy = QueryRuntime.load(swapped, towers=("image",))
    with pytest.raises(QueryRuntimeError, match="text tower takes"):
        lazy.encode_texts(["a red car"])


def test_refuses_without_onnxruntime(exported: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(QueryRuntimeError, match="onnxruntime is not installed"):
        QueryRuntime.load(exported)


def test_export_refuses_unsupported_tokenizer(tiny: Encoder, tmp_path: Path) -> None:
    class OtherTokenizer:
        context_length = 32

    other = Encoder(tiny.spec, tiny.model, tiny.preprocess, OtherTokenizer(), tiny.device,
                    tiny.model_cfg)  # fmt: skip
    with pytest.raises(ExportError, match="OtherTokenizer is not supported"):
        export_model(other, tmp_path / "rt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_failed_check_leaves_previous_export(
    tiny: Encoder, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _copy(exported, tmp_path / "rt")
    before = (out / "runtime.json").read_text()
    monkeypatch.setattr("mmsearch.export.MIN_COSINE", 1.5)  # no export can pass
    with pytest.raises(ExportError, match="differ from torch"):
        export_model(tiny, out)
    assert (out / "runtime.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rt"]


def test_query_imports_no_torch(exported: Path, tiny: Encoder) -> None:
    code = (
        "import sys\n"
        "from mmsearch.runtime import QueryRuntime\n"
        f"rt = QueryRuntime.load({str(exported)!r}, expect_identity={tiny.spec.identity!r},"
        " towers=('text',))\n"
        "v = rt.encode_texts(['a red car'])\n"
        "assert v.shape == (1, 128), v.shape\n"
        "heavy = [m for m in ('torch', 'open_clip', 'torchvision') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def _count_self_tests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = QueryRuntime.self_test_output

    def counted(self: QueryRuntime, tower: str, session: object = None) -> np.ndarray:
        calls.append(tower)
        return real(self, tower, session)

    monkeypatch.setattr(QueryRuntime, "self_test_output", counted)
    return calls


def test_self_test_runs_again_only_when_files_change(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_self_tests(monkeypatch)
    rt = _copy(exported, tmp_path / "rt")  # copied files: new inodes, not verified here
    QueryRuntime.load(rt, towers=("text",)).encode_texts(["a red car"])
    assert calls == ["text"]
    QueryRuntime.load(rt, towers=("text",))  # the same files: verified already
    assert calls == ["text"]
    QueryRuntime.load(rt, towers=("image",))  # each tower on its own
    assert calls == ["text", "image"]
    QueryRuntime.load(rt)
    assert calls == ["text", "image"]
    # Weights damaged in place, size and mtime kept: tested again, and refused.
    data = rt / "text.onnx.data"
    before = data.stat()
    weights = np.frombuffer(data.read_bytes(), dtype=np.float32).copy()
    weights[::7] *= -1.5
    data.write_bytes(weights.tobytes())
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert data.stat().st_size == before.st_size
    with pytest.raises(QueryRuntimeError, match="text tower fails its self-test"):
        QueryRuntime.load(rt, towers=("text",))
    assert calls == ["text", "image", "text"]
    # The image tower's files did not change: still verified.
    QueryRuntime.load(rt, towers=("image",))
    assert calls == ["text", "image", "text"]


def test_free_cores_counts_the_other_running_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(towers, "_LOADAVG", str(loadavg))
    loadavg.write_text("0.50 0.40 0.30 1/230 4242\n")  # only the caller runs
    assert towers.free_cores(2) == 2
    loadavg.write_text("1.10 0.90 0.70 2/230 4242\n")  # one busy neighbour
    assert (towers.free_cores(2), towers.free_cores(16)) == (1, 15)
    loadavg.write_text("9.00 9.00 9.00 12/230 4242\n")  # a crowd: still one thread
    assert towers.free_cores(2) == 1
    loadavg.write_text("garbage")  # unreadable (or not Linux): every core
    assert towers.free_cores(4) == 4


def test_a_busy_machine_gets_a_one_thread_session_with_the_same_answers(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beside a process that keeps a core busy, a query runs on a one-thread session
    (a second thread would wait for the busy core at every layer); the answers are the
    same, and the tower is self-tested once, not per session."""
    calls = _count_self_tests(monkeypatch)
    loadavg = tmp_path / "loadavg"
    monkeypatch.setattr(towers, "_LOADAVG", str(loadavg))
    monkeypatch.setattr(towers, "_CORES", 2)
    rt = QueryRuntime.load(_copy(exported, tmp_path / "rt"), towers=())
    loadavg.write_text("0.1 0.1 0.1 1/100 1\n")
    idle = rt.encode_texts(TEXTS)
    loadavg.write_text("1.0 1.0 1.0 2/100 1\n")
    busy = rt.encode_texts(TEXTS)
    np.testing.assert_allclose(busy, idle, atol=1e-6)
    sessions = {
        key: s.get_session_options().intra_op_num_threads for key, s in rt._sessions.items()
    }
    assert sessions == {("text", 2): 2, ("text", 1): 1}
    assert calls == ["text"]


def test_changed_runtime_json_or_tokenizer_is_tested_again(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_self_tests(monkeypatch)
    rt = _copy(exported, tmp_path / "rt")
    QueryRuntime.load(rt)
    assert sorted(calls) == ["image", "text"]
    _edit_meta(rt, display="renamed")  # another runtime.json: every tower again
    QueryRuntime.load(rt)
    assert sorted(calls) == ["image", "image", "text", "text"]
    tables = rt / "bpe_tables.npz"
    tables.write_bytes(tables.read_bytes())  # rewritten (same bytes): the text tower again
    QueryRuntime.load(rt)
    assert sorted(calls) == ["image", "image", "text", "text", "text"]


def test_unwritable_directory_still_loads(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_self_tests(monkeypatch)
    rt = _copy(exported, tmp_path / "rt")

    def refuse(*args: object) -> None:
        raise PermissionError("read-only")

    monkeypatch.setattr("mmsearch.runtime.towers.os.replace", refuse)
    for _ in range(2):  # nothing can be recorded: each load tests again
        QueryRuntime.load(rt, towers=("text",)).encode_texts(["a red car"])
    assert calls == ["text", "text"]
    assert not [p.name for p in rt.iterdir() if p.name.endswith(".tmp")]
