"""Search sessions: the Rocchio math, accumulated feedback, persistence in the catalog
(close and reopen), the v2 → v3 migration, and the Session API on a tiny index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from conftest import unit_vectors
from serve_util import shapes_index

import mmsearch
from mmsearch.catalog import SCHEMA_VERSION, Catalog, ExampleFile, SessionRecord, TurnRecord
from mmsearch.errors import InvalidValueError, ItemNotFoundError, QueryError, SessionNotFoundError
from mmsearch.refine import RocchioWeights, check_name, feedback, rocchio

# -- the math --------------------------------------------------------------------------


def test_rocchio_is_the_weighted_sum_normalised() -> None:
    q, p1, p2, n1, t1 = unit_vectors(5, 16, seed=3)
    w = RocchioWeights(alpha=1.0, beta=0.8, gamma=0.3, text=0.5)
    expected = 1.0 * q + 0.8 * (p1 + p2) / 2 - 0.3 * n1 + 0.5 * t1
    got = rocchio(q, [p1, p2], [n1], [t1], w)
    np.testing.assert_allclose(got, expected / np.linalg.norm(expected), atol=1e-6)
    assert got.dtype == np.float32


def test_rocchio_normalises_its_inputs_and_ignores_empty_groups() -> None:
    q, p = unit_vectors(2, 8, seed=1)
    # Stored float16 rows are not exactly unit: a longer row must not weigh more.
    np.testing.assert_allclose(rocchio(3 * q, [5 * p]), rocchio(q, [p]), atol=1e-6)
    np.testing.assert_allclose(rocchio(q), q, atol=1e-6)  # no feedback: the query itself
    np.testing.assert_allclose(rocchio(q, np.zeros((0, 8))), q, atol=1e-6)


def test_rocchio_moves_towards_positives_and_away_from_negatives() -> None:
    q, p, n = unit_vectors(3, 32, seed=7)
    moved = rocchio(q, [p], [n])
    assert moved @ p > q @ p
    assert moved @ n < q @ n


def test_rocchio_refuses_a_query_cancelled_out() -> None:
    (q,) = unit_vectors(1, 8)
    with pytest.raises(QueryError, match="cancels"):
        rocchio(q, negatives=[q], weights=RocchioWeights(alpha=1.0, gamma=1.0))


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_weights_must_be_finite_and_not_negative(bad: float) -> None:
    with pytest.raises(InvalidValueError):
        RocchioWeights(beta=bad)


def test_feedback_latest_mark_wins() -> None:
    (v,) = unit_vectors(1, 4)
    turns = [
        TurnRecord(0, 0.0),
        TurnRecord(1, 1.0, more=(1, 2), less=(3,), more_files=(ExampleFile("/a.png", v),)),
        TurnRecord(2, 2.0, less=(2,), text="at night", text_vector=v),
        TurnRecord(3, 3.0, more=(3,), less_files=(ExampleFile("/a.png", v),)),
    ]
    got = feedback(turns)
    assert got.more == (1, 3)
    assert got.less == (2,)
    assert [f.path for f in got.more_files] == []
    assert [f.path for f in got.less_files] == ["/a.png"]
    assert got.texts == ("at night",)
    assert got.marked == {1, 2, 3}


@pytest.mark.parametrize("name", ["", "a b", "x/y", "../up", "n" * 101, "tab\t"])
def test_bad_session_names_are_refused(name: str) -> None:
    with pytest.raises(QueryError, match="cannot name a session"):
        check_name(name)


# -- persistence -------------------------------------------------------------------------


def _start(cat: Catalog, name: str = "walk") -> np.ndarray:
    q, v = unit_vectors(2, 8, seed=5)
    record = SessionRecord(name, 1.0, 1.0, "model-x", "image", {"k": 7, "weights": {}})
    query = {"terms": [{"kind": "text", "value": "a dog", "weight": 1.0}], "filters": {}}
    cat.start_session(record, TurnRecord(0, 1.0, query=query, query_vector=q))
    cat.set_shown(name, 0, [5, 6])
    turn = TurnRecord(
        -1, 2.0, text="at night", text_vector=v, more=(5,), less=(6,),
        more_files=(ExampleFile("/photos/x.jpg", v),),
    )  # fmt: skip
    assert cat.add_turn(name, turn) == 1
    return q


def test_sessions_survive_close_and_reopen(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    with Catalog(db) as cat:
        q = _start(cat)
    with Catalog(db) as cat:
        (record,) = cat.list_sessions()
        assert (record.name, record.model, record.target, record.turns) == (
            "walk",
            "model-x",
            "image",
            2,
        )
        assert record.settings["k"] == 7 and record.updated == 2.0
        first, second = cat.session_turns("walk", 8)
    assert first.query is not None and first.query["terms"][0]["value"] == "a dog"
    np.testing.assert_allclose(first.query_vector, q, atol=1e-3)  # float16 storage
    assert first.shown == (5, 6)
    assert (second.seq, second.text, second.more, second.less) == (1, "at night", (5,), (6,))
    assert [f.path for f in second.more_files] == ["/photos/x.jpg"]
    assert second.more_files[0].vector.shape == (8,)


def test_start_replaces_and_drop_deletes_everything(tmp_path: Path) -> None:
    with Catalog(tmp_path / "catalog.sqlite") as cat:
        _start(cat)
        _start(cat)  # the same name again: a fresh session, not turns appended
        assert [t.seq for t in cat.session_turns("walk", 8)] == [0, 1]
        assert cat.drop_session("walk") is True
        assert cat.drop_session("walk") is False
        assert cat.list_sessions() == []
        with sqlite3.connect(tmp_path / "catalog.sqlite") as con:
            for table in ("search_session_turns", "search_session_files"):
                assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        with pytest.raises(SessionNotFoundError, match="no search session named 'walk'"):
            cat.session_turns("walk", 8)
        with pytest.raises(SessionNotFoundError):
            cat.add_turn("walk", TurnRecord(-1, 3.0, more=(1,)))


def _v2_catalog(db: Path, journal_mode: str | None = None) -> None:
    """A catalog with one text item as schema v2 wrote it: no session tables, version 2
    (and the journal mode given, set on the same connection)."""
    with Catalog(db) as cat:
        cat.add(
            [{"modality": "text", "text": "kept", "content_hash": "h", "embedding": np.ones(8)}]
        )
    with sqlite3.connect(db) as con:
        for table in ("search_sessions", "search_session_turns", "search_session_files"):
            con.execute(f"DROP TABLE {table}")
        con.execute("UPDATE meta SET value='2' WHERE key='schema_version'")
        if journal_mode:
            con.execute(f"PRAGMA journal_mode={journal_mode}")


def test_a_v2_catalog_is_migrated_to_v3(tmp_path: Path) -> None:
    db = tmp_path / "catalog.sqlite"
    _v2_catalog(db)
    with Catalog(db) as cat:
        assert cat.schema_version == SCHEMA_VERSION == 4
        assert cat.count("text") == 1  # the items are untouched
        _start(cat)
        assert [t.seq for t in cat.session_turns("walk", 8)] == [0, 1]


def test_a_read_only_v2_catalog_still_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-only media (simulated: the test may run as root): a v2 catalog is read as it
    is, neither migrated nor given the new tables."""
    import mmsearch.catalog

    db = tmp_path / "catalog.sqlite"
    _v2_catalog(db, journal_mode="DELETE")
    monkeypatch.setattr(mmsearch.catalog, "_writable", lambda path: False)
    with Catalog(db) as cat:
        assert cat.read_only and cat.schema_version == 2
        assert cat.count("text") == 1
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == ("2",)


# -- the Session API on a tiny index ---------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_index(tmp_path_factory.mktemp("refine"), n=30)


def test_session_round_trip_through_the_api(index_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.png"
    from conftest import noise_image

    noise_image(11, size=(64, 64)).save(outside)
    with mmsearch.Index.open(index_dir) as index:
        walk = index.session("walk")
        assert not walk.exists
        first = walk.query("a red circle", k=6)
        assert len(first) == 6
        more, less = first[0].id, first[1].id
        second = walk.refine(more=[more, outside], less=[less], text="big")
        shown = {h.id for h in second}
        assert more not in shown and less not in shown  # marked: not shown again
        assert len(second) == 6
        again = walk.refine(more=[first[2].id], show_marked=True, k=30)
        assert {more, less} <= {h.id for h in again}  # unless asked
        ids = [h.id for h in walk.hits]
    with mmsearch.Index.open(index_dir) as index:  # closed and reopened
        walk = index.session("walk")
        turns = walk.turns
        assert [t.seq for t in turns] == [0, 1, 2]
        assert turns[0].query is not None and turns[0].query.terms[0].value == "a red circle"
        assert turns[0].shown == tuple(h.id for h in first)
        assert turns[1].more == (more,) and turns[1].less == (less,)
        assert turns[1].more_files == (str(outside),) and turns[1].text == "big"
        assert turns[2].shown == tuple(ids)
        # The stored state searches the same again (with the latest turn's settings aside).
        assert [h.id for h in walk.search(k=30, show_marked=True)] == ids
        (info,) = index.sessions()
        assert (info.name, info.turns, info.k) == ("walk", 3, 6)
        assert index.drop_session("walk") is True
        assert index.sessions() == []


def test_session_errors(index_dir: Path) -> None:
    with mmsearch.Index.open(index_dir) as index:
        with pytest.raises(SessionNotFoundError):
            index.session("nobody").refine(more=[1])
        s = index.session("errs")
        s.query("a blue square", k=3)
        with pytest.raises(ItemNotFoundError, match="no item with id 999999"):
            s.refine(more=[999999])
        with pytest.raises(QueryError, match="give feedback"):
            s.refine()
        with pytest.raises(QueryError, match="cannot read query image"):
            s.refine(less=["/nonexistent/picture.png"])
        assert len(s.turns) == 1  # refused turns leave nothing behind
        s.drop()


# -- the command line --------------------------------------------------------------------


def _cli(*args: str) -> tuple[int, str, str]:
    from click.testing import CliRunner

    from mmsearch.cli import cli

    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_cli_session_end_to_end(index_dir: Path, tmp_path: Path) -> None:
    import json

    from conftest import noise_image

    from mmsearch.status import ExitStatus

    idx = ("--index", str(index_dir))
    code, out, err = _cli(
        "query", "a green triangle", "--session", "cli", "-k", "5", "--json", *idx
    )
    assert code == 0, err
    started = json.loads(out)
    assert started["session"] == "cli" and len(started["hits"]) == 5
    ids = [h["id"] for h in started["hits"]]
    picture = tmp_path / "p.png"
    noise_image(3, size=(64, 64)).save(picture)
    code, out, err = _cli(
        "refine", "cli", "--more", f"{ids[0]},{ids[1]}", "--more", str(picture),
        "--less", str(ids[2]), "--text", "on a dark background", "--json", *idx,
    )  # fmt: skip
    assert code == 0, err
    refined = json.loads(out)
    assert refined["turn"] == 1 and len(refined["hits"]) == 5
    assert not {h["id"] for h in refined["hits"]} & set(ids[:3])  # marked: not shown again
    code, out, _ = _cli("refine", "cli", "--less", f"id:{ids[3]}", *idx)  # plain lines
    assert code == 0 and len(out.splitlines()) == 5 and "\t" in out.splitlines()[0]
    code, out, _ = _cli("session", "list", *idx)
    assert code == 0 and out.startswith("cli\t3 turns\t")
    code, out, _ = _cli("session", "show", "cli", "--json", *idx)
    shown = json.loads(out)
    assert [t["seq"] for t in shown["turns"]] == [0, 1, 2]
    assert shown["turns"][0]["query"]["terms"][0]["value"] == "a green triangle"
    assert shown["turns"][1]["more"] == ids[:2] and shown["turns"][1]["less"] == [ids[2]]
    assert shown["turns"][1]["more_files"] == [str(picture)]
    assert shown["turns"][1]["text"] == "on a dark background"
    assert shown["turns"][0]["shown"] == ids
    code, out, _ = _cli("session", "show", "cli", *idx)
    assert code == 0 and "query text:a green triangle" in out and f"more {ids[0]},{ids[1]}," in out
    # Errors: unknown session, unknown id, no feedback; each one line, its own status.
    code, _, err = _cli("refine", "nobody", "--more", "1", *idx)
    assert code == ExitStatus.INPUT and "no search session named 'nobody'" in err
    code, _, err = _cli("refine", "cli", "--more", "999999", *idx)
    assert code == ExitStatus.INPUT and "no item with id 999999" in err
    code, _, err = _cli("refine", "cli", *idx)
    assert code == ExitStatus.USAGE
    code, _, err = _cli("refine", "cli", "--more", "id:x", *idx)
    assert code == ExitStatus.USAGE and "not an item id" in err
    code, _, err = _cli("query", "a dog", "--session", "no/slash", *idx)
    assert code == ExitStatus.INPUT and "cannot name a session" in err
    code, out, _ = _cli("session", "drop", "cli", *idx)
    assert code == 0 and out == "dropped session cli\n"
    code, _, err = _cli("session", "drop", "cli", *idx)
    assert code == ExitStatus.INPUT and "no search session named 'cli'" in err
    code, out, _ = _cli("session", "list", "--json", *idx)
    assert code == 0 and json.loads(out) == []
