"""Fine-tuning: pair files, metrics, schedule, the training run, and the CLI commands."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, noise_image

from mmsearch import InputError, MMSearchError
from mmsearch.cli import cli
from mmsearch.encoder import Encoder
from mmsearch.finetune.data import split_pairs
from mmsearch.finetune.evaluation import METRIC_KEYS, retrieval_metrics
from mmsearch.finetune.pairs import Pair, read_pairs
from mmsearch.finetune.train import FinetuneConfig, _Trainer, finetune, lr_at
from mmsearch.status import ExitStatus


@pytest.fixture
def pairs_csv(tmp_path: Path) -> Path:
    """Twelve noise images with two captions, plus rows that must be skipped."""
    images = tmp_path / "pairs" / "img"
    images.mkdir(parents=True)
    rows = ["image,caption"]
    for i in range(12):
        noise_image(1000 + i, size=(64, 64)).save(images / f"{i}.png")
        rows.append(f"img/{i}.png,{'a red thing' if i % 2 else 'a blue thing'}")
    (images / "bad.png").write_text("not an image")
    rows += ["img/missing.png,a ghost", "img/3.png,   ", ",no image", "img/bad.png,corrupt"]
    path = tmp_path / "pairs" / "pairs.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_read_pairs_resolves_relative_paths_and_skips_bad_rows(pairs_csv):
    parsed = read_pairs(pairs_csv)
    assert len(parsed.pairs) == 13  # 12 good rows + the corrupt image (found at load time)
    assert all(Path(p.image).is_absolute() and Path(p.image).exists() for p in parsed.pairs)
    reasons = dict(parsed.skipped)
    assert reasons["row 14"].startswith("image not found")
    assert reasons["row 15"] == "empty caption"
    assert reasons["row 16"] == "no image path"


def test_read_pairs_jsonl_tsv_and_missing_column(tmp_path):
    noise_image(1).save(tmp_path / "x.png")
    (tmp_path / "p.jsonl").write_text('{"file": "x.png", "text": "a cat"}\n{oops\n[1]\n')
    parsed = read_pairs(tmp_path / "p.jsonl", image_column="file", caption_column="text")
    assert parsed.pairs == [Pair(str((tmp_path / "x.png").resolve()), "a cat")]
    assert [r for _, r in parsed.skipped] == ["not valid JSON", "not an object"]
    (tmp_path / "p.tsv").write_text("image\tcaption\nx.png\ta  dog\n")
    assert read_pairs(tmp_path / "p.tsv").pairs[0].caption == "a dog"
    with pytest.raises(InputError, match="columns: image, caption"):
        read_pairs(tmp_path / "p.tsv", caption_column="label")


def test_retrieval_metrics():
    eye = np.eye(4, dtype=np.float32)
    perfect = retrieval_metrics(eye, eye, ["a", "b", "c", "d"])
    assert all(perfect[k] == 1.0 for k in METRIC_KEYS)
    shifted = retrieval_metrics(eye, np.roll(eye, 1, axis=0), ["a", "b", "c", "d"])
    assert shifted["t2i_r1"] == 0.0 and shifted["t2i_r5"] == 1.0
    # Two images share a caption: retrieving either counts as correct.
    dup = retrieval_metrics(eye, eye[[1, 0, 2, 3]], ["a", "a", "c", "d"])
    assert dup["t2i_r1"] == 1.0


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    lrs = [lr_at(s / 100, 1.0, 0.1) for s in range(101)]
    assert 0 < lrs[0] < lrs[5] < lrs[9] < lrs[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
    floored = [lr_at(s / 100, 2.0, 0.3, 0.1) for s in range(101)]
    assert floored[30] == pytest.approx(2.0) and floored[-1] == pytest.approx(0.2)
    assert min(floored[30:]) == pytest.approx(0.2)
    assert lr_at(1.7, 2.0, 0.3, 0.1) == pytest.approx(0.2)  # past the end: stays at the floor


def test_split_is_seeded_and_disjoint():
    pairs = [Pair(f"/{i}.png", str(i)) for i in range(50)]
    train, val = split_pairs(pairs, 0.2, 1000, seed=3)
    assert (train, val) == split_pairs(pairs, 0.2, 1000, seed=3)
    assert len(val) == 10 and not set(train) & set(val)
    assert split_pairs(pairs, 0.2, 1000, seed=4)[1] != val
    with pytest.raises(MMSearchError):
        split_pairs(pairs[:2], 0.5, 1000, seed=0)


def test_finetune_saves_a_loadable_model_with_eval(tmp_path, pairs_csv):
    out = tmp_path / "model"
    result = finetune(
        pairs_csv,
        out,
        model=TINY,
        device="cpu",
        config=FinetuneConfig(epochs=2, batch_size=4, val_fraction=0.25),
    )
    assert result.steps == 2 * (result.train_pairs // 4)
    assert result.train_pairs + result.val_pairs == 12  # the corrupt image was skipped
    assert any("bad.png" in path for path, _ in result.skipped)
    report = json.loads((out / "eval.json").read_text())
    assert set(METRIC_KEYS) <= set(report["before"]) and set(METRIC_KEYS) <= set(report["after"])
    tuned = Encoder.load(out, device="cpu")
    base = Encoder.load(TINY, device="cpu")
    assert tuned.spec.identity.startswith("dir:")
    assert not np.allclose(tuned.encode_texts(["a red thing"]), base.encode_texts(["a red thing"]))


def test_time_budget_runs_the_whole_schedule(tmp_path, pairs_csv, monkeypatch):
    """With --max-seconds the schedule follows the clock: the run ends near the floor, not
    at full learning rate with most epochs left (a bug of the first version)."""
    import mmsearch.finetune.train as ft

    seen: list[float] = []

    def recording_lr_at(progress: float, *args: float) -> float:
        seen.append(progress)
        return lr_at(progress, *args)

    monkeypatch.setattr(ft, "lr_at", recording_lr_at)
    # A clock that advances 0.1 s each time it is read, so the run does not depend on how
    # fast (or how loaded) the machine is: about 15 steps fit the 3 s budget.
    ticks = itertools.count()
    monkeypatch.setattr(ft, "time", SimpleNamespace(perf_counter=lambda: next(ticks) / 10))
    cfg = FinetuneConfig(epochs=100_000, batch_size=4, val_fraction=0.25, max_seconds=3.0)
    result = finetune(pairs_csv, tmp_path / "model", model=TINY, device="cpu", config=cfg)
    assert 5 <= result.steps <= 30 and len(seen) == result.steps
    assert seen == sorted(seen) and seen[0] < 0.1 and seen[-1] > 0.9


def test_locked_towers_do_not_change(tmp_path, pairs_csv):
    out = tmp_path / "model"
    finetune(
        pairs_csv,
        out,
        model=TINY,
        device="cpu",
        config=FinetuneConfig(epochs=1, batch_size=4, lock_image=True),
    )
    base, tuned = Encoder.load(TINY, device="cpu"), Encoder.load(out, device="cpu")
    for (name, a), b in zip(
        base.model.visual.state_dict().items(),
        tuned.model.visual.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b), name
    assert not torch.equal(base.model.text_projection, tuned.model.text_projection)
    with pytest.raises(MMSearchError, match="nothing to train"):
        finetune(
            pairs_csv,
            tmp_path / "m2",
            model=TINY,
            device="cpu",
            config=FinetuneConfig(epochs=1, batch_size=4, lock_image=True, lock_text=True),
        )


def test_ctrl_c_leaves_a_usable_checkpoint(tmp_path, pairs_csv, monkeypatch):
    original = _Trainer._micro_batch
    calls = {"n": 0}

    def interrupt_on_third(self, idx):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, idx)

    monkeypatch.setattr(_Trainer, "_micro_batch", interrupt_on_third)
    out = tmp_path / "model"
    result = finetune(
        pairs_csv, out, model=TINY, device="cpu", config=FinetuneConfig(epochs=5, batch_size=2)
    )
    assert result.interrupted and result.steps == 2
    assert json.loads((out / "mmsearch_model.json").read_text())["interrupted"] is True
    Encoder.load(out, device="cpu").encode_texts(["still works"])


def test_cli_finetune_and_eval(tmp_path, pairs_csv):
    runner = CliRunner()
    out = tmp_path / "model"
    result = runner.invoke(
        cli,
        [
            "-q",
            "finetune",
            str(pairs_csv),
            "--out",
            str(out),
            "--model",
            TINY,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "before" in result.stdout and "after" in result.stdout and "t2i_r1" in result.stdout
    assert "skipped" in result.stderr
    result = runner.invoke(cli, ["eval", str(pairs_csv), "--model", str(out), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert set(METRIC_KEYS) <= set(metrics) and metrics["n"] == 12
    result = runner.invoke(
        cli, ["eval", str(pairs_csv), "--model", TINY, "--caption-column", "nope"]
    )
    assert result.exit_code == ExitStatus.INPUT and "no column 'nope'" in result.stderr
