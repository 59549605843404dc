"""Near-duplicates: range search, components, keeper choice, the pixel re-check, and
`mmsearch dups` / `query --dedupe` end to end on a small version of bench/dups.py's set."""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import TINY, clustered_dataset, load_make_shapes

from mmsearch.catalog_base import ItemRecord
from mmsearch.duplicates import choose_keeper, components
from mmsearch.nearcopy import (
    DEFAULT_PIXEL_THRESHOLD,
    pixel_similarities,
    pixel_similarity,
    thumbprint,
)

ROOT = Path(__file__).resolve().parents[1]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_dups", ROOT / "bench" / "dups.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_dups"] = module  # its dataclasses resolve their annotations there
    spec.loader.exec_module(module)
    return module


def test_components_largest_first():
    edges = [(5, 6), (1, 2), (2, 3), (9, 8), (3, 1), (7, 7)]
    assert components(edges) == [[1, 2, 3], [5, 6], [8, 9]]
    assert components([]) == []


def _rec(
    i: int, w: int | None, h: int | None, taken: float | None = None, mtime: float | None = None
):  # noqa: E501
    return ItemRecord(
        id=i, modality="image", path=f"/p/{i}.jpg", text=None, source=None, size=1,
        mtime_ns=int(mtime * 1e9) if mtime is not None else None, content_hash=str(i),
        width=w, height=h, taken_at=taken,
    )  # fmt: skip


def test_keeper_is_largest_then_oldest_then_lowest_id():
    # resolution first
    assert choose_keeper([_rec(1, 100, 100, 10), _rec(2, 200, 100, 99)]).id == 2
    # same resolution: the oldest capture date
    assert choose_keeper([_rec(1, 100, 100, 50), _rec(2, 100, 100, 10)]).id == 2
    # no capture date: the file's modification time stands in
    assert choose_keeper([_rec(1, 100, 100, None, 50), _rec(2, 100, 100, None, 20)]).id == 2
    # a capture date wins over a later mtime of the other; undated counts as newest
    assert choose_keeper([_rec(1, 100, 100, None, None), _rec(2, 100, 100, 10)]).id == 2
    # all equal: the lowest id
    assert choose_keeper([_rec(3, 10, 10), _rec(2, 10, 10)]).id == 2


def test_pairs_above_finds_every_pair_of_a_large_group():
    """The range search equals brute force, also for a group larger than the first k (the
    k-NN search doubles k while every neighbour passes)."""
    from mmsearch.ann.faiss_index import VectorIndex
    from mmsearch.ann.neighbours import pairs_above

    base, _ = clustered_dataset(300, 1, 32, n_clusters=30, noise=1.2, seed=0)
    rng = np.random.default_rng(1)
    centre = base[0]
    group = centre + 0.02 * rng.standard_normal((40, 32)).astype(np.float32)  # 40 near-copies
    x = np.vstack([base, group]).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(1, len(x) + 1, dtype=np.int64)
    vi = VectorIndex.empty("image", 32, "m")
    vi.add(ids, x)
    lookup = {int(i): n for n, i in enumerate(ids)}

    def fetch(q: np.ndarray) -> np.ndarray:
        return x[[lookup[int(i)] for i in q]]

    pairs, scores = pairs_above(vi, fetch, 0.95, first_k=4)
    sims = x @ x.T
    expect = {
        (int(ids[a]), int(ids[b]))
        for a, b in zip(*np.nonzero(np.triu(sims >= 0.95, 1)), strict=True)
    }  # noqa: E501
    assert len(expect) > 40 * 39 // 2 - 1  # the group is there, larger than first_k
    assert {(int(a), int(b)) for a, b in pairs} == expect
    for (a, b), s in zip(pairs, scores, strict=True):
        assert s == pytest.approx(sims[lookup[int(a)], lookup[int(b)]], abs=1e-5)


def test_pixel_check_tells_copies_from_lookalikes():
    bench = load_bench()
    shapes = load_make_shapes()
    rng = random.Random(0)
    copies, looks = [], []
    for n in range(6):
        sample = shapes.make_sample(5, n, size=128)
        twin, _ = shapes.render_scene(sample.scene, random.Random(100 + n), 128)
        original = thumbprint(sample.image)
        for kind in bench.KINDS:
            copy, _ = bench.copy_of(sample.image, kind, rng)
            copies.append(pixel_similarity(original, thumbprint(copy)))
        looks.append(pixel_similarity(original, thumbprint(twin)))
    assert min(copies) >= DEFAULT_PIXEL_THRESHOLD, copies
    assert max(looks) < DEFAULT_PIXEL_THRESHOLD, looks
    # the batch form agrees with the pairwise one
    prints = {i: thumbprint(shapes.make_sample(5, i, size=128).image) for i in range(3)}
    batch = pixel_similarities(prints, [(0, 1), (2, 1)])
    assert batch[(2, 1)] == pytest.approx(pixel_similarity(prints[2], prints[1]), abs=1e-5)


# -- end to end: the small generated set, the tiny model, the real CLI ------------------


@pytest.fixture(scope="module")
def dup_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, set[tuple[str, str]]]:
    bench = load_bench()
    root = tmp_path_factory.mktemp("dups")
    files = root / "files"
    entries = bench.make_set(files, originals=10, seed=1)
    idx = root / "idx"
    subprocess.run(
        [sys.executable, "-m", "mmsearch", "-q", "index", "--index", str(idx), "--model", TINY,
         str(files)],
        check=True, capture_output=True,
    )  # fmt: skip
    return idx, files, bench.true_pairs(entries, files.resolve())


def _mmsearch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mmsearch", *args], capture_output=True, text=True)


def test_dups_cli_precision_and_recall_at_the_defaults(dup_set):
    idx, files, truth = dup_set
    out = _mmsearch("dups", "--index", str(idx), "--json")
    assert out.returncode == 0, out.stderr
    groups = json.loads(out.stdout)["groups"]
    predicted = {
        tuple(sorted(p))
        for g in groups
        for p in itertools.combinations([i["path"] for i in g["items"]], 2)
    }
    hit = len(predicted & truth)
    precision, recall = hit / max(len(predicted), 1), hit / len(truth)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall, len(truth))
    sizes = [len(g["items"]) for g in groups]
    assert sizes == sorted(sizes, reverse=True)
    for g in groups:  # the keeper: first, and the most pixels of its group
        keeper = g["items"][0]
        assert g["keeper"] == keeper["id"] and keeper["score"] == 1.0
        assert all(
            keeper["width"] * keeper["height"] >= i["width"] * i["height"] for i in g["items"]
        )
    assert all(f.exists() for f in files.iterdir())  # nothing deleted
    plain = _mmsearch("dups", "--index", str(idx))
    assert plain.returncode == 0
    rows = [r.split("\t") for r in plain.stdout.splitlines() if r]
    assert sum(r[0] == "keep" for r in rows) == len(groups)
    assert f"{len(groups)} groups" in plain.stderr


def test_embeddings_alone_cannot_tell_lookalikes_with_this_model(dup_set):
    """Why the pixel check exists: without it, look-alikes join the groups."""
    idx, _, truth = dup_set
    out = _mmsearch("dups", "--index", str(idx), "--json", "--no-pixel-check")
    groups = json.loads(out.stdout)["groups"]
    paths = [i["path"] for g in groups for i in g["items"]]
    assert any("lookalike" in p for p in paths)


def test_query_dedupe_folds_copies(dup_set):
    idx, _, truth = dup_set
    plain = json.loads(_mmsearch("query", "--index", str(idx), "a red circle", "-k", "12",
                                 "--json").stdout)  # fmt: skip
    out = _mmsearch("query", "--index", str(idx), "a red circle", "-k", "12", "--json", "--dedupe")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    hits = data["hits"]
    assert len(hits) == 12
    folded = [d for h in hits for d in h.get("duplicates", [])]
    assert data["collapsed"] == len(folded) > 0
    by_id = {h["id"]: h["path"] for h in plain["hits"]}
    # no two kept hits are copies of one original; folded ones are copies of their keeper
    kept_groups = [Path(h["path"]).name.split("_")[0] for h in hits]
    originals = [g for g, h in zip(kept_groups, hits, strict=True) if "lookalike" not in h["path"]]
    assert len(originals) == len(set(originals))
    for h in hits:
        for d in h.get("duplicates", []):
            if d in by_id:
                pair = tuple(sorted((h["path"], by_id[d])))
                assert pair in truth
    # The best hit is kept. Each query is its own process: the text tower's threads follow
    # the free cores, and another thread count sums in another order (seen: 4.5e-8 apart
    # under load).
    assert hits[0]["id"] == plain["hits"][0]["id"]
    assert hits[0]["score"] == pytest.approx(plain["hits"][0]["score"], abs=1e-6)


def test_python_api_duplicates(dup_set):
    from mmsearch import Index

    idx, _, truth = dup_set
    with Index.open(idx, create=False) as index:
        groups = index.duplicates()
        assert groups and all(g.keeper is g.items[0] for g in groups)
        loose = index.duplicates(pixel_threshold=None)  # look-alikes join: more items
        assert sum(len(g.items) for g in loose) > sum(len(g.items) for g in groups)
        assert index.duplicates(threshold=1.01) == []
    assert os.path.isdir(idx)
