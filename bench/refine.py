"""Conversational search on the shapes domain: refinement with simulated users (``refine``)
and near-duplicate detection (``dups``, added beside it).

    python bench/refine.py refine --model /path/to/shapes-model --json bench/results/refine.json
    python bench/refine.py refine --model DIR --grid          # measure the Rocchio weights

``refine``: a corpus of generated shape images (``data/make_shapes.py``'s renderer) holds
``--per-caption`` images of each of ``--captions`` distinct target captions (every single
and count caption of the grammar, then pair captions drawn with the seed) and
``--distractors`` random scenes, indexed with the README's fine-tuned tiny model. For each
target caption a simulated user starts a session with a vague query, the caption without
its colours ("two circles" for "two red circles": the fine-tuned model finds the exact
caption's images so well, precision@10 0.91, that there is little left to refine;
``--exact`` measures that start too) and, each round, marks the shown hits whose caption
is the target's as *more* and the others as *less* (``Session.refine``); marked items are
not shown again, so every round shows ten new hits. Per round 0-5: precision@10 (share of
the shown hits with the target caption) and success (at least one of them has it),
averaged over the captions, with feedback and without (the same query each round: what it
shows never changes), plus the ranks 10r+1 … 10r+10 of the plain query (what scrolling
shows instead of giving feedback).

``--text-grid`` measures follow-up texts: a single or count caption without its colour
as the query ("two circles"), then the colour ("red") as the next turn's text, for text
weights δ of 0.5, 1 and 2 (see :func:`text_followup`).

``--grid`` runs the simulation for a grid of (β, γ) with α = δ = 1 and prints precision@10
after 3 rounds for each: how the defaults of :class:`mmsearch.refine.RocchioWeights` were
chosen (on a corpus of another ``--seed`` than the reported run).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import load_make_shapes  # noqa: E402  (data/make_shapes.py as a module)

import mmsearch  # noqa: E402
from mmsearch.refine import RocchioWeights  # noqa: E402

# -- refinement ----------------------------------------------------------------------------


def target_captions(n: int, seed: int) -> list[Any]:
    """``n`` distinct scenes: every single and count caption, then pair captions drawn
    with ``seed`` (``make_shapes.Scene`` objects)."""
    ms = load_make_shapes()
    scenes = [
        ms.Scene((ms.Group(count, colour, shape),))
        for count in (1, 2, 3)
        for colour in ms.COLOURS
        for shape in ms.SHAPES
    ]
    rng = random.Random(seed)
    seen = {s.caption for s in scenes}
    while len(scenes) < n:
        scene = ms.sample_scene(rng, {"pair": 1.0})
        if scene.caption not in seen:
            seen.add(scene.caption)
            scenes.append(scene)
    return scenes[:n] if n < len(scenes) else scenes


def make_corpus(
    out: Path, captions: int, per_caption: int, distractors: int, seed: int, size: int = 64
) -> Path:
    """Write the corpus's images and ``pairs.csv`` (image, caption) under ``out``."""
    ms = load_make_shapes()
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for t, scene in enumerate(target_captions(captions, seed)):
        for j in range(per_caption):
            rng = random.Random(f"{seed}:{t}:{j}")
            image, _ = ms.render_scene(scene, rng, size)
            rows.append((f"images/t{t:03d}_{j:03d}.png", scene.caption, image))
    for i in range(distractors):
        sample = ms.make_sample(seed + 1000, i, size)
        rows.append((f"images/d{i:05d}.png", sample.caption, sample.image))
    with (out / "pairs.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image", "caption"])
        for rel, caption, image in rows:
            image.save(out / rel, format="PNG")
            writer.writerow([rel, caption])
    return out / "pairs.csv"


class Corpus(NamedTuple):
    """An indexed corpus: the index directory, each item's caption, the targets."""

    index_dir: Path
    caption_of: dict[int, str]
    targets: list[str]


def build(
    work: Path,
    model: str | os.PathLike[str],
    captions: int,
    per_caption: int,
    distractors: int,
    seed: int,
) -> Corpus:
    """Generate and index the corpus under ``work`` (reused when it is there already)."""
    tag = f"c{captions}_p{per_caption}_d{distractors}_s{seed}"
    data, index_dir = work / f"shapes_{tag}", work / f"index_{tag}"
    if not (data / "pairs.csv").exists():
        make_corpus(data, captions, per_caption, distractors, seed)
    with mmsearch.Index.open(index_dir, model=model) as index:
        if index.catalog.count("image") == 0:
            index.add_images([data / "images"])
        by_path = {r.path: r.id for r in index.catalog.image_files()}
    with (data / "pairs.csv").open() as f:
        caption_of = {
            by_path[str((data / row["image"]).resolve())]: row["caption"]
            for row in csv.DictReader(f)
        }
    targets = [s.caption for s in target_captions(captions, seed)]
    return Corpus(index_dir, caption_of, targets)


def simulate(
    index: Any,
    corpus: Corpus,
    rounds: int = 5,
    k: int = 10,
    weights: RocchioWeights | None = None,
    targets: Sequence[str] | None = None,
    start: str = "vague",
) -> dict[str, Any]:
    """Run the simulated users; returns per-round means (see the module docstring).

    ``start``: what the user first types: ``"vague"`` (the target caption without its
    colours, :func:`vague`) or ``"caption"`` (the target caption itself)."""
    chosen = list(targets or corpus.targets)
    curves: dict[str, list[list[float]]] = {
        name: [[] for _ in range(rounds + 1)]
        for name in (
            "precision_feedback",
            "success_feedback",
            "precision_same_query",
            "success_same_query",
            "precision_next_page",
            "success_next_page",
        )
    }
    for n, caption in enumerate(chosen):
        session = index.session(f"bench-{os.getpid()}-{n}")  # unique: runs may share an index
        typed = vague(caption) if start == "vague" else caption
        hits = session.query(typed, k=k, weights=weights)
        first = hits
        deep = index.search(typed, k=k * (rounds + 1))
        for r in range(rounds + 1):
            if r:
                relevant = [h.id for h in hits if corpus.caption_of[h.id] == caption]
                others = [h.id for h in hits if corpus.caption_of[h.id] != caption]
                hits = session.refine(more=relevant, less=others)
            for name, shown in (
                ("feedback", hits),
                ("same_query", first),
                ("next_page", deep[r * k : (r + 1) * k]),
            ):
                good = sum(corpus.caption_of[h.id] == caption for h in shown)
                curves[f"precision_{name}"][r].append(good / k)
                curves[f"success_{name}"][r].append(float(good > 0))
        session.drop()
    return {
        "captions": len(chosen),
        "start": start,
        **{name: [round(sum(v) / len(v), 4) for v in per] for name, per in curves.items()},
    }


def vague(caption: str) -> str:
    """The caption without its colour words: "two red circles left of a blue square" →
    "two circles left of a square" (what a user who has not said everything types)."""
    colours = set(load_make_shapes().COLOURS)
    return " ".join(w for w in caption.split() if w not in colours)


def grid(
    index: Any,
    corpus: Corpus,
    rounds: int,
    k: int,
    betas: Sequence[float] = (0.25, 0.5, 1.0, 2.0),
    gammas: Sequence[float] = (0.0, 0.25, 0.5),
) -> list[dict[str, Any]]:
    """Precision@10 after 3 rounds for a grid of (β, γ), α = δ = 1."""
    rows = []
    for beta, gamma in itertools.product(betas, gammas):
        weights = RocchioWeights(alpha=1.0, beta=beta, gamma=gamma)
        result = simulate(index, corpus, min(rounds, 3), k, weights)
        rows.append(
            {
                "beta": beta,
                "gamma": gamma,
                "precision_round3": result["precision_feedback"][3],
                "success_round3": result["success_feedback"][3],
            }
        )
        print(f"beta {beta:<5} gamma {gamma:<5} P@10 r3 {rows[-1]['precision_round3']:.3f}")
    return rows


def text_followup(
    index: Any, corpus: Corpus, weights: Sequence[float], k: int = 10
) -> dict[str, Any]:
    """A follow-up text instead of marks: start with a single or count caption without its
    colour ("two circles"), then say the colour ("red") as the next turn's text. Returns
    precision@10 of the partial query, of the turn after the follow-up for each text weight
    δ, and of the full caption as a query (the reference)."""
    ms = load_make_shapes()
    targets = [c for c in corpus.targets if " left of " not in c and " above " not in c]
    rows: dict[str, list[float]] = {"partial": [], "full": []}
    for caption in targets:
        group = ms.parse_caption(caption).groups[0]
        plural = "" if group.count == 1 else "s"
        partial = f"{ms.NUMBERS[group.count]} {group.shape}{plural}"

        def precision(hits: list[Any], caption: str = caption) -> float:
            return sum(corpus.caption_of[h.id] == caption for h in hits) / k

        rows["full"].append(precision(index.search(caption, k=k)))
        for delta in weights:
            session = index.session(f"bench-text-{os.getpid()}")
            hits = session.query(partial, k=k, weights=RocchioWeights(text=delta))
            if delta == weights[0]:
                rows["partial"].append(precision(hits))
            rows.setdefault(f"followup_text_weight_{delta:g}", []).append(
                precision(session.refine(text=group.colour))
            )
            session.drop()
    return {
        "captions": len(targets),
        **{name: round(sum(v) / len(v), 4) for name, v in rows.items()},
    }


def run_refine(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("MMSEARCH_CACHE", str(args.work / "cache"))
    t0 = time.perf_counter()
    corpus = build(
        args.work, args.model, args.captions, args.per_caption, args.distractors, args.seed
    )
    built = time.perf_counter() - t0
    weights = RocchioWeights(args.alpha, args.beta, args.gamma, args.text_weight)
    out: dict[str, Any] = {
        "benchmark": "refine",
        "model": str(args.model),
        "corpus": {
            "captions": args.captions,
            "per_caption": args.per_caption,
            "distractors": args.distractors,
            "images": len(corpus.caption_of),
            "seed": args.seed,
        },
        "k": args.k,
        "rounds": args.rounds,
        "weights": weights.to_dict(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "build_seconds": round(built, 1),
    }
    with mmsearch.Index.open(corpus.index_dir) as index:
        if args.grid:
            out["grid"] = grid(
                index, corpus, args.rounds, args.k, args.grid_betas, args.grid_gammas
            )
        t0 = time.perf_counter()
        out["result"] = simulate(index, corpus, args.rounds, args.k, weights, start="vague")
        out["simulate_seconds"] = round(time.perf_counter() - t0, 1)
        print_table(out["result"])
        if args.exact:
            out["result_exact_caption"] = simulate(
                index, corpus, args.rounds, args.k, weights, start="caption"
            )
            print_table(out["result_exact_caption"])
        if args.text_grid:
            out["text_followup"] = text_followup(index, corpus, (0.5, 1.0, 2.0), args.k)
            print("follow-up text:", json.dumps(out["text_followup"]))
    out["load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return out


def print_table(result: dict[str, Any]) -> None:
    print(f"{result['captions']} target captions, first query: {result['start']}")
    print("round  P@10 feedback  P@10 same query  P@10 next page  "
          "success feedback  success same  success next page")  # fmt: skip
    for r in range(len(result["precision_feedback"])):
        print(
            f"{r:>5}  {result['precision_feedback'][r]:>13.3f}  "
            f"{result['precision_same_query'][r]:>15.3f}  "
            f"{result['precision_next_page'][r]:>14.3f}  "
            f"{result['success_feedback'][r]:>16.3f}  {result['success_same_query'][r]:>12.3f}  "
            f"{result['success_next_page'][r]:>17.3f}"
        )


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(","))


def add_refine_args(p: argparse.ArgumentParser) -> None:
    defaults = RocchioWeights()
    p.add_argument("--model", type=Path, required=True, help="the fine-tuned shapes model dir")
    p.add_argument("--work", type=Path, default=Path("/tmp/mmsearch-bench-refine"))
    p.add_argument("--captions", type=int, default=60)
    p.add_argument("--per-caption", type=int, default=40)
    p.add_argument("--distractors", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--alpha", type=float, default=defaults.alpha)
    p.add_argument("--beta", type=float, default=defaults.beta)
    p.add_argument("--gamma", type=float, default=defaults.gamma)
    p.add_argument("--text-weight", type=float, default=defaults.text)
    p.add_argument("--grid", action="store_true", help="also measure a grid of (beta, gamma)")
    p.add_argument("--exact", action="store_true",
                   help="also simulate users whose first query is the exact caption")  # fmt: skip
    p.add_argument("--grid-betas", type=_floats, default=(0.25, 0.5, 1.0, 2.0))
    p.add_argument("--grid-gammas", type=_floats, default=(0.0, 0.25, 0.5))
    p.add_argument("--text-grid", action="store_true",
                   help="also measure follow-up texts for text weights 0.5, 1, 2")  # fmt: skip
    p.add_argument("--json", type=Path, help="write the results here")


# -- commands ------------------------------------------------------------------------------

#: Subcommands: name → (add its arguments, run it). The near-duplicates half of the
#: benchmark adds ``"dups"`` here.
COMMANDS = {"refine": (add_refine_args, run_refine)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name))
    args = parser.parse_args(argv)
    out = COMMANDS[args.command][1](args)
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
