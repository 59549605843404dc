"""The README's "Other languages" demo (slow): an index built with the English fine-tuned
shapes model is taught Chinese on its frozen image tower; Chinese queries then find the
right images on held-out captions, the untaught English tower does not, and the index's
image vectors stay byte-identical."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import load_make_shapes
from test_languages import _vector_fingerprint

from mmsearch.cli import cli

ms = load_make_shapes()

# Index and teaching set: 2,000 images the model was not fine-tuned on (seed 1; the model
# saw seed 0), with English and Chinese captions of the same scenes.
N_IMAGES = 2000


@pytest.mark.slow
def test_teach_chinese_to_an_english_index(tmp_path, shapes_model):
    model_dir = shapes_model[0]
    pairs = ms.make_shapes(tmp_path / "shapes", N_IMAGES, seed=1, lang="en,zh")
    index = str(tmp_path / "idx")
    runner = CliRunner()

    def run(*args: str) -> str:
        done = runner.invoke(cli, list(args))
        assert done.exit_code == 0, done.output
        return done.stdout

    run("-q", "index", "--index", index, "--model", str(model_dir), str(pairs.parent / "images"))
    before = _vector_fingerprint(tmp_path / "idx")
    zh = json.loads(
        run("-q", "language", "add", "zh", str(pairs), "--caption-column", "caption_zh",
            "--index", index, "--json")
    )  # fmt: skip
    assert _vector_fingerprint(tmp_path / "idx") == before
    assert zh["reused_vectors"] == N_IMAGES and zh["encoded_images"] == 0

    # The same held-out images with their English captions, through the main tower.
    from mmsearch.finetune.language import LanguageConfig  # the split's settings

    en = _english_heldout(tmp_path, pairs, model_dir, LanguageConfig())
    print(
        f"held-out text→image R@1: English (main tower) {en['t2i_r1']}, Chinese through "
        f"the main tower {zh['main_heldout']['t2i_r1']}, Chinese taught {zh['heldout']['t2i_r1']}"
        f" ({zh['train_pairs']} pairs, {zh['seconds']} s, context {zh['context_length']})"
    )
    # Measured (1,800 pairs trained, 200 held out, 30 epochs = 210 steps): English 0.83;
    # Chinese through the English tower 0.02; taught 0.83 (image→text 0.755). 1,960 s of
    # training on 2 cores under a load of 15-29 (7.7 CPU-minutes for the whole test).
    assert zh["heldout"]["t2i_r1"] >= 0.5
    assert zh["main_heldout"]["t2i_r1"] <= 0.15  # what fails without teaching
    assert zh["context_length"] > 32  # the pair captions need more than the model's 32

    # End to end: a Chinese query finds red circles (detected: Han characters).
    out = json.loads(run("query", "--index", index, "一个红色的圆形", "-k", "5", "--json"))
    assert out["text_encoder"] == "zh"
    truth = _captions(pairs)
    assert [truth[h["path"]] for h in out["hits"]] == ["a red circle"] * 5
    main = json.loads(
        run("query", "--index", index, "一个红色的圆形", "-k", "5", "--json",
            "--text-encoder", "main")
    )  # fmt: skip
    assert sum(truth[h["path"]] == "a red circle" for h in main["hits"]) <= 2


def _captions(pairs) -> dict[str, str]:
    import csv

    with pairs.open(encoding="utf-8") as f:
        return {str(pairs.parent / r["image"]): r["caption_en"] for r in csv.DictReader(f)}


def _english_heldout(tmp_path, pairs, model_dir, cfg) -> dict[str, float]:
    """R@1 of the index model's own text tower on the English captions of the pairs the
    Chinese run held out (the same seeded split: the rows align)."""
    import csv

    from mmsearch.finetune import evaluate
    from mmsearch.finetune.data import split_pairs
    from mmsearch.finetune.pairs import read_pairs

    zh = read_pairs(pairs, caption_column="caption_zh").pairs
    en = {p.image: p.caption for p in read_pairs(pairs, caption_column="caption_en").pairs}
    _, val = split_pairs(zh, cfg.val_fraction, cfg.max_val, cfg.seed)
    val_csv = tmp_path / "val-en.csv"
    with val_csv.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows([p.image, en[p.image]] for p in val)
    metrics, _ = evaluate(val_csv, model=str(model_dir), device="cpu")
    return metrics
