"""Indexing throughput: how close `mmsearch index` comes to the rate of the model alone.

    python bench/index_throughput.py --json bench/results/index_throughput_cpu2.json
    python bench/index_throughput.py --device cuda --n 4096 --n2mp 8192 --distinct 512 \\
        --json bench/results/index_throughput_cuda.json

The model is ViT-B-32 with random-initialised weights saved to a safetensors checkpoint
(``--model ViT-B-32 --pretrained FILE``, as ``bench/query.py`` makes it): the architecture
is what costs time, not the values. The corpus is photo-like JPEGs (smooth random colour
fields at three scales, film grain, a few solid shapes; quality 90): ``--n`` of 12 MP
(4000×3000, 3–6 MB) and ``--n2mp`` of 2 MP (1600×1200), each a different picture — or,
with ``--distinct K``, K different pictures and byte-distinct copies of them (a JPEG
comment differs: a different content hash, the same decoding work), to make thousands of
files quickly for a GPU. Generated once into the work dir and reused.

Measured in one run, in this order (the machine may be shared: speeds are compared within
the run, and ``uptime``'s load is recorded beside each):

* ``engine``: a first small run exports the model's towers into the shared cache; on the
  CPU the runs after it encode with them (``onnx``: indexer/runtime_encoder.py), on CUDA
  with torch (``torch:cuda``). Each end-to-end run records the engine its summary names.
* ``cpu_vs_device`` (``--compare N``; 256 files by default off the CPU): the same files
  indexed with ``MMSEARCH_DEVICE=cpu`` and with ``--device``, each in a new process; the
  stored embeddings compared (cosine, largest difference, the same 5 nearest neighbours).
* ``model_only``: the feed the indexer uses encoding already-preprocessed tensors
  (batch 64 on the CPU, 256 on CUDA), with the thread count an index run gives the model;
  measured before and after the end-to-end runs (both are reported; ratios use their mean).
  With the ``onnx`` engine, torch's rate on the same tensors is measured once too
  (``model_only_torch``; ``x_torch_model_only_*`` compares the runs with it).
* ``decode``: one thread's CPU cost per image of each step — read + hash, Pillow decode at
  reduced JPEG scale, the model's preprocessing — and of simplejpeg's reduced-scale decode
  when it is installed (the faster-decoder question), on 12 MP and 2 MP files.
* ``end_to_end``: ``python -m mmsearch index DIR --index NEW --model ViT-B-32 --pretrained
  FILE --json`` in a new process, default settings, a fresh index each time; the rate is
  images / the run's own ``seconds`` (scan → last commit, model loading included; not
  Python's start-up nor the ONNX export, which happens once into a shared cache in a
  warm-up run); ``images_per_s_after_model_load`` leaves the model's loading out (what a
  long corpus approaches on a GPU). Cases: warm page cache, cold page cache
  (``posix_fadvise(DONTNEED)`` on every file first, or ``drop_caches`` when writable), the
  ``overlap`` schedule, 2 MP (on a GPU also with ``MMSEARCH_GPU_LANES=2``).
* ``cpu_side`` (``--cpu-side N``): ``bench/cpu_side.py`` on N files of the 2 MP corpus —
  the pipeline with the GPU path's ``prepare`` and an encoder that costs nothing: the rate
  the CPU side of a GPU run can feed, and its CPU time per file.
* ``ratio_adjacent_*``: each end-to-end run against the model-only rate measured right
  beside it (a ``--slice-images`` slice just before and just after it, averaged): the
  machine's speed drifts within a run, and a ratio of time-adjacent rates drifts less.
* ``ratio_in_run_*``: the run's own ``encode_seconds`` over its ``seconds`` — the
  end-to-end rate against the model's rate inside that same run, in the same seconds (on
  the CPU the decoders pause while the model runs); ``in_run_model_vs_adjacent_*`` says
  whether the model ran there as fast as in the slices beside it.
* ``ceiling``: from the measured CPU costs per image (the model's CPU time over all its
  threads; one thread's read + hash + decode + preprocess), the best a perfect split of
  the cores could do: ``model_core_ms / (model_core_ms + decode_core_ms)`` of the
  model-only rate (wall times would count the waiting on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

MODEL = "ViT-B-32"
SIZES = {"12mp": (4000, 3000), "2mp": (1600, 1200)}
_TILE = np.random.default_rng(12345).normal(0, 12, (520, 520, 3)).astype(np.int16)


# -- corpus ----------------------------------------------------------------------------


def photo(seed: int, size: tuple[int, int]) -> Image.Image:
    """A photo-like picture: colour fields at three scales, grain, and solid shapes."""
    w, h = size
    rng = np.random.default_rng(seed)
    acc = np.full((h, w, 3), -96, np.int16)
    for div, shift in ((max(w // 6, 1), 0), (max(w // 40, 1), 1), (max(w // 300, 1), 2)):
        small = rng.integers(0, 256, (h // div + 2, w // div + 2, 3), dtype=np.uint8)
        up = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC))
        acc += up.astype(np.int16) >> shift
    dx, dy = rng.integers(0, 8, 2) * 8
    tile = _TILE[dy : dy + 512, dx : dx + 512]
    acc += np.tile(tile, (h // 512 + 2, w // 512 + 2, 1))[:h, :w]
    img = Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(h // 20, h // 4))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape([x - r, y - r, x + r, y + r], fill=colour)
    return img


def _with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The same JPEG with a COM segment after SOI: other bytes, the same pixels."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


def _make(path: Path, seed: int, kind: str) -> None:
    if not path.exists():  # an interrupted generation resumes
        tmp = path.with_suffix(".tmp")
        photo(seed, SIZES[kind]).save(tmp, "JPEG", quality=90)
        tmp.replace(path)


def corpus(workdir: Path, kind: str, n: int, distinct: int | None, jobs: int = 1) -> Path:
    """``n`` JPEGs of ``kind`` (made once, by ``jobs`` processes; kept while the marker
    matches)."""
    folder = workdir / f"corpus-{kind}-{n}-{distinct or n}"
    marker = folder / ".made"
    if marker.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bases = distinct or n
    seed = 1000 * (kind == "2mp")
    work = [(folder / f"{kind}-{i:05d}.jpg", seed + i, kind) for i in range(bases)]
    if jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(jobs) as pool:
            list(pool.map(_make, *zip(*work, strict=True)))
    else:
        for args in work:
            _make(*args)
    for i in range(bases, n):
        base = (folder / f"{kind}-{i % bases:05d}.jpg").read_bytes()
        (folder / f"{kind}-{i:05d}.jpg").write_bytes(_with_comment(base, b"copy %d" % i))
    marker.write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    print(f"made {n} {kind} JPEGs in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return folder


def corpus_info(folder: Path) -> dict[str, Any]:
    sizes = [p.stat().st_size for p in folder.glob("*.jpg")]
    return {
        "files": len(sizes),
        "mb_mean": round(float(np.mean(sizes)) / 1e6, 2),
        "mb_min": round(min(sizes) / 1e6, 2),
        "mb_max": round(max(sizes) / 1e6, 2),
    }


# -- measurements ----------------------------------------------------------------------


def load() -> float:
    """The 1-minute load average (what ``uptime`` shows first)."""
    return round(os.getloadavg()[0], 2)


def model_only(feed: Any, n: int, batch: int) -> dict[str, Any]:
    """Images/s of the feed encoding preprocessed tensors (after one warm-up batch): torch
    tensors already on the device for the torch feed, float32 arrays for the ONNX one."""
    from mmsearch.media import PreparedImage

    if hasattr(feed, "devices"):  # mmsearch.imagefeed.TorchFeed
        import torch

        size = feed.size
        x = torch.randn(batch, 3, size, size, device=feed.devices[0])
    else:  # indexer.feed.PlainFeed over indexer.runtime_encoder.RuntimeEncoder
        size = feed.encoder.image_size
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)
    items = [PreparedImage(4000, 3000, None, x[i]) for i in range(batch)]
    feed.encode(items[: min(8, batch)])
    if not feed.on_cpu:
        import torch

        torch.cuda.synchronize()
    done, t0, c0, l0 = 0, time.perf_counter(), time.process_time(), load()
    while done < n:
        feed.encode(items)
        done += batch
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "images": done,
        "images_per_s": round(done / seconds, 2),
        "cpu_ms_per_image": round(1000 * cpu / done, 1),  # all of torch's threads
        "load": [l0, load()],
    }


def decode_costs(feed: Any, folder: Path, n: int) -> dict[str, Any]:
    """One thread's CPU milliseconds per image for each step (median over ``n`` files)."""
    from mmsearch import media

    paths = sorted(folder.glob("*.jpg"))[:n]
    steps: dict[str, list[float]] = {"read_hash": [], "decode": [], "preprocess": []}
    simplejpeg = _optional("simplejpeg")
    if simplejpeg is not None:
        steps["simplejpeg_decode"] = []
    l0 = load()
    for path in paths:
        t = time.thread_time()
        data = media.read_file(path)
        t1 = time.thread_time()
        loaded = media.load_image(path, draft_size=feed.draft, data=data)
        t2 = time.thread_time()
        feed.from_decoded(loaded.image)  # the engine's preprocessing, as the indexer runs it
        t3 = time.thread_time()
        steps["read_hash"].append(t1 - t)
        steps["decode"].append(t2 - t1)
        steps["preprocess"].append(t3 - t2)
        if simplejpeg is not None:
            t4 = time.thread_time()
            simplejpeg.decode_jpeg(
                bytes(data.data or b""), min_width=feed.draft, min_height=feed.draft
            )
            steps["simplejpeg_decode"].append(time.thread_time() - t4)
    out: dict[str, Any] = {k: round(1000 * float(np.median(v)), 2) for k, v in steps.items()}
    out["total_core_ms"] = round(out["read_hash"] + out["decode"] + out["preprocess"], 2)
    out["load"] = [l0, load()]
    return out


def _optional(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError:
        return None


def drop_cache(folder: Path) -> str:
    """Evict the corpus from the page cache; says how."""
    try:
        subprocess.run(["sync"], check=False)
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "drop_caches"
    except OSError:
        pass
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return "posix_fadvise(DONTNEED)"


def end_to_end(
    folder: Path, workdir: Path, weights: Path, device: str, env_extra: dict[str, str]
) -> dict[str, Any]:
    """One ``mmsearch index`` of ``folder`` into a fresh index, in a new process."""
    index = Path(tempfile.mkdtemp(prefix="idx-", dir=workdir))
    env = {
        **os.environ,
        # Ahead of what is there already (packages carried onto a GPU machine, say).
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "HF_HUB_OFFLINE": "1",
        "MMSEARCH_CACHE": str(workdir / "cache"),
        "MMSEARCH_DEVICE": device,
        **env_extra,
    }
    cmd = [sys.executable, "-m", "mmsearch", "index", str(folder), "--index", str(index)]
    cmd += ["--model", MODEL, "--pretrained", str(weights), "--json"]
    l0, t0 = load(), time.perf_counter()
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"mmsearch index failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    n = summary["added"]
    return {
        "index": str(index),
        "engine": summary["engine"],  # onnx, torch:cpu, torch:cuda
        "images": n,
        "skipped": len(summary["skipped"]),
        "run_seconds": summary["seconds"],
        # Of the run: loading the model, and the model encoding (the decoders pause while it
        # runs on the CPU) — the model-only rate measured inside the run itself.
        "model_seconds": summary["model_seconds"],
        "encode_seconds": summary["encode_seconds"],
        "in_run_model_images_per_s": round(n / max(summary["encode_seconds"], 1e-9), 2),
        "process_seconds": round(wall, 2),
        "images_per_s": round(n / summary["seconds"], 2),
        # The rate once the model is there (what a long corpus approaches); on the CPU the
        # decoders already work while the model loads, so this flatters the run there.
        "images_per_s_after_model_load": round(
            n / max(summary["seconds"] - summary["model_seconds"], 1e-9), 2
        ),
        "images_per_s_process": round(n / wall, 2),
        # The whole process: imports, model loading and the export check included.
        "process_cpu_ms_per_image": round(1000 * cpu / max(n, 1), 1),
        "load": [l0, load()],
    }


def onnx_feed(encoder: Any, workdir: Path) -> Any:
    """The feed ``mmsearch index`` uses on the CPU once the model's towers are exported."""
    from indexer.feed import PlainFeed
    from indexer.runtime_encoder import RuntimeEncoder
    from mmsearch import config
    from mmsearch.runtime import QueryRuntime

    os.environ[config.ENV_CACHE] = str(workdir / "cache")  # where the runs export to
    identity = encoder.spec.identity
    runtime = QueryRuntime.load(config.runtime_dir(identity), expect_identity=identity)
    return PlainFeed(RuntimeEncoder(runtime, encoder.spec))


def agreement(feed: Any, folder: Path, n: int) -> dict[str, float]:
    """Cosine between embeddings through the device decoding path (torchvision) and the
    Pillow path, on this corpus with this model."""
    from mmsearch import media
    from mmsearch.imagefeed import TorchFeed

    paths = sorted(folder.glob("*.jpg"))[:n]
    pillow = TorchFeed(feed.encoder, devices=feed.devices, gpu_jpeg=False)
    device = TorchFeed(feed.encoder, devices=feed.devices, gpu_jpeg=True)
    a = pillow.encode([pillow.prepare(str(p), media.read_file(p)) for p in paths]).vectors
    b = device.encode([device.prepare(str(p), media.read_file(p)) for p in paths]).vectors
    cos = (a * b).sum(axis=1)
    return {"images": len(paths), "cosine_min": round(float(cos.min()), 5)}


def stored_images(index: Path) -> dict[str, np.ndarray]:
    """The stored image embeddings of an index, by file name."""
    from mmsearch import Index

    with Index.open(index, create=False) as idx:
        names = {r.id: Path(r.path or "").name for r in idx.catalog.image_files()}
        out = {}
        for ids, rows in idx.catalog.iter_embeddings("image", idx.dim):
            for item_id, row in zip(ids.tolist(), rows, strict=True):
                out[names[item_id]] = np.asarray(row, np.float32)
        return out


def cpu_vs_device(
    folder: Path, workdir: Path, weights: Path, device: str, n: int, k: int = 5
) -> dict[str, Any]:
    """Index the same ``n`` files with ``MMSEARCH_DEVICE=cpu`` and with ``device``, each in
    a new process, and compare what got stored: cosine of each image's two embeddings, and
    whether each image's ``k`` nearest neighbours among the others are the same."""
    sub = workdir / f"compare-{folder.name}-{n}"
    if not sub.exists():
        tmp = workdir / f"compare-{folder.name}-{n}.tmp"
        tmp.mkdir(exist_ok=True)
        for path in sorted(folder.glob("*.jpg"))[:n]:
            (tmp / path.name).write_bytes(path.read_bytes())
        tmp.replace(sub)
    runs = {name: end_to_end(sub, workdir, weights, name, {}) for name in ("cpu", device)}
    a, b = (stored_images(Path(runs[name]["index"])) for name in ("cpu", device))
    if a.keys() != b.keys():
        raise RuntimeError(f"the {device} run stored other files than the CPU run")
    names = sorted(a)
    x = np.stack([a[m] for m in names])
    y = np.stack([b[m] for m in names])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    cos = (x * y).sum(axis=1)

    def neighbours(v: np.ndarray) -> np.ndarray:
        sims = v @ v.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    nx, ny = neighbours(x), neighbours(y)
    same = np.mean([set(p) == set(q) for p, q in zip(nx.tolist(), ny.tolist(), strict=True)])
    return {
        "images": len(names),
        "engines": {name: runs[name]["engine"] for name in runs},
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "max_abs_diff": round(float(np.abs(x - y).max()), 6),
        f"same_top{k}_neighbours": round(float(same), 4),
    }


# -- the run ---------------------------------------------------------------------------


def run(args: argparse.Namespace, save: Any = lambda results: None) -> dict[str, Any]:
    """The measurements, in order; ``save(results)`` after each (a run cut short by a
    time limit keeps what it measured)."""
    from query import checkpoint

    from indexer.feed import thread_budget
    from mmsearch.config import cpu_cores
    from mmsearch.encoder import Encoder
    from mmsearch.imagefeed import TorchFeed

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    weights = checkpoint(workdir)
    cores = cpu_cores()
    jobs = args.jobs or cores
    big = corpus(workdir, "12mp", args.n, args.distinct, jobs)
    small = corpus(workdir, "2mp", args.n2mp, args.distinct, jobs) if args.n2mp else None
    budget = thread_budget(cores=cores)

    # A first run exports the model's towers into the shared cache (once): the runs after
    # it encode with them on a machine without a GPU (indexer/runtime_encoder.py), and
    # the model-only rates below are those of the engine the runs use.
    # The first exports; the second (a fresh index again) encodes as the runs below will.
    warm = corpus(workdir, "2mp", 4, None)
    engine = [end_to_end(warm, workdir, weights, args.device, {}) for _ in range(2)][-1]["engine"]
    encoder = Encoder.load(MODEL, pretrained=str(weights), device=args.device)
    torch_feed = TorchFeed(encoder)
    torch_feed.use_threads(budget.model_threads if torch_feed.on_cpu else None)
    feed: Any = torch_feed
    if engine == "onnx":
        feed = onnx_feed(encoder, workdir)
        feed.use_threads(budget.model_threads)
    batch = 64 if feed.on_cpu else 256
    results: dict[str, Any] = {
        "machine": {
            "cores": cores,
            "cpu": platform.processor() or platform.machine(),
            "device": str(encoder.device),
            "lanes": feed.lanes,
            "gpu_jpeg": torch_feed.gpu_jpeg,
            "dtype": str(torch_feed.dtype).replace("torch.", ""),
        },
        "engine": engine,
        "model": f"{MODEL} (random weights, safetensors checkpoint)",
        "budget": budget.__dict__,
        "corpus": {"12mp": corpus_info(big), **({"2mp": corpus_info(small)} if small else {})},
        "uptime_start": _uptime(),
    }
    save(results)
    on_gpu = not args.device.startswith("cpu")
    compare = args.compare if args.compare is not None else (256 if on_gpu else 0)
    if compare:
        print(f"cpu vs {args.device}…", file=sys.stderr)
        results["cpu_vs_device"] = cpu_vs_device(
            small or big, workdir, weights, args.device, compare
        )
        save(results)
    print("model only…", file=sys.stderr)
    if feed is not torch_feed:  # torch's rate on the same machine, for the record
        results["model_only_torch"] = model_only(torch_feed, args.model_images, batch)
    results["model_only_before"] = model_only(feed, args.model_images, batch)
    print("decode costs…", file=sys.stderr)
    results["decode_12mp"] = decode_costs(feed, big, min(args.n, 24))
    if small is not None:
        results["decode_2mp"] = decode_costs(feed, small, min(args.n2mp, 24))
    if on_gpu or args.agreement:
        results["agreement_device_vs_pillow"] = agreement(torch_feed, small or big, 16)
    if args.cpu_side:  # what the CPU side of a GPU run can feed (bench/cpu_side.py)
        from cpu_side import measure

        folder = small or big
        results["cpu_side"] = measure(folder, min(args.cpu_side, len(list(folder.glob("*.jpg")))))
    save(results)
    e2e: dict[str, Any] = {}
    # A model-only slice right before each end-to-end run and one after the last: each run
    # is also compared with the model-only rate measured next to it (the machine's speed
    # drifts within a run: the before/after rates differ by up to 20 % here).
    slices = [model_only(feed, args.slice_images, batch)]
    overlap = {"MMSEARCH_DECODE_SCHEDULE": "overlap"}
    runs = [
        ("12mp_warm", big, {}, False),
        ("12mp_cold", big, {}, True),
        *([("12mp_overlap", big, overlap, False)] if args.variants else []),
    ]
    if small is not None:  # on a GPU the 2 MP rate is the one asked for: measured first
        runs.insert(0 if on_gpu else len(runs), ("2mp_warm", small, {}, False))
    if small is not None and on_gpu:  # two encoder threads per GPU, for comparison
        runs.insert(1, ("2mp_warm_2lanes", small, {"MMSEARCH_GPU_LANES": "2"}, False))
    for i, (name, folder, env, cold) in enumerate(runs):
        print(f"end to end: {name}…", file=sys.stderr)
        how = drop_cache(folder) if cold else "warm (read once before)"
        if not cold:
            for p in folder.iterdir():  # into the page cache
                p.read_bytes()
        e2e[name] = {**end_to_end(folder, workdir, weights, args.device, env), "cache": how}
        last = i == len(runs) - 1  # the slice after the last run is also "model_only_after"
        slices.append(model_only(feed, args.model_images if last else args.slice_images, batch))
        adjacent = (slices[-2]["images_per_s"] + slices[-1]["images_per_s"]) / 2
        e2e[name]["model_only_adjacent_images_per_s"] = round(adjacent, 2)
        results["end_to_end"] = e2e
        save(results)
    results["model_only_slices"] = slices[:-1]
    results["model_only_after"] = slices[-1]
    feed.close()
    torch_feed.close()
    results["uptime_end"] = _uptime()
    results["summary"] = summarise(results, cores)
    return results


def summarise(r: dict[str, Any], cores: int) -> dict[str, Any]:
    model = (r["model_only_before"]["images_per_s"] + r["model_only_after"]["images_per_s"]) / 2
    out: dict[str, Any] = {"model_only_images_per_s": round(model, 2)}
    # How much the machine's speed moved during the run: every model-only measurement of
    # the engine the runs use (the ratios below move by as much).
    rates = [r["model_only_before"]["images_per_s"], r["model_only_after"]["images_per_s"]]
    rates += [s["images_per_s"] for s in r.get("model_only_slices", [])]
    out["model_only_range_images_per_s"] = [min(rates), max(rates)]
    for name, e in r["end_to_end"].items():
        out[f"ratio_{name}"] = round(e["images_per_s"] / model, 3)
    for name, e in r["end_to_end"].items():  # against the model-only slices beside the run
        if "model_only_adjacent_images_per_s" in e:
            adjacent = e["images_per_s"] / e["model_only_adjacent_images_per_s"]
            out[f"ratio_adjacent_{name}"] = round(adjacent, 3)
    torch_only = r.get("model_only_torch")
    if torch_only:  # the runs encoded with the ONNX towers: against torch's rate too
        out["torch_model_only_images_per_s"] = torch_only["images_per_s"]
        for name, e in r["end_to_end"].items():
            out[f"x_torch_model_only_{name}"] = round(
                e["images_per_s"] / torch_only["images_per_s"], 3
            )
    for name, e in r["end_to_end"].items():  # against the model's own rate inside the run
        if e.get("encode_seconds"):
            out[f"ratio_in_run_{name}"] = round(e["encode_seconds"] / e["run_seconds"], 3)
            # Whether the model ran inside the run as fast as alone (decoders beside it
            # would slow it down and flatter the in-run ratio).
            inside = e["in_run_model_images_per_s"] / e["model_only_adjacent_images_per_s"]
            out[f"in_run_model_vs_adjacent_{name}"] = round(inside, 3)
    d = r["decode_12mp"]
    if r["machine"]["device"] == "cpu":
        # CPU time, not wall time: on a shared machine the wall time counts waiting too.
        model_core_ms = (
            r["model_only_before"]["cpu_ms_per_image"] + r["model_only_after"]["cpu_ms_per_image"]
        ) / 2
        out["model_core_ms"] = round(model_core_ms, 1)
        out["decode_core_ms_12mp"] = d["total_core_ms"]
        out["ceiling_ratio"] = round(model_core_ms / (model_core_ms + d["total_core_ms"]), 3)
        out["ceiling_images_per_s"] = round(out["ceiling_ratio"] * model, 2)
    out["decode_only_images_per_s_12mp"] = round(cores * 1000 / d["total_core_ms"], 2)
    return out


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return f"load average: {os.getloadavg()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=96, help="12 MP JPEGs")
    parser.add_argument("--n2mp", type=int, default=96, help="2 MP JPEGs (0: none)")
    parser.add_argument("--distinct", type=int, help="different pictures (rest: copies)")
    parser.add_argument("--model-images", type=int, default=128, help="images per model-only run")
    parser.add_argument(
        "--slice-images", type=int, default=64, help="images per model-only slice beside each run"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda")
    parser.add_argument("--no-variants", dest="variants", action="store_false",
                        help="leave out the overlap-schedule run")  # fmt: skip
    parser.add_argument("--agreement", action="store_true", help="device vs Pillow cosine")
    parser.add_argument(
        "--compare", type=int, help="index N files on the CPU and on --device, compare (GPU: 256)"
    )
    parser.add_argument("--jobs", type=int, help="processes making the corpus (default: cores)")
    parser.add_argument(
        "--cpu-side", type=int, default=4096, help="files for bench/cpu_side.py (0: not run)"
    )
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "ibench")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    def save(results: dict[str, Any]) -> None:
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=2) + "\n")
            tmp.replace(args.json)

    results = run(args, save)
    save(results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
