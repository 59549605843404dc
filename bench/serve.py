"""HTTP server benchmark: requests/s and p50/p99 latency of text, image-upload and
more-like-this queries at 1, 4 and 16 concurrent loopback clients, against a real uvicorn
server on a large index of synthetic vectors (tiny model).

    python bench/serve.py --n 100000 --json bench/results/serve.json

The index: a few real shape images (the upload queries, and the model record), then ``n``
synthetic clustered unit vectors (``bench/ann.py``'s generator) of the tiny model's
dimension inserted directly into the catalog as image items (their files do not exist;
only search is measured). Every request must answer 200: any error fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
from ann import Synthetic, add_synthetic_images  # noqa: E402
from conftest import load_make_shapes  # noqa: E402
from serve_util import free_port  # noqa: E402

import mmsearch  # noqa: E402

QUERIES = ["a red circle", "two blue squares", "a green triangle above a yellow circle"]


def build(root: Path, n: int) -> tuple[Path, list[bytes]]:
    shapes = root / "shapes"
    load_make_shapes().make_shapes(shapes, 8, seed=0, size=128)
    idx = root / "idx"
    with mmsearch.Index.open(idx, model="mmsearch-tiny", device="cpu") as index:
        index.add_images([shapes / "images"])
        dim = index.dim
        rng = np.random.default_rng(0)
        # Clustered CLIP-like vectors (bench/ann.py), not isotropic noise: with no cluster
        # structure an IVF index must visit nearly every list, which real embeddings never need.
        add_synthetic_images(index.catalog, Synthetic(dim=dim), rng, 0, n)
        index.refresh("image")  # build (and tune) the ANN index once, before serving
    uploads = []
    for p in sorted((shapes / "images").glob("*.png"))[:4]:
        uploads.append(p.read_bytes())
    return idx, uploads


@contextmanager
def serving(idx: Path) -> Iterator[str]:
    """The real command in its own process (the clients here must not share its GIL)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMSEARCH_DEVICE": "cpu"}
    cmd = [sys.executable, "-m", "mmsearch", "-q", "serve", "--index", str(idx)]
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def run_level(url: str, kind: str, clients: int, requests: int, uploads: list[bytes]) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def one(i: int, client: httpx.Client) -> None:
        t0 = time.perf_counter()
        if kind == "text":
            r = client.get(f"{url}/api/search", params={"q": QUERIES[i % 3], "k": 20})
        elif kind == "image":
            data = uploads[i % len(uploads)]
            r = client.post(f"{url}/api/search/image", files={"file": ("q.png", data)})
        else:
            r = client.get(f"{url}/api/items/{1 + i % 5000}/similar", params={"k": 20})
        dt = time.perf_counter() - t0
        with lock:
            latencies.append(dt)
            if r.status_code != 200:
                errors.append(f"{r.status_code} {r.text[:200]}")

    per = requests // clients

    def worker(w: int) -> None:
        with httpx.Client(timeout=60) as client:
            for j in range(per):
                one(w * per + j, client)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    return {
        "kind": kind,
        "clients": clients,
        "requests": len(ms),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "rps": round(len(ms) / wall, 1),
        "p50_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="synthetic items")
    ap.add_argument("--requests", type=int, default=320, help="requests per (kind, level)")
    ap.add_argument("--levels", default="1,4,16")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        idx, uploads = build(Path(tmp), args.n)
        print(f"built {args.n:,} items in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        results = []
        with serving(idx) as url:
            info = httpx.get(f"{url}/api/info", timeout=60).json()
            for kind in ("text", "image", "similar"):
                run_level(url, kind, 4, 40, uploads)  # warm-up
                for clients in (int(c) for c in args.levels.split(",")):
                    res = run_level(url, kind, clients, args.requests, uploads)
                    print(json.dumps(res), file=sys.stderr)
                    results.append(res)
    out = {
        "n": args.n,
        "index": info["vectors"][0]["index_type"],
        "cpus": os.cpu_count(),
        "results": results,
    }
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    print(f"\n{args.n:,} items, {out['index']}, {out['cpus']} CPUs\n")
    print("| query | clients | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['kind']} | {r['clients']} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['errors']} |"
        )
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
