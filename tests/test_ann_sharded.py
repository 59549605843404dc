"""Sharded IVF building (train once, fill shards in worker processes, merge the inverted
lists) gives the index a single-process build gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import clustered_dataset

from mmsearch.ann import policy as index_policy
from mmsearch.ann import upkeep
from mmsearch.ann.faiss_index import VectorIndex
from mmsearch.ann.library import require_faiss
from mmsearch.ann.sharded import add_sharded
from mmsearch.catalog import Catalog

DIM = 32


def _chunks(ids: np.ndarray, x: np.ndarray, size: int):  # type: ignore[no-untyped-def]
    for start in range(0, len(ids), size):
        yield ids[start : start + size], x[start : start + size]


@pytest.mark.parametrize("factory", ["IVF16,PQ8", "PCA16,IVF16,PQ4"])
def test_sharded_build_answers_as_a_single_build(factory: str) -> None:
    fs = require_faiss()
    x, q = clustered_dataset(6000, 50, DIM, n_clusters=40, noise=0.3, seed=3)
    # Ids that are not positions (catalog ids have gaps), shuffled across the chunks.
    ids = np.random.default_rng(0).permutation(10_000)[:6000].astype(np.int64) * 3 + 7
    trained = VectorIndex.empty("image", DIM, "m", factory, {"nlist": 16})
    trained.train(x[:3000], seed=1)
    single = VectorIndex(fs.deserialize_index(fs.serialize_index(trained.index)), trained.manifest)
    for chunk_ids, chunk in _chunks(ids, x, 1000):
        single.add(chunk_ids, chunk)

    add_sharded(trained, _chunks(ids, x, 1000), workers=2)

    assert trained.count == single.count == 6000
    assert np.array_equal(trained.ids(), single.ids())
    d1, i1 = single.search(q, 10, nprobe=4)
    d2, i2 = trained.search(q, 10, nprobe=4)
    assert np.array_equal(i1, i2)
    np.testing.assert_allclose(d1, d2, rtol=1e-6)


@pytest.mark.slow  # two full builds with nprobe tuning: a minute on 2 cores
def test_upkeep_builds_with_workers_the_index_it_builds_alone(
    tmp_path: Path, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(index_policy, "EXACT_MAX", 2_000)  # IVF from 2,000 vectors on
    monkeypatch.setattr(upkeep, "ADD_CHUNK", 1_000)  # shards of 1,000: 4 of them
    catalog.set_model_info({"model": "m", "identity": "m", "display": "m", "dim": DIM})
    x, q = clustered_dataset(4000, 50, DIM, n_clusters=50, noise=0.6, seed=2)
    catalog.add(
        [{"modality": "image", "path": f"/x/{i}.png", "content_hash": f"h{i}", "embedding": v}
         for i, v in enumerate(x)]
    )  # fmt: skip
    keeper = upkeep.Upkeep(tmp_path, catalog, "m", DIM)
    keeper.catch_up_store("image")
    ids = catalog.ids("image")
    spec = index_policy.choose_spec(len(ids), DIM)
    alone = keeper.build("image", ids, spec)
    keeper.build_workers = 2
    sharded = keeper.build("image", ids, spec)

    assert alone.manifest.params["kind"] == "ivfpq" and sharded.count == alone.count == 4000
    # The same index: the same hits at any nprobe (the tuned choice itself also weighs
    # timings, which are noise here), and tuned to the target alike.
    for nprobe in (1, 8):
        assert np.array_equal(sharded.search(q, 10, nprobe)[1], alone.search(q, 10, nprobe)[1])
    assert min(sharded.manifest.params["tuned_recall"].values()) >= 0.95


def test_sharded_adding_refuses_a_flat_index() -> None:
    with pytest.raises(ValueError, match="trained IVF"):
        add_sharded(VectorIndex.empty("image", DIM, "m"), [], workers=2)
