"""Distributed indexing benchmark: encoding on a local Ray cluster vs the local pipeline, and
a sharded IVF build (train once, fill shards in worker processes, merge) vs one process.

    python bench/distributed.py encode --images 96 --json results/distributed_encode_cpu2.json
    python bench/distributed.py ivf --n 1000000 --json results/distributed_ivf_1m_cpu2.json

``encode``: the same folder of generated photo-like JPEGs (1600×1200, distinct content) is
indexed by the plain local pipeline, then through Ray with 1 and with 2 workers (one
``ray.init(num_cpus=2)`` for both), with a ViT-B-32 image tower of random weights (saved
to a checkpoint file once: the architecture is what costs, no download). Each run goes
through :func:`indexer.pipeline.index_images` into a fresh catalog (the ONNX export of the
facade is left out: it is not part of encoding). Reported per run: wall seconds (for Ray:
actor start-up, i.e. model loading in each worker, included; ``ray.init`` separately),
seconds to the first committed batch, and the steady rate (images/s between the first and
the last commit). Also measured, for the 100M-image estimate: the driver's content-hash
rate (MB/s, one thread) and the catalog's commit rate (rows/s, 512-d embeddings).

``ivf``: the synthetic CLIP-like corpus of ``bench/ann.py`` (clustered, d=512, with text-like
queries off the corpus distribution), the index ``choose_spec`` picks for it, trained once;
one copy filled in this process, one by ``--workers`` processes whose shards are merged.
Both are searched with the same parameters (nprobe, re-rank depth tuned on the single build
as mmsearch does), and each is tuned on its own too; recall@10 against exact search.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: The per-GPU encode bound used for the estimate: ViT-B-32 image tower, fp16, one H100
#: (bench/gpu_check.py, results/gpu_check_h100.json).
H100_IMAGES_PER_S = 19_810


# -- encode ---------------------------------------------------------------------------------


def make_photos(folder: Path, n: int, seed: int = 0) -> int:
    """``n`` distinct photo-like 1600×1200 JPEGs (smooth colour fields plus grain); bytes."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0
    for i in range(n):
        path = folder / f"photo{i:04d}.jpg"
        if not path.exists():
            small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((1600, 1200), Image.Resampling.BICUBIC)
            arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (1200, 1600, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
        total += path.stat().st_size
    return total


def vit_b32_checkpoint(path: Path) -> Path:
    """A ViT-B-32 checkpoint of random weights (seeded), written once."""
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


class Clock:
    """A progress factory that records when each batch was committed."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, int]] = []

    def __call__(self, total: int, desc: str) -> Any:
        clock = self

        class Bar:
            def update(self, n: int) -> None:
                clock.marks.append((time.perf_counter(), n))

            def close(self) -> None:
                pass

        return Bar()

    def steady_rate(self) -> float:
        """Items/s between the first and the last commit (start-up left out)."""
        if len(self.marks) < 2:
            return float("nan")
        items = sum(n for _, n in self.marks[1:])
        return items / (self.marks[-1][0] - self.marks[0][0])


def index_once(
    folder: Path, encoder: Any, workdir: Path, name: str, batch: int, ray_options: Any = None
) -> dict[str, Any]:
    from indexer.distributed import RayEncoding
    from indexer.pipeline import index_images
    from mmsearch.catalog import Catalog

    clock = Clock()
    remote = RayEncoding(ray_options).encode_images if ray_options else None
    with Catalog(workdir / name / "catalog.sqlite") as catalog:
        start = time.perf_counter()
        summary = index_images(
            catalog, [folder], lambda: encoder, batch_size=batch, progress=clock, encode_jobs=remote
        )
        wall = time.perf_counter() - start
    first = clock.marks[0][0] - start if clock.marks else float("nan")
    row = {
        "run": name,
        "images": summary.added,
        "wall_s": round(wall, 1),
        "first_batch_s": round(first, 1),
        "steady_images_per_s": round(clock.steady_rate(), 2),
        "end_to_end_images_per_s": round(summary.added / wall, 2),
    }
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def cpu_costs(folder: Path, workdir: Path, rows: int = 4_096, dim: int = 512) -> dict[str, float]:
    """Per-core costs in CPU time (``time.process_time``, one thread), which a crowded
    machine distorts far less than wall time: decoding one image to the model's input
    (JPEG draft mode + ViT-B-32 preprocessing), hashing one MB, committing one catalog row
    (512-d, batches of 64, through the driver's insert as a Ray run commits)."""
    import open_clip

    from mmsearch.catalog import Catalog
    from mmsearch.media import content_hash, draft_size, load_image

    _, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    files = sorted(folder.glob("*.jpg"))
    start = time.process_time()
    for path in files:
        preprocess(load_image(path, draft_size=draft_size(224)).image)
    decode_ms = (time.process_time() - start) * 1000 / len(files)
    start = time.process_time()
    size = sum(p.stat().st_size for p in files if content_hash(p))
    hash_ms_per_mb = (time.process_time() - start) * 1000 / (size / 1e6)
    vecs = np.random.default_rng(0).standard_normal((64, dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with Catalog(workdir / f"commit-{time.time_ns()}" / "catalog.sqlite") as catalog:
        start = time.process_time()
        for first in range(0, rows, 64):
            catalog.apply(
                add=[
                    {"modality": "image", "path": f"/p/{first + i}.jpg", "size": 1,
                     "mtime_ns": 0, "content_hash": f"h{first + i}", "width": 1, "height": 1,
                     "taken_at": 0.0, "embedding": vecs[i]}
                    for i in range(64)
                ],
                new_ids=False,
            )  # fmt: skip
        commit_ms = (time.process_time() - start) * 1000 / rows
    return {
        "decode_cpu_ms_per_image": round(decode_ms, 2),
        "hash_cpu_ms_per_mb": round(hash_ms_per_mb, 2),
        "commit_cpu_ms_per_row": round(commit_ms, 4),
    }


def bench_encode(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    from indexer.distributed import RayOptions
    from mmsearch.encoder import Encoder
    from mmsearch.models import resolve_model

    workdir = Path(args.workdir)
    folder = workdir / "photos"
    size = make_photos(folder, args.images)
    ckpt = vit_b32_checkpoint(workdir / "vit-b-32-random.safetensors")
    spec = resolve_model("ViT-B-32", str(ckpt))
    encoder = Encoder.load(spec, device="cpu")
    runs = tempfile.mkdtemp(dir=workdir)
    load = os.getloadavg()[0]
    rows = [index_once(folder, encoder, Path(runs), "local", args.batch_size)]
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    init_s = time.perf_counter() - start
    for workers in (1, 2):
        opts = RayOptions(workers=workers, batch_size=args.batch_size)
        rows.append(
            index_once(folder, encoder, Path(runs), f"ray-{workers}", args.batch_size, opts)
        )
    ray.shutdown()
    facts = {
        "images": rows[0]["images"],
        "mean_file_mb": round(size / args.images / 1e6, 3),
        "model": "ViT-B-32 (random weights), CPU fp32",
        "cpus": os.cpu_count(),
        "load_avg_1min_before": load,
        "load_avg_1min_after": os.getloadavg()[0],
        "ray_init_s": round(init_s, 1),
        **cpu_costs(folder, Path(runs)),
    }
    local = rows[0]["steady_images_per_s"]
    for row in rows:
        row["steady_vs_local"] = round(row["steady_images_per_s"] / local, 2)
        row["end_to_end_vs_local"] = round(
            row["end_to_end_images_per_s"] / rows[0]["end_to_end_images_per_s"], 2
        )
    return {"facts": facts, "runs": rows, "estimate_100m": estimate(facts, rows)}


def estimate(facts: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Wall time for 100M images on N GPU workers from the measured per-core costs: each
    stage's rate in images/s; the slowest one sets the pace.

    Into a fresh index the driver reads no file (it hashes only new files with the size of
    a stored item; the workers read and hash the rest); into a large catalog, where nearly
    every size is taken, it hashes every new file: both paces are given.

    Assumed hardware (stated, not measured): 16 decoding cores per GPU worker; the driver
    hashes with 8 threads and reads at most 1.25 GB/s (a 10 GbE link to shared storage);
    the catalog commits on one core (SQLite has one writer)."""
    n_images, mb = 100_000_000, facts["mean_file_mb"]
    decode_per_core = 1000 / facts["decode_cpu_ms_per_image"]
    hash_mb_per_s = min(8 * 1000 / facts["hash_cpu_ms_per_mb"], 1250.0)
    commit = 1000 / facts["commit_cpu_ms_per_row"]
    out: dict[str, Any] = {}
    for n in (1, 8, 32, 128):
        bounds = {
            "gpu_encode": n * H100_IMAGES_PER_S,
            "worker_decode": n * 16 * decode_per_core,
            "driver_commit": commit,
        }
        hashing = {**bounds, "driver_hash": hash_mb_per_s / mb}
        out[f"{n}_gpu_workers"] = {
            "bounds_images_per_s": {k: round(v) for k, v in hashing.items()},
            "limited_by": min(bounds, key=bounds.get),  # type: ignore[arg-type]
            "hours": round(n_images / min(bounds.values()) / 3600, 1),
            "limited_by_into_a_full_catalog": min(hashing, key=hashing.get),  # type: ignore[arg-type]
            "hours_into_a_full_catalog": round(n_images / min(hashing.values()) / 3600, 1),
        }
    return out


def redo_estimate(path: Path, workdir: Path) -> dict[str, Any]:
    """Re-measure the per-core costs and redo the estimate of an earlier ``encode`` result."""
    result = json.loads(path.read_text())
    facts = result["facts"]
    make_photos(workdir / "photos", facts["images"])  # the same files (seeded), if not there
    for old in ("driver_hash_mb_per_s", "catalog_commit_rows_per_s"):
        facts.pop(old, None)
    facts.update(cpu_costs(workdir / "photos", workdir))
    facts["load_avg_1min_costs"] = os.getloadavg()[0]
    result["estimate_100m"] = estimate(facts, result["runs"])
    return result


# -- ivf ----------------------------------------------------------------------------------


def _ann_bench() -> Any:
    spec = importlib.util.spec_from_file_location("ann_bench", ROOT / "bench" / "ann.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_ivf(args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from mmsearch.ann.faiss_index import VectorIndex
    from mmsearch.ann.policy import choose_spec
    from mmsearch.ann.query import search_params
    from mmsearch.ann.sharded import add_sharded
    from mmsearch.ann.store import EmbeddingStore
    from mmsearch.ann.tuning import TuningSet, recall_at_k, search_with_rerank, tune_search

    ab = _ann_bench()
    n, seed, nq, dim = args.n, 0, 300, ab.DIM
    workdir = Path(args.workdir)
    gen = ab.Synthetic(seed=seed)
    store = EmbeddingStore(workdir / f"bench-{n}-{seed}.f16", dim, f"bench-{n}-{seed}")
    if store.mark("image") < n - 1:
        ab.write_corpus(gen, n, store, seed)
        store.high_water["image"] = n - 1
        store.flush()
    # The queries and cached ground truth of bench/ann.py (same seeds, same order).
    rng = np.random.default_rng([seed, 3])
    tune_q = {"image": gen.images(rng, nq), "text": gen.texts(rng, nq)}
    eval_q = {"image": gen.images(rng, nq), "text": gen.texts(rng, nq)}
    sets = [eval_q["image"], eval_q["text"], tune_q["image"], tune_q["text"]]
    every, _ = ab.ground_truth(np.concatenate(sets), store, n, workdir / f"truth-{seed}-{nq}")
    parts = np.split(every, np.cumsum([len(q) for q in sets])[:-1])
    truth = {"image": parts[0], "text": parts[1]}
    tune_sets = {"image": TuningSet(tune_q["image"], parts[2]),
                 "text": TuningSet(tune_q["text"], parts[3])}  # fmt: skip

    spec = choose_spec(n, dim)
    params = {"kind": spec.kind, "nlist": spec.nlist, "rerank_factor": spec.rerank_factor}
    trained = VectorIndex.empty("image", dim, "bench", spec.factory, params)
    start = time.perf_counter()
    sample = np.sort(np.random.default_rng([seed, 2]).choice(n, spec.train_size, replace=False))
    trained.train(store.get(sample), max_train=len(sample))
    train_s = time.perf_counter() - start
    blob = faiss.serialize_index(trained.index)

    def copy() -> VectorIndex:
        return VectorIndex(faiss.deserialize_index(blob), trained.manifest)

    single, sharded = copy(), copy()
    start = time.perf_counter()
    for ids, vecs in ab.chunks(store, n):
        single.add(ids, vecs)
    single_s = time.perf_counter() - start
    start = time.perf_counter()
    add_sharded(sharded, ab.chunks(store, n), args.workers)
    sharded_s = time.perf_counter() - start
    print(f"# train {train_s:.0f}s, add {single_s:.0f}s, sharded {sharded_s:.0f}s", file=sys.stderr)

    same_lists = bool(np.array_equal(single.ids(), sharded.ids()))
    tunings = {name: tune_search(vi, store, tune_sets, 0.95)
               for name, vi in (("single", single), ("sharded", sharded))}  # fmt: skip
    rows = []
    for name, vi in (("single", single), ("sharded", sharded)):
        for tuned_by in ("single", name):
            row: dict[str, Any] = {"build": name, "params_tuned_on": tuned_by}
            for dist, q in eval_q.items():
                probe, factor = search_params(tunings[tuned_by].params(), dist)
                found = search_with_rerank(vi, store, q, 10, probe, factor)
                row[f"recall_at_10_{dist}"] = round(recall_at_k(found, truth[dist], 10), 4)
                raw = vi.search(q, 10, nprobe=probe)[1]
                row[f"raw_recall_at_10_{dist}"] = round(recall_at_k(raw, truth[dist], 10), 4)
                row[f"nprobe_{dist}"], row[f"rerank_{dist}"] = probe, factor
            rows.append(row)
            if tuned_by == name:
                break
    return {
        "facts": {
            "n": n, "dim": dim, "factory": spec.factory, "train_size": spec.train_size,
            "workers": args.workers, "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
            "train_s": round(train_s, 1), "single_add_s": round(single_s, 1),
            "sharded_add_and_merge_s": round(sharded_s, 1),
            "same_ids_in_every_list": same_lists,
        },
        "rows": rows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=["encode", "ivf", "estimate"])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mmsearch-bench"))
    parser.add_argument("--json")
    args = parser.parse_args()
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if args.part == "estimate":  # redo the estimate of the encode result in --json
        result = redo_estimate(Path(args.json), Path(args.workdir))
    else:
        result = bench_encode(args) if args.part == "encode" else bench_ivf(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
