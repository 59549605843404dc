"""On a machine without a GPU, a run whose model's towers are exported encodes with them
(:mod:`indexer.runtime_encoder`): no torch, the same embeddings, torch when they fail."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, TINY, noise_image

from mmsearch import config
from mmsearch.encoder import Encoder
from mmsearch.index import Index
from mmsearch.runtime import QueryRuntime

TEXTS = ["a red car", "a dog on a beach", "two cats in the snow"]


def _photos(root: Path) -> Path:
    photos = root / "photos"
    photos.mkdir()
    for seed in range(6):
        noise_image(seed, size=(96, 72)).save(photos / f"{seed}.jpg", quality=92)
    noise_image(9, size=(40, 90)).save(photos / "tall.png")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return photos


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return _photos(tmp_path)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cache with the tiny model's towers, exported by a torch run (once per module), and
    that run's index: (cache, index)."""
    root = tmp_path_factory.mktemp("seeded")
    with pytest.MonkeyPatch.context() as m:
        m.setenv(config.ENV_CACHE, str(root / "cache"))
        m.setenv(config.ENV_INDEX_RUNTIME, "torch")
        with Index.open(root / "seed", model=TINY, device="cpu") as index:
            index.add_images([_photos(root)])
            identity = index.model_info["identity"]
        assert (config.runtime_dir(identity) / "runtime.json").is_file()
    return root / "cache", root / "seed"


@pytest.fixture
def exported(tmp_path: Path, seeded: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own copy of the exported towers (a test may damage them) as the cache,
    and of the index that exported them (``tmp_path / "seed"``); the runtime directory."""
    cache, seed = seeded
    shutil.copytree(cache, tmp_path / "cache")
    shutil.copytree(seed, tmp_path / "seed")
    monkeypatch.setenv(config.ENV_CACHE, str(tmp_path / "cache"))
    (runtime,) = (tmp_path / "cache" / "runtimes").iterdir()
    return runtime


def _vectors(idx: Path) -> dict[str, np.ndarray]:
    """Stored embeddings (float16 in the catalog): images by file name, texts by text."""
    with Index.open(idx, create=False) as index:
        names = {r.id: Path(r.path or "").name for r in index.catalog.image_files()}
        out = {}
        for modality in ("image", "text"):
            for ids, rows in index.catalog.iter_embeddings(modality, index.dim):
                for item_id, row in zip(ids.tolist(), rows, strict=True):
                    out[names.get(item_id) or index.item(item_id).text] = row
        return out


def _assert_same_stored(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """Equal as stored: float16, so a component the two encoders put on either side of a
    rounding boundary differs by one float16 step (≤ 2.5e-4 for |x| < 0.5); most are equal."""
    assert got.keys() == expected.keys()
    a, b = np.stack([got[k] for k in expected]), np.stack(list(expected.values()))
    np.testing.assert_allclose(a, b, atol=2.5e-4)
    assert (a == b).mean() > 0.95


def _refuse(*args: object, **kwargs: object) -> None:
    raise AssertionError("torch encoded the run")


def test_a_cpu_run_encodes_with_the_export_and_stores_torchs_embeddings(
    tmp_path, folder, exported, monkeypatch, caplog
):
    with monkeypatch.context() as m:
        m.setenv(config.ENV_INDEX_RUNTIME, "torch")
        with Index.open(tmp_path / "torch", model=TINY, device="cpu") as index:
            by_torch = index.add_images([folder])
            torch_texts = index.add_texts(TEXTS)
    with monkeypatch.context() as m:
        m.setattr(Encoder, "load", _refuse)  # torch must not even be loaded
        caplog.set_level(logging.INFO, logger="mmsearch.index.runtimes")
        with Index.open(tmp_path / "onnx", model=TINY, device="cpu") as index:
            by_onnx = index.add_images([folder])
            onnx_texts = index.add_texts(TEXTS)
    assert "encoding the run with the exported image tower" in caplog.text
    assert "encoding the run with the exported text tower" in caplog.text
    assert (by_onnx.added, by_onnx.skipped) == (by_torch.added, by_torch.skipped)
    assert by_onnx.added == 7 and [Path(s.path).name for s in by_onnx.skipped] == ["broken.jpg"]
    assert by_onnx.model_seconds > 0 and by_onnx.encode_seconds > 0
    # Each run's summary says what encoded it.
    assert (by_torch.engine, torch_texts.engine) == ("torch:cpu", "torch:cpu")
    assert (by_onnx.engine, onnx_texts.engine) == ("onnx", "onnx")
    assert (by_onnx + by_torch).engine == "onnx+torch:cpu"
    assert (by_onnx + onnx_texts).engine == "onnx"
    expected, got = _vectors(tmp_path / "torch"), _vectors(tmp_path / "onnx")
    assert len(expected) == 7 + len(TEXTS)
    _assert_same_stored(got, expected)


def test_the_same_model_record_and_search_answers(tmp_path, folder, exported, monkeypatch):
    with monkeypatch.context() as m:
        m.setenv(config.ENV_INDEX_RUNTIME, "torch")
        with Index.open(tmp_path / "torch", model=TINY, device="cpu") as index:
            index.add_images([folder])
            torch_record = index.model_info
            torch_hits = [(Path(h.path).name, h.score) for h in index.search("a red car", k=7)]
    with monkeypatch.context() as m:
        m.setattr(Encoder, "load", _refuse)
        with Index.open(tmp_path / "onnx", model=TINY, device="cpu") as index:
            index.add_images([folder])
            assert index.model_info == torch_record
            onnx_hits = [(Path(h.path).name, h.score) for h in index.search("a red car", k=7)]
    # The same files with the same scores (ids follow the order batches commit in).
    assert dict(onnx_hits).keys() == dict(torch_hits).keys() and len(onnx_hits) == 7
    for name, score in torch_hits:
        assert dict(onnx_hits)[name] == pytest.approx(score, abs=1e-3)


def test_a_damaged_export_falls_back_to_torch(tmp_path, folder, exported, monkeypatch, caplog):
    weights = max(exported.glob("image.onnx*"), key=lambda p: p.stat().st_size)
    data = bytearray(weights.read_bytes())
    quarter = len(data) // 4  # the middle half rewritten: the same size, other weights
    data[quarter : 3 * quarter] = np.random.default_rng(0).bytes(2 * quarter)
    weights.write_bytes(bytes(data))
    caplog.set_level(logging.INFO, logger="mmsearch.index.runtimes")
    with Index.open(tmp_path / "idx", model=TINY, device="cpu") as index:
        summary = index.add_images([folder])
    assert summary.added == 7 and summary.engine == "torch:cpu"
    assert "encoding the run with torch" in caplog.text


@pytest.mark.parametrize(
    ("device", "env_device", "runtime", "gpu", "uses_export"),
    [
        ("cpu", None, "auto", True, True),  # asked for the CPU: the export, GPU or not
        (None, None, "auto", False, True),  # no GPU: the export
        (None, None, "auto", True, False),  # a GPU may be there: torch decides
        (None, "cuda", "auto", False, False),
        (None, "cpu", "auto", True, True),
        ("cpu", None, "torch", False, False),  # $MMSEARCH_INDEX_RUNTIME=torch
    ],
)
def test_what_encodes_a_run(
    tmp_path, folder, exported, monkeypatch, device, env_device, runtime, gpu, uses_export
):
    if env_device is None:
        monkeypatch.delenv(config.ENV_DEVICE, raising=False)
    else:
        monkeypatch.setenv(config.ENV_DEVICE, env_device)
    monkeypatch.setenv(config.ENV_INDEX_RUNTIME, runtime)
    monkeypatch.setattr(config, "gpu_may_be_present", lambda: gpu)
    loads: list[int] = []
    monkeypatch.setattr(Index, "encoder", lambda self: loads.append(1) or "torch")
    with Index.open(tmp_path / "seed", create=False, device=device) as index:
        chosen = index._run_encoder("image")
    assert (type(chosen).__name__ == "RuntimeEncoder") is uses_export
    assert (loads == [1]) is not uses_export


def test_a_run_opens_one_image_session(tmp_path, folder, exported, monkeypatch):
    """The tower is checked with the session the run then encodes with (all cores, the
    default schedule), not with a second one of another thread count."""
    monkeypatch.setattr("indexer.feed.cpu_cores", lambda: 2)  # the run's thread budget
    with Index.open(tmp_path / "idx", model=TINY, device="cpu") as index:
        assert index.add_images([folder]).added == 7
        sessions = index._runtime(index.model_info["identity"])._sessions
    assert [threads for tower, threads in sessions if tower == "image"] == [2]


def test_a_cli_run_with_an_export_imports_no_torch(tmp_path, folder, exported):
    """The real CLI in a new process: with the export there, ``mmsearch index`` imports
    neither torch nor open_clip (the seconds a run used to spend before its first image)."""
    env = {
        **os.environ,
        config.ENV_CACHE: str(exported.parent.parent),
        "PYTHONPATH": str(ROOT),
        "MMSEARCH_DEVICE": "cpu",
    }
    env.pop(config.ENV_INDEX_RUNTIME, None)
    script = (
        "import json, sys\n"
        "from mmsearch.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "names = ('torch', 'open_clip', 'torchvision', 'onnxruntime')\n"
        "print(json.dumps([n for n in names if n in sys.modules]))\n"
    )
    cmd = [sys.executable, "-c", script, "-q", "index", str(folder)]
    cmd += ["--index", str(tmp_path / "cli"), "--model", TINY, "--json"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary, imported = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(imported) == ["onnxruntime"]
    assert json.loads(summary)["added"] == 7 and json.loads(summary)["engine"] == "onnx"


def test_the_runtime_encodes_pixels_with_the_threads_asked_for(exported):
    runtime = QueryRuntime.load(exported, towers=())
    pixels = np.zeros((2, 3, runtime.image_size, runtime.image_size), dtype=np.float32)
    one, two = runtime.encode_pixels(pixels, threads=1), runtime.encode_pixels(pixels, threads=2)
    np.testing.assert_allclose(one, two, atol=1e-6)
    assert {threads for tower, threads in runtime._sessions if tower == "image"} == {1, 2}


def test_info_says_what_the_next_run_encodes_with(tmp_path, exported, monkeypatch):
    monkeypatch.setenv(config.ENV_DEVICE, "cpu")
    with Index.open(tmp_path / "seed", create=False) as index:
        assert index.info().index_runtime == "onnx (the model's exported towers)"
        monkeypatch.setenv(config.ENV_INDEX_RUNTIME, "torch")
        assert index.info().index_runtime == "torch ($MMSEARCH_INDEX_RUNTIME=torch)"
        monkeypatch.delenv(config.ENV_INDEX_RUNTIME)
        shutil.rmtree(exported)
        index._loaded_runtime = None  # as a new process would find it
        assert index.info().index_runtime.startswith("torch (no valid export")
    with Index.open(tmp_path / "new") as empty:
        assert empty.info().index_runtime.startswith("torch (no model yet")


def test_info_of_an_index_opened_with_another_model_still_answers(tmp_path, exported):
    """info() describes the stored model; a mismatched model asked for on open is refused
    by the runs that would use it, not by info (index_runtime_status raised here once)."""
    with Index.open(tmp_path / "seed", create=False, model="ViT-B-32", device="cpu") as index:
        assert index.info().index_runtime == "onnx (the model's exported towers)"
