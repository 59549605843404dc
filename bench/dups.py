"""Near-duplicate detection: precision and recall of duplicate pairs on a generated set.

    python bench/dups.py --json bench/results/dups.json
    python bench/dups.py --originals 40 --models mmsearch-tiny      # quick

The set (seeded; :func:`make_set`): originals — half shape scenes (``data/make_shapes.py``,
128 px), half photo-like pictures (smooth colour fields with grain, 320×240) — each with
one to four copies of different kinds: resized (50–80 %), JPEG-recompressed (quality
30–60), cropped (3–10 % of each side's length, both ends together), brightened (+15–35 %);
and one *look-alike* per original that is not a duplicate: the same shape caption drawn
again (other positions, sizes, background), or the same photo colours in another layout.

Every file is indexed per model (the tiny random model, and the fine-tuned shapes model
when ``--shapes-model`` or ``$MMSEARCH_TEST_SHAPES_MODEL`` names one). True pairs: every
two files of one original's group. Predicted pairs: every two files of one group that
``Index.duplicates`` reports (connected components). The table shows precision and recall
at the defaults, and across embedding thresholds with and without the pixel re-check.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import load_make_shapes  # noqa: E402  (data/make_shapes.py as a module)

KINDS = ("resized", "jpeg", "cropped", "brightened")
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)
PIXEL_THRESHOLDS = (None, 0.90, 0.93, 0.96, 0.98)


@dataclass(frozen=True)
class Entry:
    """One generated file: ``group`` is its original's number (-1 for a look-alike)."""

    name: str
    group: int
    kind: str  # original, a copy kind, or lookalike


def photo(rng: np.random.Generator, grid: np.ndarray | None = None) -> Image.Image:
    """A photo-like 320×240 picture: a smooth field through a coarse colour grid, grain."""
    grid = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8) if grid is None else grid
    base = Image.fromarray(grid).resize((320, 240), Image.Resampling.BICUBIC)
    grain = rng.integers(-12, 13, (240, 320, 3))
    return Image.fromarray(np.clip(np.asarray(base, np.int16) + grain, 0, 255).astype(np.uint8))


def copy_of(image: Image.Image, kind: str, rng: random.Random) -> tuple[Image.Image, str]:
    """A near-duplicate of ``image`` and the format to save it in."""
    w, h = image.size
    if kind == "resized":
        s = rng.uniform(0.5, 0.8)
        return image.resize((round(w * s), round(h * s)), Image.Resampling.LANCZOS), "PNG"
    if kind == "jpeg":
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=rng.randint(30, 60))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), "PNG"
    if kind == "cropped":
        fx, fy = rng.uniform(0.03, 0.10), rng.uniform(0.03, 0.10)
        left, top = round(w * fx * rng.random()), round(h * fy * rng.random())
        right, bottom = left + w - round(w * fx), top + h - round(h * fy)
        return image.crop((left, top, right, bottom)), "PNG"
    if kind == "brightened":
        return ImageEnhance.Brightness(image).enhance(rng.uniform(1.15, 1.35)), "PNG"
    raise ValueError(kind)


def make_set(out: Path, originals: int, seed: int = 0) -> list[Entry]:
    """Write the set's files under ``out`` and return what each one is."""
    shapes = load_make_shapes()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    entries: list[Entry] = []

    def save(image: Image.Image, name: str, fmt: str, group: int, kind: str) -> None:
        image.save(out / name, fmt)
        entries.append(Entry(name, group, kind))

    for g in range(originals):
        nprng = np.random.default_rng(seed * 100_003 + g)
        if g % 2 == 0:
            sample = shapes.make_sample(seed, g, size=128)
            image = sample.image
            twin, _ = shapes.render_scene(sample.scene, random.Random(rng.random()), 128)
        else:
            grid = nprng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
            image = photo(nprng, grid)
            twin = photo(nprng, np.roll(grid, (1, 2), axis=(0, 1)))  # same colours, moved
        save(image, f"g{g:04d}_original.png", "PNG", g, "original")
        for kind in rng.sample(KINDS, rng.randint(1, len(KINDS))):
            copy, fmt = copy_of(image, kind, rng)
            save(copy, f"g{g:04d}_{kind}.{fmt.lower()}", fmt, g, kind)
        save(twin, f"g{g:04d}_lookalike.png", "PNG", -1, "lookalike")
    return entries


def true_pairs(entries: list[Entry], root: Path) -> set[tuple[str, str]]:
    groups: dict[int, list[str]] = {}
    for e in entries:
        if e.group >= 0:
            groups.setdefault(e.group, []).append(str(root / e.name))
    return {tuple(sorted(p)) for g in groups.values() for p in itertools.combinations(g, 2)}  # type: ignore[misc]


def predicted_pairs(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in itertools.combinations(g, 2)}  # type: ignore[misc]


def scores(truth: set[tuple[str, str]], predicted: set[tuple[str, str]]) -> dict[str, float]:
    hit = len(truth & predicted)
    return {
        "precision": hit / len(predicted) if predicted else 1.0,
        "recall": hit / len(truth) if truth else 1.0,
        "predicted": len(predicted),
        "true": len(truth),
    }


def sweep(index: Any, truth: set[tuple[str, str]]) -> list[dict[str, Any]]:
    """Precision/recall over (embedding threshold, pixel threshold), candidates found once."""
    from mmsearch.ann.neighbours import pairs_above
    from mmsearch.duplicates import PixelCheck, components

    keeper = index._upkeep()
    vi = index.vectors("image")
    pairs, cos = pairs_above(vi, keeper.fetch, min(THRESHOLDS))
    records = index.catalog.records(np.unique(pairs).tolist()) if len(pairs) else {}
    paths = {i: r.path for i, r in records.items()}
    check = PixelCheck(paths, 0.0)
    keys = [(int(a), int(b)) for a, b in pairs]
    started = time.perf_counter()
    pixel = check.scores(keys) if keys else {}
    pixel_seconds = time.perf_counter() - started
    rows = []
    for t, pt in itertools.product(THRESHOLDS, PIXEL_THRESHOLDS):
        kept = [
            k
            for k, c in zip(keys, cos, strict=True)
            if c >= t and (pt is None or (pixel[k] is not None and pixel[k] >= pt))
        ]
        groups = [[paths[i] for i in g] for g in components(kept)]
        row = {"threshold": t, "pixel_threshold": pt, **scores(truth, predicted_pairs(groups))}
        rows.append(row)
    rows.append({"candidates": len(keys), "pixel_seconds": round(pixel_seconds, 2)})
    return rows


def run_model(model: str, files: Path, truth: set[tuple[str, str]], work: Path) -> dict[str, Any]:
    from mmsearch import Index

    with Index.open(work / f"idx-{Path(model).name}", model=model, device="cpu") as index:
        started = time.perf_counter()
        index.add_images([files])
        indexed = time.perf_counter() - started
        started = time.perf_counter()
        groups = index.duplicates()
        seconds = time.perf_counter() - started
        default = scores(truth, predicted_pairs([[i.path for i in g.items] for g in groups]))
        table = sweep(index, truth)
    return {
        "model": model,
        "default": {**default, "seconds": round(seconds, 2), "groups": len(groups)},
        "index_seconds": round(indexed, 1),
        "sweep": table,
    }


def print_table(result: dict[str, Any]) -> None:
    from mmsearch.duplicates import DEFAULT_THRESHOLD
    from mmsearch.nearcopy import DEFAULT_PIXEL_THRESHOLD

    print(f"defaults: threshold {DEFAULT_THRESHOLD}, pixel threshold {DEFAULT_PIXEL_THRESHOLD}")
    for run in result["runs"]:
        d = run["default"]
        print(
            f"\n{run['model']}: default precision {d['precision']:.3f} recall {d['recall']:.3f}"
            f" ({d['groups']} groups, {d['seconds']} s)"
        )
        print("threshold  pixel   precision  recall  pairs")
        for row in run["sweep"]:
            if "threshold" not in row:
                print(f"  candidates {row['candidates']}, pixel check {row['pixel_seconds']} s")
                continue
            pt = "-" if row["pixel_threshold"] is None else f"{row['pixel_threshold']:.2f}"
            print(
                f"{row['threshold']:9.2f}  {pt:>5}  {row['precision']:9.3f}  {row['recall']:6.3f}"
                f"  {row['predicted']:5d}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--originals", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="mmsearch-tiny", help="comma-separated")
    parser.add_argument(
        "--shapes-model",
        default=os.environ.get("MMSEARCH_TEST_SHAPES_MODEL"),
        help="directory of the fine-tuned shapes model (README demo)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmsearch-bench-dups"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("MMSEARCH_DEVICE", "cpu")
    work = args.workdir / f"n{args.originals}-s{args.seed}-{int(time.time())}"
    files = work / "files"
    entries = make_set(files, args.originals, args.seed)
    truth = true_pairs(entries, files.resolve())
    models = [m for m in args.models.split(",") if m]
    if args.shapes_model:
        models.append(args.shapes_model)
    counts = {k: sum(e.kind == k for e in entries) for k in ("original", *KINDS, "lookalike")}
    result = {
        "originals": args.originals,
        "seed": args.seed,
        "files": len(entries),
        "counts": counts,
        "load": os.getloadavg(),
        "runs": [run_model(m, files.resolve(), truth, work) for m in models],
    }
    print(f"{len(entries)} files: {counts}; true pairs {len(truth)}")
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
