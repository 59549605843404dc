"""A trash that remembers: files deleted, indexed, then restored under new names come
back under their old ids without encoding; a session that marked them still shows them;
`mmsearch gc` empties the trash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import TINY, noise_image

import mmsearch


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "mmsearch", "-q", *args], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return out


def _index(idx: Path, photos: Path) -> dict:
    return json.loads(
        _cli("index", str(photos), "--index", str(idx), "--model", TINY, "--json").stdout
    )


def test_deleted_files_come_back_without_encoding_under_their_ids(tmp_path: Path) -> None:
    photos, idx, away = tmp_path / "photos", tmp_path / "idx", tmp_path / "away"
    photos.mkdir()
    away.mkdir()
    for seed in range(14):
        noise_image(seed, size=(48, 32)).save(photos / f"p{seed:02d}.png")
    _index(idx, photos)
    with mmsearch.Index.open(idx) as index:
        ids = {Path(r.path or "").name: r.id for r in index.catalog.image_files()}
        marked = [ids[f"p{n:02d}.png"] for n in (0, 1, 2)]
        session = index.session("walk")
        session.query("a picture", k=5)
        session.refine(more=marked[:2], less=marked[2:])
    for n in range(10):
        (photos / f"p{n:02d}.png").rename(away / f"p{n:02d}.png")
    removed = _index(idx, photos)
    assert removed["removed"] == 10
    info = json.loads(_cli("info", "--index", str(idx), "--json").stdout)
    assert info["trash"] == 10 and info["images"] == 4
    for n in range(10):  # back, under new names
        (away / f"p{n:02d}.png").rename(photos / f"back-{n}.png")
    back = _index(idx, photos)
    assert (back["added"], back["reused"], back["removed"]) == (0, 10, 0), back
    assert back["engine"] == ""  # nothing was encoded
    with mmsearch.Index.open(idx) as index:
        now = {Path(r.path or "").name: r.id for r in index.catalog.image_files()}
        for n in range(10):
            assert now[f"back-{n}.png"] == ids[f"p{n:02d}.png"]
        hits = index.search_item(marked[0], k=20)
        assert marked[1] in [h.id for h in hits]  # found by search again
        turns = index.session("walk").turns
        assert set(marked[:2]) <= set(turns[-1].more)
    shown = json.loads(_cli("session", "show", "walk", "--index", str(idx), "--json").stdout)
    assert shown  # the session still resolves
    check = _cli("check", "--index", str(idx))
    assert check.returncode == 0
    assert json.loads(_cli("info", "--index", str(idx), "--json").stdout)["trash"] == 0


def test_gc_empties_the_trash(tmp_path: Path) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    photos.mkdir()
    for seed in range(4):
        noise_image(seed, size=(48, 32)).save(photos / f"p{seed}.png")
    _index(idx, photos)
    data = (photos / "p0.png").read_bytes()
    (photos / "p0.png").unlink()
    _index(idx, photos)
    assert json.loads(_cli("gc", "--older-than", "1", "--index", str(idx), "--json").stdout) == {
        "forgotten": 0
    }
    assert json.loads(_cli("gc", "--index", str(idx), "--json").stdout) == {"forgotten": 1}
    (photos / "again.png").write_bytes(data)
    again = _index(idx, photos)
    assert again["added"] == 1 and again["reused"] == 0  # forgotten: encoded again
