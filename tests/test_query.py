"""The query language: term parsing, weights, escapes, filters, and the vector sum."""

from __future__ import annotations

import numpy as np
import pytest

from mmsearch.errors import QueryError
from mmsearch.query import Filters, Query, Term, parse_date, parse_term
from mmsearch.search import combine


def test_terms_kinds_weights_and_escapes(tmp_path):
    photo = tmp_path / "q.jpg"
    photo.write_bytes(b"x")
    assert parse_term("a red car") == Term("text", "a red car", 1.0)
    assert parse_term("2:golden retriever") == Term("text", "golden retriever", 2.0)
    assert parse_term("-0.5:grass") == Term("text", "grass", -0.5)
    assert parse_term(".5:grass") == Term("text", "grass", 0.5)
    assert parse_term("grass", sign=-1) == Term("text", "grass", -1.0)
    assert parse_term("3:grass", sign=-1) == Term("text", "grass", -3.0)
    assert parse_term("img:some/where.jpg") == Term("image", "some/where.jpg")
    assert parse_term("image:x.png") == Term("image", "x.png")
    assert parse_term(str(photo)) == Term("image", str(photo))  # an existing file
    assert parse_term("id:42") == Term("item", "42") and parse_term("id:42").item_id == 42
    assert parse_term("2:img:x.jpg") == Term("image", "x.jpg", 2.0)
    # A literal text that looks like a prefix or a weight, or names an existing file:
    assert parse_term("text:id:42") == Term("text", "id:42")
    assert parse_term("\\3:10 to Yuma") == Term("text", "3:10 to Yuma")
    assert parse_term("2:text:3:10 to Yuma") == Term("text", "3:10 to Yuma", 2.0)
    assert parse_term("text:" + str(photo)) == Term("text", str(photo))
    # A colon that is no known prefix stays in the text.
    assert parse_term("note: a dog") == Term("text", "note: a dog")
    assert parse_term("12:30 lunch").weight == 12.0  # documented: escape such texts


@pytest.mark.parametrize("bad", ["", "   ", "2:", "id:abc", "id:", "img:"])
def test_bad_terms_are_refused(bad):
    with pytest.raises(QueryError):
        parse_term(bad)


def test_query_parse_and_round_trip():
    q = Query.parse("a red circle", add=("0.5:img:x.png",), sub=("red",))
    assert [t.weight for t in q.terms] == [1.0, 0.5, -1.0]
    q = q.with_filters(Filters(extensions=("jpg",), after=parse_date("2023-01-01"), tags=("dog",)))
    assert Query.from_dict(q.to_dict()) == q
    assert Filters.from_dict({"after": "2023-01-01"}).after == parse_date("2023-01-01")
    with pytest.raises(QueryError):
        Query(())
    with pytest.raises(QueryError):
        parse_date("last tuesday")


def test_filters_selectivity_flags_and_globs():
    assert not Filters().selects_items and not Filters(min_score=0.2).selects_items
    assert Filters(tags=("dog",)).selects_items and Filters(after=0.0).selects_items
    assert Filters(path_glob="2023/*").glob() == "*/2023/*"
    assert Filters(path_glob="/home/*.jpg").glob() == "/home/*.jpg"
    assert Filters(extensions=("JPG", ".png")).normalised_extensions() == (".jpg", ".png")


def test_combine_weights_and_normalises():
    a, b = np.eye(4, dtype=np.float32)[:2]
    v = combine(np.stack([a, b]), [3.0, 1.0])
    assert np.isclose(np.linalg.norm(v), 1.0) and v[0] == pytest.approx(3 / np.sqrt(10))
    v = combine(np.stack([a, b]), [1.0, -1.0])
    assert v[0] > 0 > v[1]
    with pytest.raises(QueryError, match="cancel"):
        combine(np.stack([a, a]), [1.0, -1.0])
