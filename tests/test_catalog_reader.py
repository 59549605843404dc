"""The catalog reader (stdlib sqlite3, no SQLAlchemy) answers every read as the ORM
catalog does, and leaves to the ORM every catalog it cannot read as it is."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, noise_image, unit_vectors

from mmsearch import catalog_reader
from mmsearch.catalog import SCHEMA_VERSION, Catalog
from mmsearch.catalog_base import SkipRecord
from mmsearch.catalog_reader import CatalogReader
from mmsearch.config import IndexSettings
from mmsearch.errors import IndexCorruptError
from mmsearch.index import Index
from mmsearch.query import Filters

DIM = 8
ODD_NAME = os.fsdecode(b"/photos/caf\xe9-\xff.jpg")  # not UTF-8: stored as fsbytes:


def _fill(cat: Catalog) -> list[int]:
    """Images (one with an undecodable name), texts, dates, tags, skipped files, settings."""
    vecs = unit_vectors(12, DIM, seed=3)
    rows: list[dict[str, object]] = [
        {
            "modality": "image",
            "path": path,
            "size": 100 + i,
            "mtime_ns": 10**18 + i,
            "content_hash": f"h{i % 5}",  # shared hashes: one embedding per hash comes back
            "width": 64 * (i + 1),
            "height": 48 * (i + 1),
            "embedding": vecs[i],
        }
        for i, path in enumerate(
            ["/photos/a.JPG", "/photos/b.png", "/photos/sub/c.jpeg", "/other/d.jpg",
             "/photos/é/ünï.webp", ODD_NAME, "/photos/g.jpg"]
        )
    ]  # fmt: skip
    rows += [
        {
            "modality": "text",
            "text": f"caption {i}",
            "source": f"{ODD_NAME}.txt:{i}",
            "content_hash": f"t{i}",
            "embedding": vecs[7 + i],
        }
        for i in range(5)
    ]
    ids = cat.add(rows)
    cat.set_dates([(ids[0], 1000.0), (ids[1], 2000.0), (ids[2], 3000.0), (ids[6], 2500.5)])
    cat.replace_tags(
        [(ids[0], "cat", 0.9), (ids[0], "dog", 0.4), (ids[1], "cat", 0.7), (ids[2], "car", 0.5)]
    )
    cat.remember_skipped([SkipRecord("/photos/bad.jpg", 3, 7, "cannot decode")])
    cat.save_settings(IndexSettings(index_type="flat", memory_budget=10**9, recall_target=0.9))
    cat.set_model_info({"identity": "m", "display": "m", "dim": DIM})
    cat.remove([ids[3]])  # a gap in the ids, and a generation bump
    return ids


FILTERS = [
    Filters(),
    Filters(path_glob="/photos/**"),
    Filters(path_glob="*/sub/*"),
    Filters(extensions=("jpg",)),
    Filters(extensions=(".JPEG", "png")),
    Filters(after=1500.0),
    Filters(before=2600.0, after=1000.0),
    Filters(min_width=128, min_height=100),
    Filters(tags=("cat",)),
    Filters(tags=("cat", "dog")),
    Filters(path_glob=ODD_NAME),
    Filters(tags=("none",), extensions=("jpg",)),
]


def test_reader_returns_what_the_orm_returns(catalog: Catalog) -> None:
    ids = _fill(catalog)
    reader = CatalogReader.open(catalog.path)
    assert reader is not None
    with reader:
        for key in ("schema_version", "catalog_id", "model", "generation:image", "nothing"):
            assert reader.get_meta(key) == catalog.get_meta(key)
        assert reader.catalog_id == catalog.catalog_id
        assert reader.schema_version == catalog.schema_version == SCHEMA_VERSION
        assert reader.model_info() == catalog.model_info()
        assert reader.settings() == catalog.settings()
        for modality in ("image", "text"):
            assert reader.generation(modality) == catalog.generation(modality) > 0
            assert reader.count(modality) == catalog.count(modality)
            np.testing.assert_array_equal(reader.ids(modality), catalog.ids(modality))
            for batch, after in ((3, -1), (2, ids[4]), (100, 10**9)):
                ours = list(reader.iter_embeddings(modality, DIM, batch=batch, after=after))
                theirs = list(catalog.iter_embeddings(modality, DIM, batch=batch, after=after))
                assert len(ours) == len(theirs)
                for (a_ids, a), (b_ids, b) in zip(ours, theirs, strict=True):
                    np.testing.assert_array_equal(a_ids, b_ids)
                    np.testing.assert_array_equal(a, b)
            for filters in FILTERS:
                np.testing.assert_array_equal(
                    reader.filter_ids(modality, filters), catalog.filter_ids(modality, filters)
                )
        assert reader.count() == catalog.count() == 11
        wanted = [*ids, 999, ids[0]]
        assert reader.records(wanted) == catalog.records(wanted)
        assert reader.records(wanted)[ids[5]].path == ODD_NAME  # decoded back exactly
        assert reader.records(wanted)[ids[7]].source == f"{ODD_NAME}.txt:0"
        for path in ("/photos/a.JPG", ODD_NAME, "/photos/é/ünï.webp", "/missing.jpg"):
            assert reader.find_path(path) == catalog.find_path(path)
        for modality in (None, "image", "text"):
            a_ids, a = reader.embeddings(wanted, DIM, modality)
            b_ids, b = catalog.embeddings(wanted, DIM, modality)
            assert a_ids == b_ids
            np.testing.assert_array_equal(a, b)
        hashes = ["h0", "h1", "t3", "zz"]
        for modality in ("image", "text"):
            assert reader.embeddings_by_hash(modality, hashes) == catalog.embeddings_by_hash(
                modality, hashes
            )
        assert reader.tags_of(wanted) == catalog.tags_of(wanted)
        assert reader.tag_counts() == catalog.tag_counts()
        assert reader.skipped_files() == catalog.skipped_files()


def test_reader_sees_later_writes(catalog: Catalog) -> None:
    reader = CatalogReader.open(catalog.path)
    assert reader is not None
    with reader:
        assert reader.count("image") == 0
        _fill(catalog)
        assert reader.count("image") == catalog.count("image") == 6
        assert reader.generation("image") == catalog.generation("image")


def test_reader_reads_the_schema_the_catalog_writes() -> None:
    assert catalog_reader.SCHEMA_VERSION == SCHEMA_VERSION


def test_reader_leaves_other_catalogs_to_the_orm(tmp_path: Path) -> None:
    assert CatalogReader.open(tmp_path / "missing.sqlite") is None
    (tmp_path / "empty.sqlite").write_bytes(b"")
    assert CatalogReader.open(tmp_path / "empty.sqlite") is None
    (tmp_path / "garbage.sqlite").write_bytes(os.urandom(4096))
    assert CatalogReader.open(tmp_path / "garbage.sqlite") is None
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE things (x)")
    assert CatalogReader.open(foreign) is None
    path = tmp_path / "old" / "catalog.sqlite"
    with Catalog(path):
        pass
    for key, value in (("schema_version", "1"), ("schema_version", "99"), ("catalog_id", "")):
        with sqlite3.connect(path) as db:
            before = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))
        assert CatalogReader.open(path) is None, (key, value)
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (before, key))
    reader = CatalogReader.open(path)
    assert reader is not None
    reader.close()


def test_index_reads_through_the_reader_and_writes_through_the_orm(tmp_path: Path) -> None:
    path = tmp_path / "idx"
    with Index.open(path):  # creates the catalog: the ORM
        pass
    with Index.open(path, create=False) as index:
        assert index._catalog is None and index._reader is not None  # noqa: SLF001
        assert index.info().images == 0
        assert index._catalog is None  # reading opened no ORM catalog  # noqa: SLF001
        index.catalog.set_meta("custom", "1")  # writing does
        assert index._reads.get_meta("custom") == "1"  # noqa: SLF001
    db = path / "catalog.sqlite"
    db.write_bytes(b"")  # damaged: the ORM catalog raises what it always raised
    with pytest.raises(IndexCorruptError, match="empty"):
        Index.open(path, create=False)


@pytest.mark.slow
def test_cli_text_query_imports_no_sqlalchemy_orm_torch_or_open_clip(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        noise_image(seed).save(photos / f"{seed}.png")
    index = str(tmp_path / "idx")
    env = {**os.environ, "MMSEARCH_CACHE": str(tmp_path / "cache")}
    subprocess.run(
        [sys.executable, "-m", "mmsearch", "-q", "index", "--index", index, "--model", TINY,
         str(photos)],
        check=True, capture_output=True, env=env,
    )  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mmsearch", "query", "a red car",
         "--index", index, "-k", "2"],
        capture_output=True, text=True, env={**env, "MMSEARCH_QUERY_RUNTIME": "onnx"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.splitlines()) == 2
    imported = {
        line.split("|")[-1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "onnxruntime" in imported and "faiss" in imported  # the query did run
    heavy = {m for m in imported if m.split(".")[0] in ("torch", "open_clip", "sqlalchemy")}
    assert not heavy, sorted(heavy)[:10]


def test_every_read_is_written_once_and_the_catalog_inherits_it() -> None:
    """The SQLAlchemy catalog runs the reader's SQL: it redefines none of the reads."""
    from mmsearch.catalog_reader import CatalogReads

    reads = {name for name in vars(CatalogReads) if not name.startswith("__")} - {"_all"}
    assert issubclass(Catalog, CatalogReads) and issubclass(CatalogReader, CatalogReads)
    assert reads >= {"records", "filter_ids", "image_files", "embeddings", "tags_of"}
    assert not reads & set(vars(Catalog)), "a read written twice"
    assert not reads & set(vars(CatalogReader)), "a read written twice"


def test_a_v3_catalog_gains_the_columns_added_since_and_the_reader_waits_for_them(
    tmp_path: Path,
) -> None:

    db = tmp_path / "catalog.sqlite"
    with Catalog(db) as cat:
        cat.add([{"modality": "text", "text": "a", "content_hash": "h", "embedding": [1.0, 0.0]}])
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE items DROP COLUMN taken_at")  # as a catalog made before it
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    assert CatalogReader.open(db) is None  # not its schema: the ORM must migrate it first
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    assert CatalogReader.open(db) is None  # right version, a column missing: still not
    with Catalog(db) as cat:
        assert cat.schema_version == SCHEMA_VERSION == 4
        (rec,) = cat.records(cat.ids("text")).values()
        assert rec.text == "a" and rec.taken_at is None
    with CatalogReader.open(db) as reader:
        assert reader is not None and reader.count("text") == 1
