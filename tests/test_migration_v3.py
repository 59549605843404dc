"""A catalog of schema v3, made by the code before v4 (dumped to SQL text by
``catalog_v3.sql``'s maker: 12 pictures and 5 texts with the tiny model), opens, migrates
and answers the same top-10 as it did, without encoding anything again."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import ROOT

import mmsearch
from mmsearch.catalog import SCHEMA_VERSION

FIXTURES = ROOT / "tests" / "catalog" / "fixtures"


def _v3_index(tmp_path: Path) -> Path:
    idx = tmp_path / "idx"
    idx.mkdir()
    con = sqlite3.connect(idx / "catalog.sqlite")
    con.executescript((FIXTURES / "catalog_v3.sql").read_text())
    con.commit()
    con.close()
    return idx


def _embeddings(db: Path) -> dict[int, bytes]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT id, embedding FROM items ORDER BY id"))
    finally:
        con.close()


def test_a_v3_catalog_migrates_and_answers_the_same_top_10(tmp_path: Path) -> None:
    idx = _v3_index(tmp_path)
    db = idx / "catalog.sqlite"
    before = _embeddings(db)
    assert len(before) == 17
    expected = json.loads((FIXTURES / "catalog_v3_top10.json").read_text())
    with mmsearch.Index.open(idx) as index:
        assert index.catalog.schema_version == SCHEMA_VERSION == 4
        for key, ids in expected.items():
            kind, _, value = key.partition(":")
            if kind == "id":
                hits = index.search_item(int(value), k=10)
            else:
                target = "text" if kind == "text->text" else "image"
                hits = index.search(value, k=len(ids), target=target)
            assert [h.id for h in hits] == ids, key
    assert _embeddings(db) == before  # nothing encoded again, nothing lost
