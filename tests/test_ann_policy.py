"""The rules that choose an ANN index from corpus size and memory budget."""

from __future__ import annotations

import pytest

from mmsearch.ann.policy import (
    EXACT_MAX,
    MIN_IVF_VECTORS,
    choose_spec,
    needs_retrain,
    parse_size,
)


def test_exact_while_small_then_ivfpq():
    assert choose_spec(EXACT_MAX - 1, 512).kind == "flat"
    spec = choose_spec(EXACT_MAX, 512)
    assert spec.kind == "ivfpq" and spec.rerank_factor > 1 and spec.train_size <= EXACT_MAX


def test_nlist_grows_with_sqrt_n_and_codes_fit_100_bytes_at_1m():
    sizes = [100_000, 1_000_000, 10_000_000]
    specs = [choose_spec(n, 512) for n in sizes]
    nlists = [s.nlist for s in specs]
    assert nlists == sorted(nlists) and nlists[0] < nlists[-1]
    assert specs[1].nlist == 4096 and specs[1].pq_m == 64 and not specs[1].opq
    assert specs[1].bytes_per_vector(512, 1_000_000) <= 100
    # Training samples ≥ 40 vectors a list (k-means wants ≥ 39), at most 500k unless that
    # rule needs more (10M: 16,384 lists → 655,360).
    assert [s.train_size for s in specs] == [100_000, 262_144, 655_360]
    assert all(s.train_size >= 40 * s.nlist for s in specs)


def test_many_lists_get_an_hnsw_coarse_quantiser():
    assert "HNSW" not in choose_spec(1_000_000, 512).factory
    big = choose_spec(10_000_000, 512)
    assert big.factory == "IVF16384_HNSW32,PQ64"
    # The graph's links (2·32 int32 per centroid) are counted in the RAM per vector.
    assert big.bytes_per_vector(512, 10_000_000) == pytest.approx(
        64 + 8 + 16384 * (512 * 4 + 64 * 4) / 10_000_000
    )
    assert big.bytes_per_vector(512, 10_000_000) <= 100


def test_memory_budget_shrinks_codes_and_adds_opq():
    n = 1_000_000
    free = choose_spec(n, 512)
    tight = choose_spec(n, 512, memory_budget=40 * n)
    assert tight.pq_m < free.pq_m and tight.opq and tight.factory.startswith("OPQ")
    assert tight.bytes_per_vector(512, n) * n <= 40 * n
    assert tight.rerank_factor > free.rerank_factor
    with pytest.raises(ValueError, match="too small"):
        choose_spec(n, 512, memory_budget=5 * n)


def test_budget_too_small_for_flat_switches_to_ivfpq():
    n = 20_000  # exact by size, but flat needs ~41 MB
    assert choose_spec(n, 512).kind == "flat"
    assert choose_spec(n, 512, memory_budget=10 << 20).kind == "ivfpq"


def test_explicit_types_and_small_corpora():
    assert choose_spec(5_000_000, 512, index_type="flat").kind == "flat"
    assert choose_spec(5_000, 512, index_type="ivfpq").kind == "ivfpq"
    # Too few vectors to train PQ codebooks: stays exact until the corpus grows.
    assert choose_spec(MIN_IVF_VECTORS - 1, 512, index_type="ivfpq").kind == "flat"
    small = choose_spec(MIN_IVF_VECTORS, 512, index_type="ivfpq")
    assert MIN_IVF_VECTORS // small.nlist >= 39  # enough points per centroid
    with pytest.raises(ValueError, match="auto, flat, ivfpq"):
        choose_spec(10, 512, index_type="hnsw")


def test_retrain_after_4x_growth():
    assert not needs_retrain(1_000_000, 3_999_999)
    assert needs_retrain(1_000_000, 4_000_000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("100000", 100_000),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1.5GiB", 3 << 29),
        ("64 kb", 64 << 10),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "5Q"])
def test_parse_size_rejects_junk(text):
    with pytest.raises(ValueError):
        parse_size(text)
