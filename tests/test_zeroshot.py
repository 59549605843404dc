"""Zero-shot labels and the query algebra: tagging a library incrementally (10k stored
embeddings), classifying images, and — with the fine-tuned shapes model — accuracy far
above chance, subtraction and weighted image + text queries that rank as they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY, load_make_shapes, noise_image

from mmsearch import zeroshot
from mmsearch.catalog import Catalog
from mmsearch.cli import cli
from mmsearch.index import Index
from mmsearch.models import model_record, resolve_model
from mmsearch.query import Filters, Query, Term

TINY_DIM = 128


def _invoke(*args: str) -> dict | list:
    done = CliRunner().invoke(cli, list(args))
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def _synthetic_library(directory: Path, n: int, start: int = 0) -> None:
    """``n`` images that exist only in the catalog (their files do not): any attempt to
    decode one would fail, so tagging must use the stored embeddings."""
    rng = np.random.default_rng(start)
    x = rng.standard_normal((n, TINY_DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    with Catalog(directory / "catalog.sqlite") as cat:
        cat.claim_model(model_record(resolve_model(TINY, None), TINY_DIM))
        rows = [
            {"modality": "image", "path": f"/nowhere/{start + i}.jpg",
             "content_hash": f"h{start + i}", "embedding": v}
            for i, v in enumerate(x)
        ]  # fmt: skip
        cat.add(rows)


def test_tagging_10k_is_incremental_and_rescoring_reads_no_image(tmp_path):
    idx = tmp_path / "idx"
    _synthetic_library(idx, 10_000)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("# pets\ndog\ncat\n\nbird\ncar\n")
    tag = ["tag", "--index", str(idx), "--labels-file", str(vocab), "--json"]

    first = _invoke(*tag, "--threshold", "0", "--top", "2")
    assert first["scored"] == 10_000 and first["rescored_all"] and first["vocabulary"] == 4
    assert first["tagged"] == 10_000 and first["tags"] == 20_000
    again = _invoke(*tag, "--threshold", "0", "--top", "2")
    assert again["scored"] == 0 and not again["rescored_all"] and again["tags"] == 0

    _synthetic_library(idx, 5, start=10_000)  # five new items: only they are scored
    more = _invoke(*tag, "--threshold", "0", "--top", "2")
    assert more["scored"] == 5 and not more["rescored_all"]

    top1 = _invoke(*tag, "--threshold", "0", "--top", "1")  # settings changed: all again
    assert top1["scored"] == 10_005 and top1["rescored_all"] and top1["tags"] == 10_005
    vocab.write_text("dog\ncat\n")  # vocabulary changed: all again
    fewer = _invoke(*tag, "--threshold", "0", "--top", "1")
    assert fewer["scored"] == 10_005 and fewer["rescored_all"]
    assert fewer["vocabulary_hash"] != top1["vocabulary_hash"]

    info = _invoke("info", "--index", str(idx), "--json")
    assert set(info["tags"]) <= {"dog", "cat"} and sum(info["tags"].values()) == 10_005
    with Index.open(idx) as index:  # tags filter queries and come back in hits
        hits = index.search(Query((Term("item", "1"),), Filters(tags=("dog",))), k=20)
        assert len(hits) == 20 and all(h.tags == ("dog",) for h in hits)
        dogs = set(index.catalog.filter_ids("image", Filters(tags=("dog",))).tolist())
        assert {h.id for h in hits} <= dogs


def test_classify_cli_and_api_with_the_tiny_model(tmp_path):
    for i in range(3):
        noise_image(i).save(tmp_path / f"{i}.png")
    images = [str(tmp_path / f"{i}.png") for i in range(3)] + [str(tmp_path / "missing.png")]
    out = _invoke(
        "classify", *images, "--model", TINY, "--labels", "cat, dog,car,dog", "--json",
        "--template", "a {}", "--template", "a photo of a {}.",
    )  # fmt: skip
    assert [r["source"] for r in out] == images
    for r in out[:3]:
        assert list(r["scores"]) and set(r["scores"]) == {"cat", "dog", "car"}
        assert sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert list(r["scores"].values()) == sorted(r["scores"].values(), reverse=True)
    assert out[3]["scores"] == {} and "no such file" in out[3]["error"]
    done = CliRunner().invoke(cli, ["classify", images[0], "--model", TINY, "--labels", "a",
                                    "--template", "no placeholder"])  # fmt: skip
    assert done.exit_code == 5 and "{}" in done.output


def test_label_vectors_average_prompts():
    class Fake:
        logit_scale = 10.0
        image_size = 8

        def encode_texts(self, texts):
            table = {"a x": [1.0, 0.0], "the x": [0.0, 1.0], "a y": [1.0, 0.0], "the y": [1, 0]}
            return np.array([table[t] for t in texts], dtype=np.float32)

    vecs = zeroshot.label_vectors(Fake(), ["x", "y"], ["a {}", "the {}"])
    np.testing.assert_allclose(vecs, [[2**-0.5, 2**-0.5], [1.0, 0.0]], atol=1e-6)
    probs = zeroshot.probabilities(np.array([[1.0, 0.0]]), vecs, 10.0)
    assert probs[0, 1] > probs[0, 0] and probs.sum() == pytest.approx(1.0)


# -- the fine-tuned shapes model --------------------------------------------------------

HELD_OUT_SEED = 1  # the model was fine-tuned on seed 0's pairs


def _held_out(n: int, seed: int = HELD_OUT_SEED):
    shapes = load_make_shapes()
    samples = [shapes.make_sample(seed, i, kinds={"single": 1.0}) for i in range(n)]
    return shapes, samples


def _accuracy(encoder, samples, labels, truth, templates) -> float:
    results = zeroshot.classify(encoder, [s.image for s in samples], labels, templates)
    return float(np.mean([r.label == t for r, t in zip(results, truth, strict=True)]))


@pytest.mark.slow
def test_zero_shot_colour_and_shape_on_held_out_shapes(shapes_model):
    from mmsearch.encoder import Encoder

    shapes, samples = _held_out(500)
    colours, kinds = list(shapes.COLOURS), list(shapes.SHAPES)
    colour = [s.scene.groups[0].colour for s in samples]
    shape = [s.scene.groups[0].shape for s in samples]
    # The captions say "a red circle": a template in that grammar, averaged over the other
    # attribute (prompt ensembling), names one attribute the way training named it.
    colour_templates = [f"a {{}} {k}" for k in kinds]
    shape_templates = [f"a {c} {{}}" for c in colours]
    accuracies = {}
    for name, model in (("tuned", shapes_model[0]), ("random", TINY)):
        encoder = Encoder.load(model, device="cpu")
        accuracies[name] = (
            _accuracy(encoder, samples, colours, colour, colour_templates),
            _accuracy(encoder, samples, kinds, shape, shape_templates),
        )
    print("zero-shot accuracy (colour, shape):", accuracies)
    # Measured on 500 held-out images with the README's demo model (18 epochs, seed 0):
    # colour 1.000, shape 0.938 with these templates ("{}s": 0.80, "a {} shape": 0.866).
    # With the earlier 9-epoch recipe shape reached only 0.754 (squares taken for circles:
    # the model's shape vision was the limit, not the prompts), hence the longer recipe.
    assert accuracies["tuned"][0] >= 0.8 and accuracies["tuned"][1] >= 0.8, accuracies
    # Chance is 0.2 / 0.33; the random-initialised model stays near it.
    assert accuracies["random"][0] < 0.4 and accuracies["random"][1] < 0.5, accuracies


@pytest.fixture(scope="module")
def shapes_index(shapes_model, tmp_path_factory):
    """300 held-out single-shape images indexed with the fine-tuned model, and each
    image's (colour, shape) by path."""
    tmp = tmp_path_factory.mktemp("shapes-index")
    _, samples = _held_out(300, seed=2)
    truth = {}
    (tmp / "images").mkdir()
    for i, s in enumerate(samples):
        path = tmp / "images" / f"{i:04d}.png"
        s.image.save(path)
        truth[str(path)] = (s.scene.groups[0].colour, s.scene.groups[0].shape)
    index = Index.open(tmp / "idx", model=shapes_model[0], device="cpu")
    index.add_images([tmp / "images"])
    yield index, truth
    index.close()


@pytest.mark.slow
def test_subtracting_a_colour_ranks_other_colours_first(shapes_index):
    index, truth = shapes_index
    n = len(truth)
    plain = [truth[h.path] for h in index.search("a red circle", k=n)]
    minus = [truth[h.path] for h in index.search(Query.parse("a red circle", sub=("red",)), k=n)]
    circles = [rank for rank, (_, s) in enumerate(minus) if s == "circle"]

    def mean_rank(ranking, red: bool) -> float:
        return float(np.mean([r for r, (c, s) in enumerate(ranking) if s == "circle"
                              and (c == "red") == red]))  # fmt: skip

    assert plain[0] == ("red", "circle")  # without the subtraction red circles lead
    assert mean_rank(plain, red=True) < mean_rank(plain, red=False)
    assert mean_rank(minus, red=False) < mean_rank(minus, red=True)  # and now they trail
    top = minus[:10]
    assert all(c != "red" for c, _ in top), top
    assert sum(s == "circle" for _, s in top) >= 6, top
    assert circles  # the ranking still holds circles


@pytest.mark.slow
def test_weighted_image_and_text_terms_rank_by_their_weights(shapes_index):
    """A blue square's image plus the text "a red circle": the heavier term wins the top
    of the ranking, and shifting weight from one to the other shifts the hits with it.
    (Image likeness is mostly colour for this model: blue circles count as near a blue
    square, so the image side is judged by colour.)"""
    index, truth = shapes_index
    square = next(p for p, t in truth.items() if t == ("blue", "square"))
    blue, red_circles = [], []
    for image_weight, text_weight in ((3.0, 1.0), (1.0, 1.0), (1.0, 3.0)):
        query = Query((Term("image", square, image_weight), Term("text", "a red circle",
                                                                 text_weight)))  # fmt: skip
        hits = index.search(query, k=10)
        assert square not in {h.path for h in hits}  # the query image is not its own hit
        top = [truth[h.path] for h in hits]
        blue.append(sum(c == "blue" for c, _ in top))
        red_circles.append(sum(t == ("red", "circle") for t in top))
    print("blue hits", blue, "red circles", red_circles)
    assert blue[0] >= 8 and red_circles[0] <= 2, (blue, red_circles)
    assert red_circles[2] >= 7 and blue[2] <= 2, (blue, red_circles)
    assert blue[0] >= blue[1] >= blue[2] and red_circles[0] <= red_circles[1] <= red_circles[2]
