"""Compound queries: the parser, the score combinations, and explain end to end (Python
API, CLI, HTTP); on the shapes domain, the part-wise ranking against the plain query."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, load_make_shapes

from mmsearch.compound import combine_scores
from mmsearch.errors import QueryError
from mmsearch.explain import parse_compound


def _parts(text: str, relations: str = "keep") -> list[tuple[str, bool]]:
    return [(p.text, p.negative) for p in parse_compound(text, relations).parts]


@pytest.mark.parametrize(
    ("query", "parts", "whole"),
    [
        ("a red circle", [("a red circle", False)], "a red circle"),
        ("  a   red circle. ", [("a red circle", False)], "a red circle"),
        (
            "a red circle and a blue square",
            [("a red circle", False), ("a blue square", False)],
            "a red circle and a blue square",
        ),
        (
            "a dog, a cat; a bird",
            [("a dog", False), ("a cat", False), ("a bird", False)],
            "a dog, a cat; a bird",
        ),
        ("a dog with a ball", [("a dog", False), ("a ball", False)], "a dog with a ball"),
        ("a beach without people", [("a beach", False), ("people", True)], "a beach"),
        ("a beach with no people", [("a beach", False), ("people", True)], "a beach"),
        ("a cat, not black", [("a cat", False), ("black", True)], "a cat"),
        ("a dog but not a cat", [("a dog", False), ("a cat", True)], "a dog"),
        (
            "a red circle and not a blue square",
            [("a red circle", False), ("a blue square", True)],
            "a red circle",
        ),  # noqa: E501
        (
            "a dog without a leash and a ball",
            [("a dog", False), ("a leash", True), ("a ball", False)],
            "a dog and a ball",
        ),
        ("Sunset AND Sea", [("Sunset", False), ("Sea", False)], "Sunset AND Sea"),
        (
            "a dog & a cat plus a bird",
            [("a dog", False), ("a cat", False), ("a bird", False)],
            "a dog & a cat plus a bird",
        ),  # fmt: skip
        (
            "a red circle and a red circle",
            [("a red circle", False)],
            "a red circle and a red circle",
        ),  # noqa: E501
        # words that merely contain a separator are not split
        ("a notebook on a sandy shore", [("a notebook on a sandy shore", False)], None),
        ("a snowman in the noon light", [("a snowman in the noon light", False)], None),
    ],
)
def test_parser_splits_conjunctions_and_negations(query, parts, whole):
    compound = parse_compound(query)
    assert [(p.text, p.negative) for p in compound.parts] == parts
    assert compound.whole == (whole if whole is not None else parts[0][0])


@pytest.mark.parametrize(
    "relation", ["left of", "right of", "to the left of", "above", "below", "next to", "under"]
)
def test_relations_kept_split_or_reduced_to_objects(relation):
    query = f"two red circles {relation} a blue square"
    keep = parse_compound(query, "keep").parts
    assert [(p.text, p.relation) for p in keep] == [(query, relation)]
    assert _parts(query, "split") == [
        ("two red circles", False),
        (f"{relation} a blue square", False),
    ]  # noqa: E501
    assert _parts(query, "objects") == [("two red circles", False), ("a blue square", False)]
    # the whole query always keeps the relation
    assert parse_compound(query, "objects").whole == query


def test_relation_with_more_parts_and_a_negation():
    query = "a red circle above a green square, with a yellow triangle, without purple"
    assert _parts(query) == [
        ("a red circle above a green square", False),
        ("a yellow triangle", False),
        ("purple", True),
    ]
    assert _parts(query, "split")[:2] == [("a red circle", False), ("above a green square", False)]
    whole = "a red circle above a green square, with a yellow triangle"
    assert parse_compound(query).whole == whole


@pytest.mark.parametrize("query", ["", "   ", "without a dog", "not red, no blue"])
def test_parser_refuses_nothing_to_look_for(query):
    with pytest.raises(QueryError):
        parse_compound(query)


def test_parser_refuses_unknown_relation_mode():
    with pytest.raises(QueryError, match="relations"):
        parse_compound("a dog", "sideways")


def test_combinations():
    whole = np.array([0.30, 0.30, 0.10])
    parts = np.array([[0.30, 0.30], [0.50, 0.05], [0.10, 0.10]])
    assert np.allclose(combine_scores(whole, parts, method="whole"), whole)
    assert np.allclose(combine_scores(whole, parts, method="mean"), [0.30, 0.85 / 3, 0.10])
    assert np.allclose(combine_scores(whole, parts, method="min"), [0.30, 0.05, 0.10])
    soft = combine_scores(whole, parts, method="softmin")
    assert soft[1] < soft[0]  # matching every part beats one great and one poor part
    assert 0.05 <= soft[1] <= combine_scores(whole, parts, method="mean")[1]
    assert np.isclose(soft[0], 0.30)  # all equal: the soft minimum is that value
    geo = combine_scores(whole, parts, method="geomean")
    assert np.isclose(geo[0], 0.30) and geo[1] < geo[0]
    # negatives: the best negative score, weighted, is subtracted
    neg = np.array([[0.2, 0.1], [0.0, 0.0], [0.4, 0.6]])
    out = combine_scores(whole, parts, neg, method="mean", negative_weight=0.5)
    assert np.allclose(out, combine_scores(whole, parts, method="mean") - [0.1, 0.0, 0.3])
    with pytest.raises(QueryError, match="combination"):
        combine_scores(whole, parts, method="median")


# -- end to end (tiny random model: plumbing, not meaning) -------------------------------


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    load_make_shapes().make_shapes(root / "shapes", n=30, seed=3)
    idx = root / "idx"
    subprocess.run(
        [sys.executable, "-m", "mmsearch", "-q", "index", "--index", str(idx), "--model", TINY,
         str(root / "shapes" / "images")],
        check=True, capture_output=True,
    )  # fmt: skip
    return idx


QUERY = "a red circle left of a blue square, with a green triangle, without yellow"


def test_explain_api_scores_every_hit_on_every_part(shapes_dir):
    from mmsearch import Index

    with Index.open(shapes_dir, create=False) as index:
        result = index.explain(QUERY, k=8, combine="mean")
        assert [p["text"] for p in result.parts] == [
            "a red circle left of a blue square",
            "a green triangle",
            "yellow",
        ]
        assert [p["negative"] for p in result.parts] == [False, False, True]
        assert len(result.hits) == 8
        texts = [result.whole] + [p["text"] for p in result.parts]
        vectors = index.query_encoder().encode_texts(texts)
        keeper = index._upkeep()
        for hit in result.hits:
            assert hit.part_scores is not None and len(hit.part_scores) == 3
            stored = keeper.fetch(np.array([hit.id]))[0]
            expect = vectors @ stored
            assert hit.query_score == pytest.approx(expect[0], abs=1e-4)
            assert list(hit.part_scores) == pytest.approx(list(expect[1:]), abs=1e-4)
            combined = (expect[0] + expect[1] + expect[2]) / 3 - 0.5 * expect[3]
            assert hit.score == pytest.approx(combined, abs=1e-4)
        scores = [h.score for h in result.hits]
        assert scores == sorted(scores, reverse=True)
        # "whole" ranks by the plain query's score (no negative part): the plain order
        plain = index.search("a red circle and a blue square", k=5)
        ranked = index.explain("a red circle and a blue square", k=5, combine="whole").hits
        assert [h.id for h in ranked] == [h.id for h in plain]


def _cli(idx: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mmsearch", "query", "--index", str(idx), *args],
        capture_output=True, text=True,
    )  # fmt: skip


def test_cli_explain_json_and_lines(shapes_dir):
    out = _cli(shapes_dir, QUERY, "--explain", "--json", "-k", "4", "--combine", "min")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["combine"] == "min"
    assert [p["negative"] for p in data["parts"]] == [False, False, True]
    assert len(data["hits"]) == 4
    for hit in data["hits"]:
        assert len(hit["part_scores"]) == 3
        assert (
            hit["score"]
            <= min(hit["query_score"], *hit["part_scores"][:2]) - 0.5 * hit["part_scores"][2] + 1e-6
        )
    lines = _cli(shapes_dir, QUERY, "--explain", "-k", "3")
    assert lines.returncode == 0, lines.stderr
    rows = lines.stdout.splitlines()
    assert len(rows) == 3
    for row in rows:
        score, path, column = row.split("\t")
        assert Path(path).is_file()
        assert column.startswith("a red circle left of a blue square=")
        assert "; a green triangle=" in column and "; -yellow=" in column
    assert "# parts:" in lines.stderr


def test_cli_explain_refuses_image_terms(shapes_dir, tmp_path):
    out = _cli(shapes_dir, "--explain", "--add", "a dog")
    assert out.returncode == 2 and "--explain" in out.stderr


def test_http_explain_param(shapes_dir):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from mmsearch.server.app import create_app
    from mmsearch.server.backend import Backend

    backend = Backend.open(shapes_dir, device="cpu")
    try:
        client = TestClient(create_app(backend), base_url="http://127.0.0.1:8765")
        res = client.get("/api/search", params={"q": QUERY, "explain": "1", "k": 5})
        assert res.status_code == 200, res.text
        body = res.json()
        assert [p["text"] for p in body["parts"]][-1] == "yellow"
        assert all(len(h["part_scores"]) == 3 for h in body["hits"])
        second = client.get(
            "/api/search", params={"q": QUERY, "explain": "1", "k": 5, "offset": 5}
        ).json()
        assert not {h["id"] for h in second["hits"]} & {h["id"] for h in body["hits"]}
        plain = client.get("/api/search", params={"q": QUERY, "k": 5}).json()
        assert plain.get("parts") is None and plain["hits"][0].get("part_scores") is None
        bad = client.get("/api/search", params={"q": "without anything", "explain": "1"})
        assert bad.status_code == 400
    finally:
        backend.close()


# -- meaning: the fine-tuned shapes model --------------------------------------------------


@pytest.mark.slow
def test_part_wise_ranking_finds_pair_captions_at_least_as_often(shapes_model, tmp_path):
    """Over 60 pair captions, an exact-caption image lands in the top 10 at least as often
    with the part-wise ranking as with the plain query (bench/explain.py measures it on a
    larger set)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import explain as bench  # bench/explain.py

    model_dir, _, _ = shapes_model
    result = bench.measure(model_dir, tmp_path, images=600, captions=60, seed=11)
    rates = result["rates"]
    assert result["captions"] >= 50
    assert rates["default"] >= rates["plain"], rates
    # The default must be the best measured ranking: splitting "A left of B" into its
    # objects lost the pair's meaning (bench, seed 7: split/mean 0.50, objects/mean 0.40,
    # against 0.95 for the relation kept whole). Should a split mode win, change the default.
    assert rates["default"] >= max(rates.values()) - 0.05, rates
    assert rates["split/mean"] < rates["default"], rates
    assert result["every_hit_scored"]
