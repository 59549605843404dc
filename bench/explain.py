"""Explained compound queries vs the plain query, on the shapes domain.

    python bench/explain.py --model /work/cache/shapes-model --json bench/results/explain.json

A fresh set of shape images (``data/make_shapes.py``, a seed the model was not trained
on; 40 % pair scenes such as "two red circles left of a blue square") is indexed with the
fine-tuned shapes model (the README's demo). For every distinct pair caption drawn (up to
``--captions``), the query is the caption; success = an image with exactly that caption
in the top 10. Rates are reported for the plain query and for ``Index.explain`` under each
relation mode (keep / split / objects) and score combination (mean, min, softmin,
geomean, whole), and whether every explained hit carried a score for every part.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import load_make_shapes  # noqa: E402  (data/make_shapes.py as a module)

KINDS = {"single": 0.4, "count": 0.2, "pair": 0.4}


def measure(
    model: str | Path, work: Path, images: int = 1000, captions: int = 100, seed: int = 7
) -> dict[str, Any]:
    """Success@10 of plain and explained queries over pair captions (see the docstring)."""
    from mmsearch import Index
    from mmsearch.explain import COMBINES, DEFAULT_COMBINE, DEFAULT_RELATIONS, RELATION_MODES

    csv_path = load_make_shapes().make_shapes(work / "shapes", n=images, seed=seed, kinds=KINDS)
    caption_of: dict[str, str] = {}
    with csv_path.open(encoding="utf-8") as f:
        for row in csv.DictReader(f):
            caption_of[str((work / "shapes" / row["image"]).resolve())] = row["caption"]
    pairs = sorted({c for c in caption_of.values() if " left of " in c or " above " in c})
    pairs = sorted(random.Random(seed).sample(pairs, min(captions, len(pairs))))
    configs = [(r, c) for r in RELATION_MODES for c in COMBINES]
    wins = {"plain": 0, **{f"{r}/{c}": 0 for r, c in configs}}
    every_hit_scored = True
    started = time.perf_counter()
    with Index.open(work / "idx", model=str(model), device="cpu") as index:
        index.add_images([work / "shapes" / "images"])
        indexed = time.perf_counter() - started
        started = time.perf_counter()
        for caption in pairs:
            hits = index.search(caption, k=10)
            wins["plain"] += any(caption_of.get(h.path or "") == caption for h in hits)
            for relations, combine in configs:
                result = index.explain(caption, k=10, relations=relations, combine=combine)
                n_parts = len(result.parts)
                every_hit_scored &= all(
                    h.part_scores is not None and len(h.part_scores) == n_parts for h in result.hits
                )
                found = any(caption_of.get(h.path or "") == caption for h in result.hits)
                wins[f"{relations}/{combine}"] += found
        seconds = time.perf_counter() - started
    rates = {name: round(n / max(len(pairs), 1), 4) for name, n in wins.items()}
    rates["default"] = rates[f"{DEFAULT_RELATIONS}/{DEFAULT_COMBINE}"]
    return {
        "model": str(model),
        "images": images,
        "seed": seed,
        "captions": len(pairs),
        "rates": rates,
        "default": f"{DEFAULT_RELATIONS}/{DEFAULT_COMBINE}",
        "every_hit_scored": every_hit_scored,
        "index_seconds": round(indexed, 1),
        "query_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=os.environ.get("MMSEARCH_TEST_SHAPES_MODEL"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--seeds", default="7", help="comma-separated image-set seeds")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmsearch-bench-explain"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model DIR (the fine-tuned shapes model) is needed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        work = args.workdir / f"n{args.images}-s{seed}-{int(time.time())}"
        runs.append(measure(args.model, work, args.images, args.captions, seed))
    names = list(runs[0]["rates"])
    print(f"success@10 over pair captions (load {os.getloadavg()[0]:.1f})")
    print(f"{'ranking':<20}" + "".join(f"  seed {r['seed']} ({r['captions']})" for r in runs))
    for name in names:
        print(f"{name:<20}" + "".join(f"  {r['rates'][name]:>14.3f}" for r in runs))
    print("every hit scored on every part:", all(r["every_hit_scored"] for r in runs))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "load": os.getloadavg()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
