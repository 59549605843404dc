"""Damaged derived files end in a repair (with a warning, and right answers afterwards) or
a clear refusal with a non-zero exit — never a wrong answer with exit 0."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY

import mmsearch
from mmsearch.ann import policy as index_policy
from mmsearch.cli import cli
from mmsearch.status import ExitStatus

# Builds an IVF-PQ index of 1,200 texts once (~30 s); in the default run: it is the proof
# that every damage ends in a repair or a refusal.

WORDS = "red green blue car boat dog cat tree house sea small big old new bright dark".split()  # noqa: SIM905
N_TEXTS = 1200  # past EXACT_MAX below: the big index is IVF-PQ
N_FLAT = 200  # the small one is exact
EXACT_MAX = 300
PROBES = 20  # texts searched for themselves after each repair


def _texts() -> list[str]:
    rng = np.random.default_rng(0)
    return sorted({" ".join(rng.choice(WORDS, size=5)) for _ in range(4000)})[:N_TEXTS]


def _fast_tuning(m: pytest.MonkeyPatch) -> None:
    """IVF-PQ past 300 vectors, tuned on fewer queries: rebuilds take seconds."""
    from mmsearch.ann import upkeep

    m.setattr(index_policy, "EXACT_MAX", EXACT_MAX)
    m.setattr(upkeep, "TUNE_QUERIES", 60)


@pytest.fixture(scope="module", autouse=True)
def _one_model_load() -> object:
    """Load the tiny model once for the module (each search would load it again)."""
    from mmsearch.encoder import Encoder

    loaded: dict[str, Encoder] = {}
    original = Encoder.load

    def load(spec, device=None):  # type: ignore[no-untyped-def]
        key = repr((spec, device))
        if key not in loaded:
            loaded[key] = original(spec, device=device)
        return loaded[key]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Encoder, "load", staticmethod(load))
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two text indexes built once: 1,200 texts (IVF-PQ) and 200 texts (exact)."""
    root = tmp_path_factory.mktemp("built")
    with pytest.MonkeyPatch.context() as m:
        _fast_tuning(m)
        with mmsearch.Index.open(root / "ivf", model=TINY) as index:
            index.add_texts(_texts())
            assert index.vectors("text").manifest.factory.startswith("IVF")
        with mmsearch.Index.open(root / "flat", model=TINY) as index:
            index.add_texts(_texts()[:N_FLAT])
            assert index.vectors("text").manifest.factory == "Flat"
    return {"ivf": root / "ivf", "flat": root / "flat"}


def _copy(built: dict[str, Path], kind: str, tmp_path: Path, m: pytest.MonkeyPatch) -> Path:
    _fast_tuning(m)
    out = tmp_path / kind
    shutil.copytree(built[kind], out)
    return out


@pytest.fixture
def ivf(built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return _copy(built, "ivf", tmp_path, monkeypatch)


@pytest.fixture
def idx(built: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The exact index (rebuilds are instant): for damage where the kind does not matter."""
    return _copy(built, "flat", tmp_path, monkeypatch)


def _all_find_themselves(idx: Path) -> None:
    with mmsearch.Index.open(idx) as index:
        texts = _texts()[: index.catalog.count("text")]
        for text in texts[:: len(texts) // PROBES]:
            (hit,) = index.search(text, k=1, target="text")
            assert hit.text == text and hit.score > 0.99


def _check(idx: Path, *args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(cli, ["check", "--index", str(idx), "--json", *args])
    return result.exit_code, json.loads(result.stdout)


def _warned(caplog: pytest.LogCaptureFixture, *words: str) -> bool:
    return any(
        r.levelno == logging.WARNING and all(w in r.getMessage() for w in words)
        for r in caplog.records
    )


def test_intact_index_checks_clean(ivf):
    code, report = _check(ivf)
    assert code == 0 and report["problems"] == [] and report["checked"]["text vectors"] == N_TEXTS


def test_truncated_store_is_rebuilt(ivf, caplog):
    """The re-rank of IVF-PQ candidates used to score every hit 0.000 from zero rows."""
    store = ivf / "embeddings.f16"
    os.truncate(store, store.stat().st_size // 2)
    _all_find_themselves(ivf)
    assert _warned(caplog, "embedding store", "truncated")
    assert _check(ivf)[0] == 0


def test_garbled_store_rows_never_score_wrong(idx, caplog):
    with mmsearch.Index.open(idx) as index:
        dim = index.dim
        ids = index.catalog.ids("text")
    victims = ids[:: len(ids) // 40]  # 40 rows, spread over the file
    rng = np.random.default_rng(1)
    with open(idx / "embeddings.f16", "r+b") as f:
        for i in victims:
            f.seek(int(i) * 2 * dim)
            f.write(rng.integers(0, 256, 2 * dim, dtype=np.uint8).tobytes())
    code, report = _check(idx)  # found: repaired on open (sampled) or reported (exit 7)
    assert report["problems"] and (code == 0) == report["ok"]
    if code != 0:
        assert code == ExitStatus.CORRUPT and not report["problems"][-1]["repaired"]
        code, report = _check(idx, "--repair")
        assert code == 0 and report["problems"][-1]["repaired"]
    assert _check(idx) == (0, _check(idx)[1]) and _check(idx)[1]["problems"] == []
    _all_find_themselves(idx)


def test_garbled_store_rows_are_caught_at_query_time(ivf, caplog, monkeypatch):
    """Damage the open-time sample misses: the re-rank sees a non-unit row and repairs."""
    from mmsearch.ann import upkeep

    monkeypatch.setattr(upkeep.Upkeep, "verify_store_sample", lambda self, seed=None: None)
    with mmsearch.Index.open(ivf) as index:
        dim = index.dim
        ids = index.catalog.ids("text").tolist()
    with open(ivf / "embeddings.f16", "r+b") as f:
        for i in ids:  # zero every text row: what a truncation used to read back
            f.seek(int(i) * 2 * dim)
            f.write(bytes(2 * dim))
    _all_find_themselves(ivf)
    assert _warned(caplog, "embedding store", "non-unit")


def test_truncated_faiss_file_is_rebuilt(idx, caplog):
    path = idx / "vectors-text.faiss"
    os.truncate(path, path.stat().st_size - 1000)
    _all_find_themselves(idx)
    assert _warned(caplog, "rebuilding the text index", "truncated")
    assert _check(idx)[0] == 0


def test_garbled_faiss_body_is_rebuilt(ivf, caplog):
    idx = ivf
    path = idx / "vectors-text.faiss"
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))
    code, report = _check(idx)
    assert code == ExitStatus.CORRUPT and "checksum" in report["problems"][0]["message"]
    _all_find_themselves(idx)
    assert _warned(caplog, "rebuilding the text index", "checksum")
    assert _check(idx)[0] == 0


@pytest.mark.parametrize("damage", ["garbled", "missing", "foreign", "legacy"])
def test_bad_manifest_means_rebuild(idx, tmp_path, caplog, damage):
    manifest = idx / "vectors-text.json"
    if damage == "garbled":
        text = manifest.read_text()
        manifest.write_text(text.replace('"generation": ', '"generation": 1'))
    elif damage == "missing":
        manifest.unlink()
    elif damage == "foreign":  # a whole index copied from elsewhere: another catalog
        with mmsearch.Index.open(tmp_path / "other", model=TINY) as other:
            other.add_texts(["one text", "another text"])
        shutil.copy(tmp_path / "other" / "vectors-text.json", manifest)
        shutil.copy(tmp_path / "other" / "vectors-text.faiss", idx / "vectors-text.faiss")
    else:  # written before manifests were sealed
        data = json.loads(manifest.read_text())
        del data["checksum"]
        manifest.write_text(json.dumps(data))
    _all_find_themselves(idx)
    assert _warned(caplog, "rebuilding the text index")
    code, report = _check(idx)
    assert code == 0 and report["problems"] == []


def test_corrupt_catalog_exits_with_corrupt_status(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "catalog.sqlite").write_bytes(b"")
    for args in (["query", "x"], ["check"], ["info"]):
        result = CliRunner().invoke(cli, [*args, "--index", str(idx)])
        assert result.exit_code == ExitStatus.CORRUPT, args
    assert (idx / "catalog.sqlite").stat().st_size == 0


def test_derived_files_are_readable_like_the_catalog(idx, tmp_path):
    old = os.umask(0o022)
    try:
        with mmsearch.Index.open(tmp_path / "fresh", model=TINY) as index:
            index.add_texts(["a red car", "a blue boat"])
    finally:
        os.umask(old)
    for name in ("catalog.sqlite", "vectors-text.faiss", "vectors-text.json", "embeddings.f16"):
        assert (tmp_path / "fresh" / name).stat().st_mode & 0o777 == 0o644, name
