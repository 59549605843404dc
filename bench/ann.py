"""ANN benchmark: the index mmsearch chooses vs exact search and alternatives, on synthetic
CLIP-like vectors with a modality gap.

    python bench/ann.py --n 1000000 --json out.json --plot out.png

Data (d=512, unit vectors, seeded):
* "image" corpus vectors: ``normalise(0.7·μ + c_k + 0.75·w)`` — a common direction μ (CLIP
  embeddings live in a narrow cone), a cluster centre ``c_k`` drawn from 4096 centres with
  Zipf-distributed sizes and a decaying spectrum, and within-cluster noise ``w`` with a
  flatter spectrum.
* image-distribution queries: fresh samples of the same distribution (not in the corpus).
* text-distribution queries: ``normalise(0.35·v + 0.75·g + 0.55·e)`` for a fresh image-like
  ``v``, a fixed "gap" direction ``g`` and isotropic noise ``e``: like CLIP text queries, their
  best cosine to the corpus is ~0.3 and they lie off the corpus' distribution, the hard case
  for quantisers trained on the corpus.

The corpus is written to a float16 memory-mapped store (mmsearch's own ``EmbeddingStore``)
and every index is built from it in chunks, exactly as mmsearch builds: the ``auto`` row is
``choose_spec(n, 512)``, trained on its sample, nprobe tuned on separate held-out queries of
both distributions to reach recall@10 ≥ 0.95 after exact re-rank from the store. Queries
used for tuning are not used for measuring.

Columns: build seconds (train + add + tuning), bytes per vector held in RAM (codes, ids,
centroids; the float16 store on disk is not counted), recall@1 and recall@10 against exact
search for each query distribution, ms per query single-threaded one query at a time
(including the re-rank) and batched (all queries in one call, all threads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402

from mmsearch.ann.faiss_index import VectorIndex  # noqa: E402
from mmsearch.ann.policy import IndexSpec, choose_spec  # noqa: E402
from mmsearch.ann.query import search_params  # noqa: E402
from mmsearch.ann.store import EmbeddingStore  # noqa: E402
from mmsearch.ann.tuning import (  # noqa: E402
    TuningSet,
    exact_topk,
    recall_at_k,
    search_with_rerank,
    tune_search,
)

DIM = 512
CHUNK = 100_000


class Synthetic:
    """Seeded CLIP-like vectors with a modality gap (see the module docstring)."""

    def __init__(self, dim: int = DIM, clusters: int = 4096, seed: int = 0) -> None:
        rng = np.random.default_rng([seed, 0])
        self.dim = dim
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.basis = basis.astype(np.float32)
        j = np.arange(dim)
        self.spec_within = ((1 + j) ** -0.3).astype(np.float32)
        mu = rng.standard_normal(dim)
        self.mu = (mu / np.linalg.norm(mu)).astype(np.float32)
        g = rng.standard_normal(dim)
        g -= (g @ self.mu) * self.mu
        g /= np.linalg.norm(g)
        self.gap = (0.2 * self.mu + np.sqrt(1 - 0.04) * g).astype(np.float32)
        centres = (rng.standard_normal((clusters, dim)) * (1 + j) ** -0.6) @ self.basis
        self.centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
        p = (1 + np.arange(clusters)) ** -0.7
        self.p = p / p.sum()

    @staticmethod
    def _unit(x: np.ndarray) -> np.ndarray:
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    def images(self, rng: np.random.Generator, n: int, sigma: float = 0.75) -> np.ndarray:
        k = rng.choice(len(self.p), size=n, p=self.p)
        w = (rng.standard_normal((n, self.dim), dtype=np.float32) * self.spec_within) @ self.basis
        w = self._unit(w)
        return self._unit(0.7 * self.mu + self.centres[k] + sigma * w)

    def texts(self, rng: np.random.Generator, n: int) -> np.ndarray:
        v = self.images(rng, n, sigma=0.5)
        e = self._unit(rng.standard_normal((n, self.dim), dtype=np.float32))
        return self._unit(0.35 * v + 0.75 * self.gap + 0.55 * e)


def add_synthetic_images(
    catalog: Any, synthetic: Synthetic, rng: np.random.Generator, start: int, n: int
) -> None:
    """Insert synthetic image items ``start`` … ``n - 1`` straight into an mmsearch catalog
    (their files do not exist: only search is measured), 20,000 rows per transaction."""
    for first in range(start, n, 20_000):
        m = min(20_000, n - first)
        vecs = synthetic.images(rng, m)
        catalog.add(
            [
                {
                    "modality": "image",
                    "path": f"/synthetic/{first + i}.jpg",
                    "size": 1,
                    "mtime_ns": 0,
                    "content_hash": f"synthetic{first + i}",
                    "width": 64,
                    "height": 64,
                    "embedding": vecs[i],
                }
                for i in range(m)
            ]
        )


def write_corpus(gen: Synthetic, n: int, store: EmbeddingStore, seed: int) -> None:
    rng = np.random.default_rng([seed, 1])
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        store.write(np.arange(start, start + m), gen.images(rng, m))
    store.flush()


def chunks(store: EmbeddingStore, n: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for start in range(0, n, CHUNK):
        ids = np.arange(start, min(n, start + CHUNK))
        yield ids, store.get(ids)


def timed_queries(search, queries: np.ndarray, k: int, limit: int = 200) -> float:
    """ms per query, single-threaded, one query at a time."""
    faiss.omp_set_num_threads(1)
    q = queries[:limit]
    search(q[:5], k)  # warm-up
    start = time.perf_counter()
    for i in range(len(q)):
        search(q[i : i + 1], k)
    ms = (time.perf_counter() - start) * 1000 / len(q)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    return ms


def timed_batch(search, queries: np.ndarray, k: int) -> float:
    start = time.perf_counter()
    search(queries, k)
    return (time.perf_counter() - start) * 1000 / len(queries)


def build(spec: IndexSpec, store: EmbeddingStore, n: int, seed: int) -> VectorIndex:
    params = {"kind": spec.kind, "nlist": spec.nlist, "rerank_factor": spec.rerank_factor}
    vi = VectorIndex.empty("image", DIM, "bench", spec.factory, params)
    rng = np.random.default_rng([seed, 2])
    if not vi.is_trained:
        sample = np.sort(rng.choice(n, min(spec.train_size or n, n), replace=False))
        vi.train(store.get(sample), max_train=len(sample))
    for ids, vecs in chunks(store, n):
        vi.add(ids, vecs)
    return vi


def evaluate(
    name: str, search, queries: dict[str, np.ndarray], truth: dict[str, np.ndarray], extra: dict
) -> dict:
    """One table row. ``search(q, k, dist)`` knows which distribution its queries are from,
    as mmsearch's query path knows whether a query is a text or an image."""
    row = {"config": name, **extra}
    single, batched = [], []
    for dist, q in queries.items():
        found = search(q, 10, dist)
        row[f"recall_at_1_{dist}"] = round(recall_at_k(found[:, :1], truth[dist][:, :1], 1), 4)
        row[f"recall_at_10_{dist}"] = round(recall_at_k(found, truth[dist], 10), 4)

        def one(q: np.ndarray, k: int, dist: str = dist) -> np.ndarray:
            return search(q, k, dist)

        single.append(timed_queries(one, q, 10, limit=100))
        batched.append(timed_batch(one, q, 10))
        row[f"ms_per_query_{dist}"] = round(single[-1], 3)
    row["ms_per_query"] = round(float(np.mean(single)), 3)  # both distributions, equally
    row["ms_per_query_batched"] = round(float(np.mean(batched)), 4)
    return row


def run(n: int, n_queries: int, seed: int, workdir: Path, configs: list[str]) -> list[dict]:
    gen = Synthetic(seed=seed)
    store = EmbeddingStore(workdir / f"bench-{n}-{seed}.f16", DIM, f"bench-{n}-{seed}")
    if store.mark("image") < n - 1:
        t = time.perf_counter()
        write_corpus(gen, n, store, seed)
        store.high_water["image"] = n - 1
        store.flush()
        print(f"# wrote {n} vectors in {time.perf_counter() - t:.0f}s", file=sys.stderr)
    rng = np.random.default_rng([seed, 3])
    tune_q = {"image": gen.images(rng, n_queries), "text": gen.texts(rng, n_queries)}
    eval_q = {"image": gen.images(rng, n_queries), "text": gen.texts(rng, n_queries)}
    sets = [eval_q["image"], eval_q["text"], tune_q["image"], tune_q["text"]]
    cache = workdir / f"truth-{seed}-{n_queries}"
    every, exact_s = ground_truth(np.concatenate(sets), store, n, cache)
    parts = np.split(every, np.cumsum([len(q) for q in sets])[:-1])
    truth = {"image": parts[0], "text": parts[1]}
    tune_truth = {"image": parts[2], "text": parts[3]}
    print(f"# ground truth in {exact_s:.0f}s", file=sys.stderr)
    best = {d: float((eval_q[d] @ store.get(truth[d][:, 0]).T).diagonal().mean()) for d in eval_q}
    print(
        f"# mean top-1 cosine: image {best['image']:.2f}, text {best['text']:.2f}", file=sys.stderr
    )
    rows = []
    if "Flat" not in configs:  # too big for a flat index in RAM: the streamed scan is the reference
        rows.append(exact_scan_row(store, n, eval_q, exact_s / sum(len(q) for q in sets)))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    auto = choose_spec(n, DIM)
    for config in configs:
        rows.extend(run_config(config, auto, n, store, eval_q, truth, tune_q, tune_truth, seed))
        for row in rows[-2:]:
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def ground_truth(
    queries: np.ndarray, store: EmbeddingStore, n: int, cache: Path
) -> tuple[np.ndarray, float]:
    """Exact top-10 ids of ``queries`` (one pass over the store) and the seconds it took;
    kept beside the store so a rerun at the same size and seed skips the scan."""
    npy, meta = cache.with_suffix(f".{n}.npy"), cache.with_suffix(f".{n}.json")
    if npy.exists() and meta.exists():
        truth = np.load(npy)
        if truth.shape == (len(queries), 10):
            return truth, float(json.loads(meta.read_text())["seconds"])
    t = time.perf_counter()
    truth = exact_topk(queries, chunks(store, n), 10)
    seconds = time.perf_counter() - t
    np.save(npy, truth)
    meta.write_text(json.dumps({"seconds": seconds}))
    return truth, seconds


def exact_scan_row(store: EmbeddingStore, n: int, eval_q, batched_ms: float) -> dict:
    """The exact reference without a flat index: a scan of the float16 store (what the
    ground truth is computed with), timed on three single queries. The scan converts each
    float16 chunk and multiplies with numpy (BLAS threads as configured, not pinned to one),
    so its ms/query is a rough reference, not a tuned flat index."""
    both = np.concatenate(list(eval_q.values()))
    faiss.omp_set_num_threads(1)
    start = time.perf_counter()
    for i in range(3):
        exact_topk(both[i : i + 1], chunks(store, n), 10)
    ms = (time.perf_counter() - start) * 1000 / 3
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    row = {"config": "Exact scan (float16 store)", "n": n, "auto": False, "build_s": 0.0}
    row["bytes_per_vector"] = 2 * DIM  # read from disk/page cache per query, not held
    for dist in eval_q:
        row[f"recall_at_1_{dist}"] = row[f"recall_at_10_{dist}"] = 1.0
    row.update(ms_per_query=round(ms, 1), ms_per_query_batched=round(batched_ms, 3))
    return row | {"reference": True}


def run_config(
    config: str,
    auto: IndexSpec,
    n: int,
    store: EmbeddingStore,
    eval_q,
    truth,
    tune_q,
    tune_truth,
    seed: int,
) -> list[dict]:
    common = {"n": n}
    if config == "Flat":
        t = time.perf_counter()
        vi = build(IndexSpec("flat", "Flat"), store, n, seed)
        build_s = time.perf_counter() - t

        def flat(q: np.ndarray, k: int, dist: str) -> np.ndarray:
            return vi.search(q, k)[1]

        return [
            evaluate(
                "Flat",
                flat,
                eval_q,
                truth,
                {
                    **common,
                    "auto": auto.kind == "flat",
                    "build_s": round(build_s, 1),
                    "bytes_per_vector": vi.bytes_per_vector(),
                    "reference": True,
                },
            )
        ]
    spec = auto if config == "auto" else _spec_from(config, n)
    t = time.perf_counter()
    vi = build(spec, store, n, seed)
    sets = {d: TuningSet(tune_q[d], tune_truth[d]) for d in tune_q}
    tuning = tune_search(vi, store, sets, 0.95)  # exactly as mmsearch tunes at build time
    nprobe = tuning.nprobe
    build_s = time.perf_counter() - t

    def reranked(q: np.ndarray, k: int, dist: str) -> np.ndarray:
        # the parameters the query path picks for this query modality
        probe, factor = search_params(tuning.params(), dist)
        return search_with_rerank(vi, store, q, k, probe, factor)

    def raw(q: np.ndarray, k: int, dist: str) -> np.ndarray:
        return vi.search(q, k, nprobe=nprobe)[1]

    extra = {
        **common,
        "build_s": round(build_s, 1),
        "bytes_per_vector": round(vi.bytes_per_vector(), 1),
        "nprobe": nprobe,
        "rerank_factor": tuning.rerank_factor,
        "tuned_recall": tuning.recall,
        "by_query": {d: [t.nprobe, t.rerank_factor] for d, t in tuning.by_query.items()},
    }
    is_auto = config == "auto" or spec.factory == auto.factory
    name = spec.factory
    label = ", ".join(f"{d} {p}/x{f}" for d, (p, f) in extra["by_query"].items())
    return [
        evaluate(
            f"{name} + re-rank ({label})", reranked, eval_q, truth, {**extra, "auto": is_auto}
        ),
        evaluate(
            f"{name} (no re-rank)", raw, eval_q, truth, {**extra, "auto": False, "rerank_factor": 1}
        ),
    ]


def _spec_from(factory: str, n: int) -> IndexSpec:
    """An IVF-PQ spec from a factory string such as ``OPQ32,IVF4096,PQ32``."""
    import re

    m = re.fullmatch(r"(OPQ\d+,)?IVF(\d+),PQ(\d+)", factory)
    if not m:
        raise SystemExit(f"unsupported config {factory!r} (use auto, Flat or [OPQm,]IVFn,PQm)")
    nlist, pq = int(m[2]), int(m[3])
    return IndexSpec(
        "ivfpq",
        factory,
        nlist,
        pq,
        bool(m[1]),
        min(n, max(64 * nlist, 100_000), 500_000),
        10 * max(1, (DIM // 8) // pq),
    )


def table(rows: list[dict]) -> str:
    width = max([len("config"), *(len(r["config"]) + 1 for r in rows)])
    head = (
        f"{'config':<{width}} {'n':>9} {'build s':>8} {'B/vec':>7} {'R@1 img':>8} "
        f"{'R@10 img':>9} {'R@1 txt':>8} {'R@10 txt':>9} {'ms/q 1t':>8} {'ms/q batch':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        star = "*" if r.get("auto") else " "
        lines.append(
            f"{star + r['config']:<{width}} {r['n']:>9} {r['build_s']:>8} "
            f"{r['bytes_per_vector']:>7.0f} "
            f"{r['recall_at_1_image']:>8.3f} {r['recall_at_10_image']:>9.3f} "
            f"{r['recall_at_1_text']:>8.3f} {r['recall_at_10_text']:>9.3f} "
            f"{r['ms_per_query']:>8.3f} {r['ms_per_query_batched']:>10.4f}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for dist, marker in (("image", "o"), ("text", "s")):
        for r in rows:
            ms = r.get(f"ms_per_query_{dist}", r["ms_per_query"])
            ax.scatter(ms, r[f"recall_at_10_{dist}"], marker=marker, s=60 if r.get("auto") else 30)
            ax.annotate(
                f"{r['config']} [{dist}]",
                (ms, r[f"recall_at_10_{dist}"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.set_xscale("log")
    ax.set_xlabel("ms per query (single thread, incl. re-rank)")
    ax.set_ylabel("recall@10 vs exact")
    ax.axhline(0.95, color="grey", lw=0.5, ls="--")
    ax.set_title(f"n = {rows[0]['n']:,}  (circles: image queries, squares: text queries)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="corpus size")
    ap.add_argument("--queries", type=int, default=300, help="queries per distribution")
    ap.add_argument(
        "--configs",
        default="Flat,auto",
        help="comma-separated: Flat, auto, or factory strings like OPQ32,IVF1024,PQ32 "
        "(use ';' between configs containing commas)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="threads for building and batched search",
    )
    ap.add_argument("--workdir", type=Path, help="where the float16 corpus is kept [a temp dir]")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--plot", help="write a recall-vs-latency PNG here")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    configs = args.configs.split(";") if ";" in args.configs else _split_simple(args.configs)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mmsearch-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    rows = run(args.n, args.queries, args.seed, workdir, configs)
    flat = next((r for r in rows if r["config"] == "Flat"), None)
    print(table(rows))
    if flat:
        for r in rows:
            r["speedup_vs_flat"] = round(flat["ms_per_query"] / r["ms_per_query"], 2)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if args.plot:
        plot(rows, args.plot)


def _split_simple(text: str) -> list[str]:
    """'Flat,auto' → ['Flat', 'auto']; factory strings need ';' separators."""
    parts = [p.strip() for p in text.split(",")]
    if all(p in ("Flat", "auto") for p in parts):
        return parts
    return [text]


if __name__ == "__main__":
    main()
