"""The CPU side of a GPU indexing run, measured without a GPU.

On CUDA, ``mmsearch index`` leaves JPEG decoding to the GPU (nvJPEG): what stays on the CPU
is scanning, reading and hashing each file, reading its header (size, EXIF orientation and
date), batching, and committing the catalog rows. Much of that holds Python's GIL, so it
caps a GPU run whatever the GPU does. This runs the real pipeline (``index_images``) over a
folder with the GPU path's own ``prepare`` (``TorchFeed`` with ``gpu_jpeg``) and an encoder
that costs nothing, and reports the rate, the CPU time per file, the run thread's share, the
same with every file read and hashed beforehand (what is left mostly holds the GIL: its
rate is about the most one process can feed), and one thread's cost of each step.

    python bench/cpu_side.py DIR [--json out.json]

``bench/index_throughput.py`` runs it on its 2 MP corpus (``cpu_side`` in its results).
"""

from __future__ import annotations

import argparse
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


def measure(folder: Path, files: int | None = None) -> dict[str, Any]:
    """``index_images`` of ``folder`` (its first ``files`` JPEGs) with the GPU path's
    ``prepare`` and an encoder that costs nothing, into a new catalog."""
    import indexer.pipeline as pipeline
    from mmsearch import media
    from mmsearch.catalog import Catalog
    from mmsearch.encoder import Encoder
    from mmsearch.imagefeed import TorchFeed
    from mmsearch.media import EncodedImages

    class CpuSide(TorchFeed):
        """The GPU path's ``prepare`` (header only, bytes kept for nvJPEG); no model."""

        def __init__(self, encoder: Any) -> None:
            super().__init__(encoder, gpu_jpeg=True)
            self.on_cpu = False  # as on a GPU: decoders never pause, no model threads
            self.dim = 512

        def encode(self, batch: Any, lane: int = 0) -> EncodedImages:
            x = np.ones((len(batch), self.dim), np.float32) / np.sqrt(self.dim)
            return EncodedImages(x, {})

    paths = sorted(folder.glob("*.jpg"))[: files or None]
    work = Path(tempfile.mkdtemp(prefix="cpu-side-"))
    if files:  # a folder of just those files (links: the same bytes, no copies)
        sub = work / "files"
        sub.mkdir()
        for p in paths:
            os.symlink(p.resolve(), sub / p.name)
        folder = sub
    for p in paths:  # into the page cache
        p.read_bytes()
    encoder = Encoder.load("mmsearch-tiny", device="cpu")

    def run(name: str) -> dict[str, float]:
        real_feed_for = pipeline.feed_for
        pipeline.feed_for = lambda enc: CpuSide(enc)
        try:
            with Catalog(work / f"{name}.sqlite") as catalog:
                t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
                summary = pipeline.index_images(catalog, [folder], lambda: encoder, batch_size=256)
                wall = time.perf_counter() - t0
                cpu, main = time.process_time() - c0, time.thread_time() - m0
        finally:
            pipeline.feed_for = real_feed_for
        n = summary.added
        if n != len(paths) or summary.skipped:
            raise RuntimeError(f"indexed {n} of {len(paths)} files: {summary.skipped[:3]}")
        return {
            "images_per_s": round(n / wall, 1),
            "cpu_us_per_image": round(1e6 * cpu / n),
            "run_thread_us_per_image": round(1e6 * main / n),  # scan, settle, commit
        }

    whole = run("whole")
    # The same with every file read and hashed beforehand: what is left mostly holds the
    # GIL (header, queues, scan, settle, commit), so more cores do not make it faster —
    # its rate is about the most one process can feed, however many cores and GPUs.
    read_beforehand = {}
    for p in paths:
        data = media.read_file(p)
        read_beforehand[str(p)] = read_beforehand[str(folder / p.name)] = data
    real_read = media.read_file
    media.read_file = lambda path, *a, **k: (
        read_beforehand.get(str(path)) or real_read(path, *a, **k)
    )
    try:
        gil_bound = run("gil-bound")
    finally:
        media.read_file = real_read
    steps = _step_costs(paths[:200], CpuSide(encoder), media)
    return {
        "files": len(paths),
        "mb_mean": round(sum(p.stat().st_size for p in paths) / len(paths) / 1e6, 2),
        "cores": len(os.sched_getaffinity(0)),
        **whole,
        "without_read_and_hash": gil_bound,
        "one_thread_us": steps,
    }


def _step_costs(paths: list[Path], feed: Any, media: Any) -> dict[str, float]:
    """One thread's CPU microseconds per file of each step (medians)."""
    costs: dict[str, list[float]] = {"read": [], "hash": [], "prepare": []}
    for path in paths:
        t0 = time.thread_time()
        with open(path, "rb") as f:
            data = f.read()  # as media.read_file: new bytes
        t1 = time.thread_time()
        digest = media.hash_bytes(data)
        t2 = time.thread_time()
        feed.prepare(str(path), media.FileBytes(str(path), digest, data))
        t3 = time.thread_time()
        costs["read"].append(t1 - t0)
        costs["hash"].append(t2 - t1)  # releases the GIL
        costs["prepare"].append(t3 - t2)  # the header: holds it
    return {k: round(1e6 * float(np.median(v)), 1) for k, v in costs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--files", type=int, help="the first N JPEGs only")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = measure(args.folder, args.files)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
