"""Never forget a library: a folder that cannot be seen is offline, not deleted.

An emptied folder (an unmounted mount point), a moved-away one, an unmounted tmpfs: no
item is removed, the run says the root is offline, queries leave its items out unless
--include-offline, and once it is back nothing is encoded again. --prune removes; a run
that would remove most of a root's items stops and asks for it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, noise_image

N = 12


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(
        [sys.executable, "-m", "mmsearch", "-q", *args], capture_output=True, text=True
    )
    if check:
        assert out.returncode == 0, out.stderr
    return out


def _index(idx: Path, *args: str, check: bool = True) -> tuple[dict, str, int]:
    out = _cli("index", *args, "--index", str(idx), "--model", TINY, "--json", check=check)
    summary = json.loads(out.stdout) if out.returncode == 0 else {}
    return summary, out.stderr, out.returncode


def _hits(idx: Path, *args: str) -> list[dict]:
    out = _cli("query", "a picture", "-k", "50", "--index", str(idx), "--json", *args)
    return json.loads(out.stdout)["hits"]


def _fill(folder: Path, n: int = N) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for seed in range(n):
        noise_image(seed, size=(48, 32)).save(folder / f"p{seed:02d}.png")


def test_an_emptied_folder_is_offline_and_comes_back_without_encoding(tmp_path: Path) -> None:
    drive, other, idx = tmp_path / "drive", tmp_path / "other", tmp_path / "idx"
    _fill(drive)
    other.mkdir()
    noise_image(99).save(other / "x.png")
    first, _, _ = _index(idx, str(drive), str(other))
    assert first["added"] == N + 1
    away = tmp_path / "away"
    shutil.move(str(drive), str(away))
    drive.mkdir()  # what an unmounted mount point looks like: an empty folder
    summary, err, _ = _index(idx, str(drive), str(other))
    assert summary["removed"] == 0 and summary["added"] == 0
    assert [o["path"] for o in summary["offline"]] == [str(drive)]
    assert "empty, though it held 12 items" in summary["offline"][0]["reason"]
    assert "offline: " + str(drive) in err
    assert [h["path"] for h in _hits(idx)] == [str(other / "x.png")]
    assert len(_hits(idx, "--include-offline")) == N + 1
    info = json.loads(_cli("info", "--index", str(idx), "--json").stdout)
    state = {r["path"]: r["online"] for r in info["roots"]}
    assert state == {str(drive): False, str(other): True}
    drive.rmdir()
    shutil.move(str(away), str(drive))  # the drive is back
    back, _, _ = _index(idx, str(drive), str(other))
    assert (back["added"], back["reused"], back["removed"]) == (0, 0, 0)
    assert back["unchanged"] == N + 1 and back["offline"] == []
    assert len(_hits(idx)) == N + 1


def test_a_missing_root_is_offline_and_prune_removes(tmp_path: Path) -> None:
    drive, idx = tmp_path / "drive", tmp_path / "idx"
    _fill(drive)
    _index(idx, str(drive))
    shutil.move(str(drive), str(tmp_path / "elsewhere"))
    summary, _, _ = _index(idx, str(drive))
    assert summary["removed"] == 0 and summary["offline"][0]["reason"].startswith("missing")
    assert _hits(idx) == []
    pruned, _, _ = _index(idx, str(drive), "--prune")
    assert pruned["removed"] == N
    assert _hits(idx, "--include-offline") == []
    # A root never indexed that does not exist is still a plain error.
    _, err, code = _index(idx, str(tmp_path / "typo"), check=False)
    assert code == 5 and "no such file or directory" in err


def test_removing_most_of_a_root_stops_and_asks_for_prune(tmp_path: Path) -> None:
    photos, idx = tmp_path / "photos", tmp_path / "idx"
    _fill(photos)
    _index(idx, str(photos))
    for path in sorted(photos.iterdir())[:11]:
        path.unlink()
    _, err, code = _index(idx, str(photos), check=False)
    assert code == 5 and "--prune" in err and "11 of the 12 items" in err
    assert len(_hits(idx)) == N  # nothing was removed
    pruned, _, _ = _index(idx, str(photos), "--prune")
    assert pruned["removed"] == 11
    # A few deletions are ordinary: removed at once.
    _fill(photos, 4)
    _index(idx, str(photos))
    (photos / "p00.png").unlink()
    summary, _, _ = _index(idx, str(photos))
    assert summary["removed"] == 1


def test_an_unmounted_tmpfs_is_offline(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                             capture_output=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    idx = tmp_path / "idx"
    saved = tmp_path / "saved"
    try:
        _fill(mnt / "photos")
        _index(idx, str(mnt))
        shutil.copytree(mnt, saved)  # copy2: sizes and mtimes kept
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    summary, _, _ = _index(idx, str(mnt))
    assert summary["removed"] == 0
    assert "not mounted" in summary["offline"][0]["reason"], summary["offline"]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        shutil.copytree(saved, mnt, dirs_exist_ok=True)
        back, _, _ = _index(idx, str(mnt))
        assert (back["added"], back["removed"], back["unchanged"]) == (0, 0, N)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
