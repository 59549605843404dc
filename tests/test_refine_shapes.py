"""Refinement must pay on the shapes domain: simulated users (``bench/refine.py``) who start
with a vague query (the target caption without its colours) and mark the shown hits with
the target caption as *more* and the others as *less* see precision@10 rise by at least
0.2 after three rounds, averaged over 50 target captions, with the README's fine-tuned
tiny model (the ``shapes_model`` fixture)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from conftest import ROOT

import mmsearch

#: Least gain of precision@10 from round 0 to round 3 asserted (the issue's bar):
#: ``bench/refine.py`` gives +0.263 on its 60 captions (README); this corpus (seed 3) passes too.
MIN_GAIN = 0.2


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_refine", ROOT / "bench" / "refine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 2,000 images to generate and index: ~1 min of CPU (measured 08:40, load 16)
def test_feedback_lifts_precision_on_shapes(
    shapes_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Queries through torch: no ONNX export of this model (seconds this test need not pay).
    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")
    bench = load_bench()
    model_dir, _, _ = shapes_model
    corpus = bench.build(tmp_path, model_dir, captions=50, per_caption=40, distractors=0, seed=3)
    with mmsearch.Index.open(corpus.index_dir) as index:
        result = bench.simulate(index, corpus, rounds=3, k=10)
    precision = result["precision_feedback"]
    assert result["captions"] == 50
    assert precision[3] - precision[0] >= MIN_GAIN, result
    # Without feedback the same query shows the same hits every round.
    same = result["precision_same_query"]
    assert same[3] == same[0] == precision[0]
    assert result["success_feedback"][3] >= result["success_feedback"][0]
