"""The float16 store and the vector-index upkeep: build, tune, top up, delete, retrain, reopen."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import clustered_dataset

from mmsearch.ann import policy as index_policy
from mmsearch.ann.store import EmbeddingStore
from mmsearch.ann.tuning import exact_topk, recall_at_k, search_with_rerank
from mmsearch.ann.upkeep import Upkeep
from mmsearch.catalog import Catalog
from mmsearch.config import IndexSettings
from mmsearch.search import search_vector

DIM = 32
MODEL = "synthetic"


def clustered(n: int, seed: int, centres: int = 50) -> np.ndarray:
    return clustered_dataset(n, 0, DIM, centres, 0.6, seed)[0]


def fill(
    catalog: Catalog, vectors: np.ndarray, modality: str = "image", start: int = 0
) -> list[int]:
    rows = [
        {
            "modality": modality,
            "path": f"/x/{modality}{start + i}.png" if modality == "image" else None,
            "text": None if modality == "image" else f"t{start + i}",
            "content_hash": f"{modality}{start + i}",
            "embedding": v,
        }
        for i, v in enumerate(vectors)
    ]
    return catalog.add(rows)


@pytest.fixture
def catalog(catalog: Catalog) -> Catalog:
    """The shared empty catalog, holding this module's synthetic model."""
    catalog.set_model_info({"model": MODEL, "identity": MODEL, "display": MODEL, "dim": DIM})
    return catalog


@pytest.fixture
def small_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_policy, "EXACT_MAX", 2_000)


def test_store_rows_high_water_and_model_change(tmp_path):
    store = EmbeddingStore(tmp_path / "e.f16", DIM, "m1")
    x = clustered(10, 0)
    assert store.catch_up("image", iter([(np.arange(5, 15), x)])) == 10
    assert store.mark("image") == 14 and store.mark("text") == -1
    np.testing.assert_allclose(store.get([5, 14]), x[[0, 9]], atol=2e-3)
    assert not store.get([0, 999]).any()  # never written / beyond the file
    store.close()
    again = EmbeddingStore(tmp_path / "e.f16", DIM, "m1")
    assert again.mark("image") == 14
    np.testing.assert_allclose(again.get([7]), x[[2]], atol=2e-3)
    other = EmbeddingStore(tmp_path / "e.f16", DIM, "m2")  # another model: start over
    assert other.mark("image") == -1 and not other.get([7]).any()


def test_small_corpus_is_exact(tmp_path, catalog):
    fill(catalog, clustered(100, 1))
    vi = Upkeep(tmp_path, catalog, MODEL, DIM).refresh("image", None)
    assert vi.manifest.params["kind"] == "flat" and vi.count == 100


def test_ivfpq_build_tunes_nprobe_to_target(tmp_path, catalog, small_exact):
    fill(catalog, clustered(4_000, 2))
    fill(catalog, clustered(300, 3), modality="text")  # cross-modal tuning queries
    keeper = Upkeep(tmp_path, catalog, MODEL, DIM)
    vi = keeper.refresh("image", None)
    params = vi.manifest.params
    assert params["kind"] == "ivfpq" and 1 <= params["nprobe"] <= params["nlist"]
    assert set(params["tuned_recall"]) == {"image", "text"}
    assert min(params["tuned_recall"].values()) >= 0.95
    # Fresh queries, measured through the same path users take, land near the target.
    queries = clustered(200, 4)
    ids = catalog.ids("image")
    truth = exact_topk(queries, [(ids, keeper.store.get(ids))], 10)
    found = search_with_rerank(vi, keeper.store, queries, 10, None, params["rerank_factor"])
    assert recall_at_k(found, truth, 10) >= 0.9
    assert vi.bytes_per_vector() < DIM * 4
    # Each query modality has its own choice, tuned on its own set.
    by_query = params["by_query"]
    assert set(by_query) == {"image", "text"}
    for name, tuned in by_query.items():
        assert 1 <= tuned["nprobe"] <= params["nprobe"]
        assert tuned["tuned_recall"][name] >= 0.95
    # The query path uses the choice of the query's modality.
    seen = []
    search = vi.search

    def spy(q, k, nprobe=None):  # type: ignore[no-untyped-def]
        seen.append((k, nprobe))
        return search(q, k, nprobe=nprobe)

    vi.search = spy  # type: ignore[method-assign]
    for modality in ("text", "image", None):
        search_vector(catalog, vi, queries[0], 10, keeper.store.get, query_modality=modality)
    expect = [(10 * by_query[m]["rerank_factor"], by_query[m]["nprobe"]) for m in by_query]
    overall = (10 * params["rerank_factor"], params["nprobe"])
    assert sorted(seen[:2]) == sorted(expect) and seen[2] == overall


def test_deletes_and_additions_without_rebuild(tmp_path, catalog, small_exact, monkeypatch):
    ids = fill(catalog, clustered(3_000, 5))
    keeper = Upkeep(tmp_path, catalog, MODEL, DIM)
    vi = keeper.refresh("image", None)
    built_for = vi.manifest.params["built_for"]

    def no_rebuild(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("rebuilt instead of updated")

    monkeypatch.setattr(Upkeep, "build", no_rebuild)
    gone = ids[:500]
    catalog.remove(gone)
    new = fill(catalog, clustered(200, 6), start=10_000)
    vi = keeper.refresh("image", vi)
    assert vi.count == 3_000 - 500 + 200 and vi.manifest.params["built_for"] == built_for
    held = set(vi.ids().tolist())
    assert not held & set(gone) and set(new) <= held
    _, found = vi.search(keeper.store.get(gone[:50]), 10, nprobe=vi.manifest.params["nlist"])
    assert not set(found.ravel().tolist()) & set(gone)


def test_reopen_uses_the_saved_index_and_retrains_after_growth(tmp_path, catalog, small_exact):
    fill(catalog, clustered(2_000, 7))
    first = Upkeep(tmp_path, catalog, MODEL, DIM).refresh("image", None)
    reopened = Upkeep(tmp_path, catalog, MODEL, DIM).refresh("image", None)
    assert reopened.manifest.params == first.manifest.params  # loaded, not rebuilt
    fill(catalog, clustered(6_000, 8), start=50_000)  # 4× the size it was built for
    grown = Upkeep(tmp_path, catalog, MODEL, DIM).refresh("image", None)
    assert grown.manifest.params["built_for"] == 8_000
    assert grown.manifest.params["nlist"] >= first.manifest.params["nlist"]


def test_settings_force_flat_and_round_trip(tmp_path, catalog, small_exact):
    fill(catalog, clustered(3_000, 9))
    catalog.save_settings(IndexSettings(index_type="flat", memory_budget=None, recall_target=0.9))
    assert catalog.settings() == IndexSettings("flat", None, 0.9)
    vi = Upkeep(tmp_path, catalog, MODEL, DIM).refresh("image", None)
    assert vi.manifest.params["kind"] == "flat"


def test_deeper_rerank_only_when_the_usual_depths_fall_short(monkeypatch):
    """×30/×100 the base factor are tried only if ×1/×3/×10 reach no target (10M case)."""
    from types import SimpleNamespace

    import mmsearch.ann.tuning as upkeep

    reach = {"at": 0}  # the re-rank factor from which recall reaches the target

    def recall_for(factor: int) -> float:
        return 0.97 if factor >= reach["at"] else 0.9

    def fake_tune(search, queries, truth, nlist, k, aim):  # type: ignore[no-untyped-def]
        return 64, recall_for(int(search(queries, k, 64)[0, 0]))

    tried: list[int] = []

    def fake_time(vi, store, sets, nprobe, factor, count):  # type: ignore[no-untyped-def]
        tried.append(factor)
        return float(factor)  # deeper re-ranks cost more

    # The fake query path answers with its factor, so the fake recall can depend on it.
    monkeypatch.setattr(
        upkeep, "search_with_rerank", lambda vi, st, q, k, p, f, ex=None: np.full((len(q), k), f)
    )
    monkeypatch.setattr(upkeep, "recall_at_k", lambda found, truth, k: recall_for(found[0, 0]))
    monkeypatch.setattr(upkeep, "tune_nprobe", fake_tune)
    monkeypatch.setattr(upkeep, "_time_path", fake_time)
    vi = SimpleNamespace(manifest=SimpleNamespace(params={"rerank_factor": 10, "nlist": 4096}))
    sets = {"image": upkeep.TuningSet(np.zeros((4, 2)), np.zeros((4, 10)))}
    for at, expect_tried, chosen in ((30, [10, 30, 100], 30), (300, [10, 30, 100, 300], 300)):
        reach["at"] = at
        tried.clear()
        result = upkeep.tune_search(vi, None, sets, 0.95)
        assert sorted(set(tried)) == expect_tried and result.rerank_factor == chosen
        assert result.recall["image"] == 0.97
