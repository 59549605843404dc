"""The walk never wanders: pseudo file systems are never entered (a link to ``/`` included),
link loops end, links leading outside the roots are counted (and refused on request); text
lines that are not UTF-8 are reported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, noise_image

import indexer.scan as scan_module
from indexer.scan import pseudo_mounts, scan
from indexer.texts import read_texts


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise_image(seed, size=(24, 16)).save(path)
    return path


def test_pseudo_mounts_are_read_from_the_mount_table(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "23 1 0:22 / /sys rw - sysfs sysfs rw\n"
        "24 1 0:5 / /srv/odd\\040name rw - devtmpfs udev rw\n"
        "25 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
        "26 1 0:30 / /tmp rw - tmpfs tmpfs rw\n"
    )
    found = pseudo_mounts(str(table))
    assert {"/proc", "/sys", "/dev", "/srv/odd name"} <= found
    assert "/" not in found and "/tmp" not in found  # real storage is walked
    assert {"/proc", "/sys", "/dev"} <= pseudo_mounts(str(tmp_path / "none"))


def test_a_link_to_the_root_walks_no_pseudo_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fake tree with its own 'proc' and 'sys' mounts (the mount list mocked), reached
    through a link to the tree's top, the way a link to / reaches /proc."""
    top = tmp_path / "fake-root"
    _png(top / "home" / "me" / "a.png")
    _png(top / "proc" / "1" / "never.png", 1)
    _png(top / "sys" / "kernel" / "never.png", 2)
    root = tmp_path / "photos"
    _png(root / "mine.png", 3)
    (root / "everything").symlink_to(top)
    pseudo = frozenset({str(top / "proc"), str(top / "sys")})
    monkeypatch.setattr(scan_module, "pseudo_mounts", lambda: pseudo)
    found = scan([root])
    paths = [f.path for f in found.files]
    assert not [p for p in paths if "never" in p], paths
    assert str(root / "mine.png") in paths and str(root / "everything/home/me/a.png") in paths
    assert found.links_outside == 1 and found.links_refused == 0
    refused = scan([root], stay_inside=True)
    assert [f.path for f in refused.files] == [str(root / "mine.png")]
    assert refused.links_outside == 1 and refused.links_refused == 1


def test_a_real_link_to_slash_ends_and_enters_neither_proc_sys_nor_dev(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _png(root / "mine.png")
    (root / "slash").symlink_to("/")
    # Everything at / but the three pseudo file systems is left out, to keep the walk short.
    others = [name for name in os.listdir("/") if name not in ("proc", "sys", "dev")]
    found = scan([root], exclude=others)
    inside = [f.path for f in found.files if f.path.startswith(str(root / "slash") + "/")]
    for pseudo in ("proc", "sys", "dev"):
        assert not [p for p in inside if p.startswith(str(root / "slash" / pseudo) + "/")]
    assert found.links_outside == 1


def test_a_link_loop_ends(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _png(root / "a" / "x.png")
    (root / "a" / "back").symlink_to(root)  # a -> back -> root -> a ...
    (root / "a" / "self").symlink_to(root / "a")
    found = scan([root])
    assert [f.path for f in found.files] == [str(root / "a" / "x.png")]
    assert found.links_outside == 0


def test_the_run_reports_outside_links_and_refuses_them_on_request(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    _png(root / "mine.png")
    _png(tmp_path / "elsewhere" / "other.png", 1)
    (root / "linked.png").symlink_to(tmp_path / "elsewhere" / "other.png")
    idx = str(tmp_path / "idx")
    base = [sys.executable, "-m", "mmsearch", "-q", "index", str(root), "--model", TINY]
    out = subprocess.run(
        [*base, "--index", idx, "--no-follow-outside", "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(out.stdout)
    assert summary["links_outside"] == 1 and summary["links_refused"] == 1
    assert summary["added"] == 1
    plain = subprocess.run([*base, "--index", idx + "2"], capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    assert "1 symbolic links lead outside the folders given: followed" in plain.stderr
    assert "added 2" in plain.stdout


def test_lines_that_are_not_utf8_are_counted_and_reported(tmp_path: Path) -> None:
    corpus = tmp_path / "notes.txt"
    corpus.write_bytes(
        "a fine line\nan \u00e9l\u00e8ve line\n".encode() + b"bad \xff\xfe here\nok\nalso \xc3(\n"
    )
    result = read_texts(corpus)
    assert result.replaced == 2 and len(result.records) == 5
    idx = str(tmp_path / "idx")
    out = subprocess.run(
        [sys.executable, "-m", "mmsearch", "index", "--texts", str(corpus), "--index", idx,
         "--model", TINY],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "2 text lines had bytes that are not UTF-8" in out.stderr


def test_a_folder_named_like_a_pseudo_mount_or_a_root_is_not_taken_for_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/procfoo is not under /proc, and photos2 is not inside photos."""
    root = tmp_path / "photos"
    _png(root / "a.png")
    _png(tmp_path / "procfoo" / "b.png", 1)
    _png(tmp_path / "photos2" / "c.png", 2)
    (root / "odd").symlink_to(tmp_path / "procfoo")
    (root / "next").symlink_to(tmp_path / "photos2")
    monkeypatch.setattr(scan_module, "pseudo_mounts", lambda: frozenset({str(tmp_path / "proc")}))
    found = scan([root])
    assert len(found.files) == 3 and found.links_outside == 2
