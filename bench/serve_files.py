"""The file and thumbnail routes' latency: p50/p99 of GET /api/items/N/file (a 2 MP JPEG)
and of a cached thumbnail, over a real uvicorn server on loopback, one keep-alive client.

    python bench/serve_files.py --requests 300 --json out.json

Run it on two trees (PYTHONPATH) one after the other, several times, and compare medians:
the check that a file is still the indexed content costs one fstat on the unchanged path.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from serve_util import live_server

    import mmsearch
    from mmsearch.server.app import create_app
    from mmsearch.server.backend import Backend

    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        rng = np.random.default_rng(0)
        for n in range(4):
            pixels = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(photos / f"{n}.jpg", quality=90)
        with mmsearch.Index.open(Path(tmp) / "idx", model="mmsearch-tiny") as index:
            index.add_images([photos])
            ids = [int(i) for i in index.catalog.ids("image")]
        backend = Backend.open(Path(tmp) / "idx")
        out = {}
        with live_server(create_app(backend)) as base:
            host, port = base.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port))
            for route in ("file", "thumbnail"):
                times = []
                for n in range(args.requests + 20):
                    started = time.perf_counter()
                    conn.request("GET", f"/api/items/{ids[n % len(ids)]}/{route}")
                    response = conn.getresponse()
                    body = response.read()
                    if response.status != 200 or not body:
                        raise SystemExit(f"{route}: HTTP {response.status}")
                    if n >= 20:  # the first ones make the thumbnails
                        times.append(time.perf_counter() - started)
                times.sort()
                out[route] = {
                    "p50_ms": round(statistics.median(times) * 1000, 3),
                    "p99_ms": round(times[int(len(times) * 0.99) - 1] * 1000, 3),
                }
        backend.close()
    print(json.dumps(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
