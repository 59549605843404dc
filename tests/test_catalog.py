"""The SQLite catalog: schema and versioning, writes and generation counters, reads."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import unit_vectors as shared_unit_vectors
from sqlalchemy import inspect
from sqlalchemy.exc import IntegrityError

from mmsearch.catalog import SCHEMA_VERSION, Catalog
from mmsearch.catalog_base import ItemRecord
from mmsearch.errors import CatalogWriteError, IndexCorruptError, IndexNotFoundError

DIM = 16


def unit_vectors(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return shared_unit_vectors(n, dim, seed)


def image_row(i: int, vector: np.ndarray, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "modality": "image",
        "path": f"/photos/img{i}.jpg",
        "size": 1000 + i,
        "mtime_ns": 10**18 + i,
        "content_hash": f"hash-image-{i}",
        "width": 64,
        "height": 48,
        "embedding": vector,
    }
    row.update(extra)
    return row


def text_row(i: int, vector: np.ndarray, **extra: object) -> dict[str, object]:
    row: dict[str, object] = {
        "modality": "text",
        "text": f"caption number {i}",
        "source": f"texts.txt:{i}",
        "content_hash": f"hash-text-{i}",
        "embedding": vector,
    }
    row.update(extra)
    return row


@pytest.fixture
def db_path(catalog: Catalog) -> Path:
    return catalog.path


# -- schema ------------------------------------------------------------------------------


def test_new_catalog_has_schema_and_version(catalog: Catalog, db_path: Path) -> None:
    assert db_path.is_file()
    assert catalog.schema_version == SCHEMA_VERSION
    assert catalog.get_meta("schema_version") == str(SCHEMA_VERSION)
    tables = set(inspect(catalog.engine).get_table_names())
    assert {"items", "meta"} <= tables
    assert catalog.count() == 0
    assert catalog.generation("image") == 0
    assert catalog.generation("text") == 0


def test_create_false_on_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        Catalog(tmp_path / "nope.sqlite", create=False)
    assert not (tmp_path / "nope.sqlite").exists()


def test_reopening_keeps_data(db_path: Path) -> None:
    vecs = unit_vectors(3)
    with Catalog(db_path) as cat:
        ids = cat.add([image_row(i, vecs[i]) for i in range(2)] + [text_row(0, vecs[2])])
        cat.set_meta("custom", "value")
        generations = (cat.generation("image"), cat.generation("text"))
    with Catalog(db_path, create=False) as cat:
        assert cat.count() == 3
        assert cat.count("image") == 2
        assert cat.count("text") == 1
        assert cat.get_meta("custom") == "value"
        assert (cat.generation("image"), cat.generation("text")) == generations
        assert cat.schema_version == SCHEMA_VERSION
        found, stored = cat.embeddings(ids, DIM)
        assert found == ids
        np.testing.assert_allclose(stored, vecs, atol=1e-3)


def test_newer_schema_version_raises(db_path: Path) -> None:
    with Catalog(db_path) as cat:
        cat.set_meta("schema_version", str(SCHEMA_VERSION + 1))
    with pytest.raises(IndexCorruptError, match="newer"):
        Catalog(db_path)
    # The refusal must not rewrite the version: a newer mmsearch can still open it.
    con = sqlite3.connect(db_path)
    try:
        (value,) = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    finally:
        con.close()
    assert value == str(SCHEMA_VERSION + 1)


@pytest.mark.parametrize(
    "content",
    [b"\x00\x01garbage" * 500, b"hello, I am not a database\n" * 200],
    ids=["binary", "text"],
)
def test_garbage_file_raises_index_corrupt(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "catalog.sqlite"
    path.write_bytes(content)
    with pytest.raises(IndexCorruptError, match="cannot read catalog"):
        Catalog(path)
    assert path.read_bytes() == content  # left untouched


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other-app.sqlite"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO items VALUES (1, 'not ours')")
    con.commit()
    con.close()
    with pytest.raises(IndexCorruptError):
        Catalog(path)
    con = sqlite3.connect(path)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        con.close()
    assert tables == {"items"}  # nothing of ours written into someone else's database


def test_wal_journal_mode(catalog: Catalog, db_path: Path) -> None:
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    # WAL is a property of the database file: a plain sqlite3 connection sees it too.
    con = sqlite3.connect(db_path)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        con.close()


# -- meta --------------------------------------------------------------------------------


def test_model_info_round_trip(db_path: Path) -> None:
    info = {
        "model": "mmsearch-tiny",
        "pretrained": None,
        "identity": "mmsearch-tiny:random-seed0",
        "display": "mmsearch-tiny",
        "dim": 128,
    }
    with Catalog(db_path) as cat:
        assert cat.model_info() is None
        cat.set_model_info(info)
        assert cat.model_info() == info
    with Catalog(db_path) as cat:
        assert cat.model_info() == info


# -- writes and generations --------------------------------------------------------------


def test_add_bumps_only_its_modality(catalog: Catalog) -> None:
    vecs = unit_vectors(4)
    image_ids = catalog.add([image_row(0, vecs[0]), image_row(1, vecs[1])])
    assert len(image_ids) == 2
    assert image_ids[0] < image_ids[1]
    assert catalog.generation("image") == 1
    assert catalog.generation("text") == 0

    text_ids = catalog.add([text_row(0, vecs[2])])
    assert catalog.generation("image") == 1
    assert catalog.generation("text") == 1
    assert set(catalog.ids("image")) == set(image_ids)
    assert list(catalog.ids("text")) == text_ids


def test_update_many_bumps_modality_of_updated_items(catalog: Catalog) -> None:
    vecs = unit_vectors(3)
    (img,) = catalog.add([image_row(0, vecs[0])])
    (txt,) = catalog.add([text_row(0, vecs[1])])
    before = (catalog.generation("image"), catalog.generation("text"))

    catalog.update_many([(img, {"path": "/photos/renamed.jpg", "embedding": vecs[2]})])
    assert catalog.generation("image") == before[0] + 1
    assert catalog.generation("text") == before[1]
    rec = catalog.records([img])[img]
    assert rec.path == "/photos/renamed.jpg"
    assert catalog.find_path("/photos/img0.jpg") is None
    _, stored = catalog.embeddings([img], DIM)
    np.testing.assert_allclose(stored[0], vecs[2], atol=1e-3)

    catalog.update_many([(txt, {"text": "new words"})])
    assert catalog.generation("text") == before[1] + 1
    assert catalog.generation("image") == before[0] + 1
    assert catalog.records([txt])[txt].text == "new words"


def test_remove_bumps_and_counts(catalog: Catalog) -> None:
    vecs = unit_vectors(3)
    ids = catalog.add([image_row(i, vecs[i]) for i in range(2)])
    (txt,) = catalog.add([text_row(0, vecs[2])])
    gen_image, gen_text = catalog.generation("image"), catalog.generation("text")

    assert catalog.remove([ids[0], 123456]) == 1  # only existing rows count
    assert catalog.count("image") == 1
    assert catalog.generation("image") == gen_image + 1
    assert catalog.generation("text") == gen_text
    assert catalog.records([ids[0]]) == {}

    # Removing nothing that exists changes nothing, so no index needs a rebuild.
    assert catalog.remove([987654]) == 0
    assert catalog.generation("image") == gen_image + 1
    assert catalog.generation("text") == gen_text
    assert txt in catalog.records([txt])


def test_apply_mixed_batch_bumps_each_touched_modality_once(catalog: Catalog) -> None:
    vecs = unit_vectors(4)
    (img,) = catalog.add([image_row(0, vecs[0])])
    (txt,) = catalog.add([text_row(0, vecs[1])])
    gen_image, gen_text = catalog.generation("image"), catalog.generation("text")
    new = catalog.apply(
        add=[image_row(5, vecs[2]), image_row(6, vecs[3])],
        remove=[txt],
        updates=[(img, {"width": 10})],
    )
    assert len(new) == 2
    assert catalog.generation("image") == gen_image + 1
    assert catalog.generation("text") == gen_text + 1
    assert catalog.count("text") == 0
    assert catalog.records([img])[img].width == 10


def test_a_batch_of_rows_with_different_columns_gets_its_ids_in_order(catalog: Catalog) -> None:
    """One add of images (with and without a date, an undecodable name) and texts: each
    row's id is the one returned at its place, each row stored with its own columns."""
    vecs = unit_vectors(6)
    rows = [
        image_row(0, vecs[0], taken_at=1.5e9),
        text_row(1, vecs[1]),
        image_row(2, vecs[2], path="/photos/caf\udce9.jpg"),
        text_row(3, vecs[3]),
        image_row(4, vecs[4], taken_at=1.6e9),
        image_row(5, vecs[5]),
    ]
    ids = catalog.add(rows)
    assert ids == sorted(ids) and len(set(ids)) == 6
    records = catalog.records(ids)
    for item_id, row in zip(ids, rows, strict=True):
        record = records[item_id]
        assert record.content_hash == row["content_hash"]
        assert (record.path, record.text) == (row.get("path"), row.get("text"))
        assert record.taken_at == row.get("taken_at")
        assert record.width == row.get("width")
    found, stored = catalog.embeddings(ids, DIM)
    assert found == ids and np.abs(stored - vecs).max() < 1e-3


def test_the_run_s_driver_insert_stores_what_the_orm_insert_stores(tmp_path: Path) -> None:
    """``apply(new_ids=False)`` (what an indexing run commits with) inserts through the
    driver with each column's own bind processing: the same rows as SQLAlchemy's insert —
    an undecodable name as fsbytes:, embeddings given as vectors or as bytes, columns
    missing from some rows as NULL — and an unknown column or a taken path stores nothing."""
    vecs = unit_vectors(6)
    rows = [
        image_row(0, vecs[0], taken_at=1.5e9),
        text_row(1, vecs[1]),
        image_row(2, vecs[2], path=os.fsdecode(b"/photos/caf\xe9-\xff.jpg")),
        text_row(3, vecs[3].astype("<f2").tobytes()),
        image_row(4, vecs[4], taken_at=1.6e9, width=None),
        image_row(5, vecs[5]),
    ]
    columns = (  # all but added_at (when each was stored), with the embedding's type
        "id, modality, path, text, source, size, mtime_ns, content_hash, width, height,"
        " embedding, taken_at, typeof(embedding)"
    )
    stored = []
    for new_ids in (True, False):
        path = tmp_path / f"{new_ids}.sqlite"
        with Catalog(path) as catalog:
            catalog.apply(add=rows, new_ids=new_ids)
            assert catalog.generation("image") == catalog.generation("text") == 1
            assert catalog.find_path(rows[2]["path"]) is not None  # found by its own str
        with sqlite3.connect(path) as db:
            stored.append(db.execute(f"SELECT {columns} FROM items ORDER BY id").fetchall())
    orm, driver = stored
    assert orm == driver and len(driver) == 6
    assert driver[2][2].startswith("fsbytes:") and driver[4][8] is None  # path, width
    assert {r[-1] for r in driver} == {"blob"}

    with Catalog(tmp_path / "False.sqlite") as catalog:
        with pytest.raises(CatalogWriteError, match="colour"):
            catalog.apply(add=[image_row(9, vecs[0], colour="red")], new_ids=False)
        with pytest.raises(IntegrityError):  # the second row's path is taken
            catalog.apply(add=[image_row(8, vecs[0]), image_row(0, vecs[1])], new_ids=False)
        assert catalog.count() == 6 and catalog.find_path("/photos/img8.jpg") is None
        assert catalog.generation("image") == 1


def test_a_new_catalog_hashes_files_with_blake3_an_older_one_as_before(db_path: Path) -> None:
    from mmsearch.catalog_reader import CatalogReader

    with Catalog(db_path) as cat:
        assert cat.file_hash == "blake3"
    with CatalogReader.open(db_path) as reader:
        assert reader is not None and reader.file_hash == "blake3"
    with sqlite3.connect(db_path) as con:  # as a version before the entry made it
        con.execute("DELETE FROM meta WHERE key = 'file_hash'")
    with Catalog(db_path) as cat:  # opening does not change how it hashes
        assert cat.file_hash == "blake2b"
    with CatalogReader.open(db_path) as reader:
        assert reader is not None and reader.file_hash == "blake2b"


def test_ids_never_reused_after_delete(db_path: Path) -> None:
    vecs = unit_vectors(5)
    with Catalog(db_path) as cat:
        ids = cat.add([image_row(i, vecs[i]) for i in range(3)])
        highest = max(ids)
        cat.remove([highest])  # without AUTOINCREMENT, SQLite would hand out `highest` again
        (again,) = cat.add([image_row(3, vecs[3])])
        assert again > highest
        cat.remove([again])
    with Catalog(db_path) as cat:  # also across reopening
        (later,) = cat.add([image_row(4, vecs[4])])
        assert later > again


def test_apply_remove_and_add_same_path_in_one_call(catalog: Catalog) -> None:
    vecs = unit_vectors(2)
    (old,) = catalog.add([image_row(0, vecs[0])])
    path = "/photos/img0.jpg"
    (new,) = catalog.apply(remove=[old], add=[image_row(0, vecs[1], content_hash="hash-reencoded")])
    assert new != old
    rec = catalog.find_path(path)
    assert rec is not None
    assert rec.id == new
    assert rec.content_hash == "hash-reencoded"
    assert catalog.count("image") == 1


def test_duplicate_path_rolls_back_whole_batch(catalog: Catalog) -> None:
    vecs = unit_vectors(3)
    catalog.add([image_row(0, vecs[0])])
    gen = catalog.generation("image")
    with pytest.raises(IntegrityError):
        catalog.add([image_row(1, vecs[1]), image_row(0, vecs[2])])  # img0 path exists
    assert catalog.count() == 1
    assert catalog.find_path("/photos/img1.jpg") is None
    assert catalog.generation("image") == gen


# -- reads -------------------------------------------------------------------------------


def test_embeddings_float16_round_trip(catalog: Catalog) -> None:
    vecs = unit_vectors(20, seed=3)
    ids = catalog.add([image_row(i, vecs[i]) for i in range(20)])
    found, stored = catalog.embeddings(ids, DIM)
    assert found == ids
    assert stored.dtype == np.float32
    assert stored.shape == (20, DIM)
    assert np.abs(stored - vecs).max() < 1e-3
    assert stored.tobytes() != vecs.tobytes()  # really stored as float16, not float32


def test_embedding_given_as_bytes_is_stored_as_is(catalog: Catalog) -> None:
    vec = unit_vectors(1)[0]
    blob = vec.astype("<f2").tobytes()
    (item,) = catalog.add([image_row(0, blob)])
    _, stored = catalog.embeddings([item], DIM)
    np.testing.assert_array_equal(stored[0], vec.astype(np.float16).astype(np.float32))


def test_embeddings_skips_missing_and_keeps_order(catalog: Catalog) -> None:
    vecs = unit_vectors(4, seed=5)
    ids = catalog.add([image_row(i, vecs[i]) for i in range(4)])
    catalog.remove([ids[1]])
    wanted = [ids[3], 999_999, ids[1], ids[0], ids[2]]
    found, stored = catalog.embeddings(wanted, DIM)
    assert found == [ids[3], ids[0], ids[2]]
    np.testing.assert_allclose(stored, vecs[[3, 0, 2]], atol=1e-3)

    none, empty = catalog.embeddings([424242], DIM)
    assert none == []
    assert empty.shape == (0, DIM)


def test_embeddings_by_hash(catalog: Catalog) -> None:
    vecs = unit_vectors(4, seed=7)
    catalog.add(
        [
            image_row(0, vecs[0], content_hash="same"),
            image_row(1, vecs[1], content_hash="same"),  # a duplicate file: same bytes
            image_row(2, vecs[2], content_hash="other"),
            text_row(0, vecs[3], content_hash="textonly"),
        ]
    )
    out = catalog.embeddings_by_hash("image", ["same", "other", "textonly", "unknown"])
    assert set(out) == {"same", "other"}  # modality respected, unknown absent
    other = np.frombuffer(out["other"], dtype="<f2").astype(np.float32)
    np.testing.assert_allclose(other, vecs[2], atol=1e-3)
    same = np.frombuffer(out["same"], dtype="<f2").astype(np.float32)
    assert np.abs(same - vecs[0]).max() < 1e-3 or np.abs(same - vecs[1]).max() < 1e-3
    assert set(catalog.embeddings_by_hash("text", ["textonly", "same"])) == {"textonly"}
    assert catalog.embeddings_by_hash("image", []) == {}


def test_iter_embeddings_batches_cover_all_in_order(catalog: Catalog) -> None:
    vecs = unit_vectors(9, seed=11)
    image_ids = catalog.add([image_row(i, vecs[i]) for i in range(7)])
    catalog.add([text_row(i, vecs[7 + i]) for i in range(2)])  # must not show up
    catalog.remove([image_ids[2]])
    expected_ids = [i for i in image_ids if i != image_ids[2]]
    expected_vecs = vecs[[0, 1, 3, 4, 5, 6]]

    batches = list(catalog.iter_embeddings("image", DIM, batch=2))
    assert [len(ids) for ids, _ in batches] == [2, 2, 2]
    all_ids = np.concatenate([ids for ids, _ in batches])
    all_vecs = np.concatenate([v for _, v in batches])
    assert all_ids.tolist() == expected_ids
    assert all_ids.dtype == np.int64
    np.testing.assert_allclose(all_vecs, expected_vecs, atol=1e-3)

    batches = list(catalog.iter_embeddings("image", DIM, batch=4))
    assert [len(ids) for ids, _ in batches] == [4, 2]
    assert list(catalog.iter_embeddings("image", DIM, batch=100))[0][0].tolist() == expected_ids


def test_iter_embeddings_empty(catalog: Catalog) -> None:
    assert list(catalog.iter_embeddings("text", DIM)) == []


def test_records_and_find_path(catalog: Catalog) -> None:
    vecs = unit_vectors(2)
    img, txt = catalog.add([image_row(0, vecs[0]), text_row(0, vecs[1])])
    recs = catalog.records([txt, img, 31337])
    assert set(recs) == {img, txt}
    assert recs[img] == ItemRecord(
        id=img,
        modality="image",
        path="/photos/img0.jpg",
        text=None,
        source=None,
        size=1000,
        mtime_ns=10**18,
        content_hash="hash-image-0",
        width=64,
        height=48,
    )
    assert recs[txt].modality == "text"
    assert recs[txt].text == "caption number 0"
    assert recs[txt].source == "texts.txt:0"
    assert recs[txt].path is None

    assert catalog.find_path("/photos/img0.jpg") == recs[img]
    assert catalog.find_path("/photos/missing.jpg") is None
    assert [r.id for r in catalog.image_files()] == [img]
    assert catalog.text_hashes() == {"hash-text-0"}


def test_records_many_ids_across_chunks(catalog: Catalog) -> None:
    vecs = unit_vectors(1)
    ids = catalog.add([image_row(i, vecs[0]) for i in range(1200)])  # > one 500-id chunk
    recs = catalog.records(ids)
    assert sorted(recs) == sorted(ids)
    found, stored = catalog.embeddings(ids[::-1], DIM)
    assert found == ids[::-1]
    assert stored.shape == (1200, DIM)


def test_a_batch_of_vectors_is_stored_as_each_one_is() -> None:
    from mmsearch.catalog_base import to_blob, to_blobs

    vecs = unit_vectors(5)
    assert to_blobs(vecs) == [to_blob(v) for v in vecs]
    assert all(len(b) == 2 * DIM for b in to_blobs(vecs))  # float16
