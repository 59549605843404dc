"""Filtered search: the catalog's filters, capture dates (schema v2, back-filled without
re-encoding), and recall against brute force at every selectivity on an IVF-PQ index."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, noise_image
from PIL import Image

from mmsearch import search
from mmsearch.ann import policy
from mmsearch.ann.upkeep import Upkeep
from mmsearch.catalog import SCHEMA_VERSION, Catalog
from mmsearch.index import Index
from mmsearch.query import Filters, parse_date

DIM = 32
MODEL = "synthetic"
N = 20_000
CENTRES = 40


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """N clustered unit vectors with their cluster, and 30 held-out queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, DIM)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        c = rng.integers(0, CENTRES, n)
        x = centres[c] + 0.6 * rng.standard_normal((n, DIM)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True), c

    x, clusters = draw(N)
    queries, _ = draw(30)
    return x, clusters, queries


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A 20k-item IVF-PQ index whose items carry a random width (1..N, each once) and a
    path naming their cluster: width ≥ w selects any fraction; a cluster's folder selects
    items far from most queries."""
    tmp = tmp_path_factory.mktemp("filtered")
    x, clusters, queries = _data()
    widths = np.random.default_rng(1).permutation(N) + 1
    catalog = Catalog(tmp / "catalog.sqlite")
    catalog.set_model_info({"model": MODEL, "identity": MODEL, "display": MODEL, "dim": DIM})
    ids = catalog.add(
        [
            {
                "modality": "image",
                "path": f"/lib/c{clusters[i]:02d}/{i}.jpg",
                "content_hash": f"h{i}",
                "width": int(widths[i]),
                "height": 100,
                "embedding": x[i],
            }
            for i in range(N)
        ]
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(policy, "EXACT_MAX", 2_000)
        keeper = Upkeep(tmp, catalog, MODEL, DIM)
        vi = keeper.refresh("image", None)
    assert vi.manifest.params["kind"] == "ivfpq"
    stored = x.astype(np.float16).astype(np.float32)  # what the catalog holds
    yield catalog, vi, keeper, np.array(ids), widths, clusters, stored, queries
    catalog.close()


def _recall(catalog, vi, keeper, ids, stored, queries, filters, mask):
    allowed = np.flatnonzero(mask)
    recalls = []
    for q in queries:
        hits = search.search_filtered(
            catalog, vi, q, 10, keeper.store.get, filters, query_modality="image"
        )
        assert len(hits) == min(10, len(allowed))  # filtering never shrinks the list
        scores = stored[allowed] @ q
        truth = set(ids[allowed[np.argsort(-scores)[:10]]].tolist())
        assert all(ids[h.id - ids[0]] == h.id and mask[h.id - ids[0]] for h in hits)
        recalls.append(len(truth & {h.id for h in hits}) / len(truth))
    return float(np.mean(recalls))


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0])
def test_filtered_recall_at_every_selectivity(big, monkeypatch, fraction):
    catalog, vi, keeper, ids, widths, _, stored, queries = big
    # A low exact limit so that the over-fetch path serves the broad filters here (it
    # serves them from 20,000 matches in real use).
    monkeypatch.setattr(search, "FILTER_EXACT_MAX", 100)
    min_width = N - int(fraction * N) + 1
    filters = Filters(min_width=min_width)
    mask = widths >= min_width
    strategy = search.filter_strategy(vi, int(mask.sum()), 10)
    assert strategy == ("exact" if fraction < 0.01 else "overfetch")
    recall = _recall(catalog, vi, keeper, ids, stored, queries, filters, mask)
    assert recall >= 0.95, (fraction, strategy, recall)


@pytest.mark.slow
def test_filter_far_from_the_query_falls_back_to_exact(big, monkeypatch):
    """A folder holding one cluster: for most queries its items rank far down, so the
    over-fetch finds too few and the exact search answers."""
    catalog, vi, keeper, ids, _, clusters, stored, queries = big
    monkeypatch.setattr(search, "FILTER_EXACT_MAX", 100)
    monkeypatch.setattr(search, "OVERFETCH_MAX", 2_000)
    filters = Filters(path_glob="/lib/c07/*")
    mask = clusters == 7
    assert search.filter_strategy(vi, int(mask.sum()), 10) == "overfetch"
    assert _recall(catalog, vi, keeper, ids, stored, queries[:20], filters, mask) >= 0.95


def test_filters_in_sql(tmp_path):
    cat = Catalog(tmp_path / "c.sqlite")
    rows = [
        ("/p/2023/a.JPG", 800, 600, "2023-05-01"),
        ("/p/2023/b.png", 200, 900, "2023-12-31T23:00"),
        ("/p/2024/c.jpg", 1920, 1080, "2024-02-01"),
        ("/p/old/d.jpeg", 640, 480, None),
    ]
    ids = cat.add(
        [
            {
                "modality": "image",
                "path": p,
                "content_hash": p,
                "width": w,
                "height": h,
                "taken_at": parse_date(d) if d else None,
                "embedding": np.ones(4),
            }
            for p, w, h, d in rows
        ]
    )
    cat.replace_tags([(ids[0], "dog", 0.9), (ids[2], "dog", 0.5), (ids[2], "beach", 0.4)])

    def match(**kw):
        return [ids.index(i) for i in cat.filter_ids("image", Filters(**kw))]

    assert match() == [0, 1, 2, 3]
    assert match(path_glob="2023/*") == [0, 1]
    assert match(extensions=("jpg",)) == [0, 2]  # case-insensitive, .jpeg is not .jpg
    assert match(extensions=("jpeg", "png")) == [1, 3]
    assert match(after=parse_date("2023-06-01")) == [1, 2]  # an undated item never passes
    assert match(before=parse_date("2024-01-01")) == [0, 1]
    assert match(min_width=700, min_height=500) == [0, 2]
    assert match(tags=("dog",)) == [0, 2] and match(tags=("dog", "beach")) == [2]
    assert cat.tag_counts() == {"dog": 2, "beach": 1}
    cat.remove([ids[2]])  # an item's tags leave with it
    assert cat.tag_counts() == {"dog": 1}
    cat.close()


def _v1_catalog(path: Path) -> None:
    """Turn a fresh catalog into one as schema v1 wrote it (no dates, no tags table)."""
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE items DROP COLUMN taken_at")
    con.execute("DROP TABLE tags")
    con.execute("UPDATE meta SET value='1' WHERE key='schema_version'")
    con.commit()
    con.close()


def test_v1_index_is_migrated_and_dates_backfilled_without_encoding(tmp_path, monkeypatch):
    photos = tmp_path / "photos"
    photos.mkdir()
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9003] = "2019:07:14 10:30:00"  # DateTimeOriginal
    noise_image(1).save(photos / "exif.jpg", "JPEG", exif=exif.tobytes())
    noise_image(2).save(photos / "plain.png")
    os.utime(photos / "plain.png", (1_600_000_000, 1_600_000_000))
    idx = tmp_path / "idx"
    with Index.open(idx, model=TINY) as index:
        index.add_images([photos])
        dates = {Path(r.path).name: r.taken_at for r in index.catalog.image_files()}
    assert dates["exif.jpg"] == datetime(2019, 7, 14, 10, 30).timestamp()
    assert dates["plain.png"] == 1_600_000_000

    _v1_catalog(idx / "catalog.sqlite")
    with Index.open(idx) as index:
        assert index.catalog.schema_version == SCHEMA_VERSION
        assert all(r.taken_at is None for r in index.catalog.image_files())

        def no_model():
            raise AssertionError("back-filling dates must not load the model")

        monkeypatch.setattr(index, "encoder", no_model)
        summary = index.add_images([photos])
        assert summary.unchanged == 2 and summary.added == summary.updated == 0
        again = {Path(r.path).name: r.taken_at for r in index.catalog.image_files()}
        assert again == dates
        hits = index.search(
            Path(photos / "plain.png"),
            include_self=True,
            filters=Filters(before=parse_date("2019-08-01")),
        )
        assert [Path(h.path).name for h in hits] == ["exif.jpg"]
