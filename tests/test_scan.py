"""Tests of indexer.scan: walking, filtering, symlinks, hashing and change detection."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from indexer.scan import (
    DEFAULT_EXCLUDES,
    IMAGE_EXTENSIONS,
    FileEntry,
    KnownFile,
    plan_changes,
    scan,
)
from mmsearch.errors import InputError
from mmsearch.media import content_hash


def touch(path: Path, data: bytes = b"x") -> Path:
    """Create a file (and its parents) holding ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def names(result, root: Path) -> list[str]:
    """Paths of the scanned files relative to ``root``, with '/' separators."""
    return [Path(f.path).relative_to(root).as_posix() for f in result.files]


def test_extension_filter_is_case_insensitive(tmp_path: Path) -> None:
    for name in ["a.jpg", "b.PNG", "c.webp", "d.txt", "e.pdf", "f", "g.JPEG"]:
        touch(tmp_path / name)
    assert names(scan([tmp_path]), tmp_path) == ["a.jpg", "b.PNG", "c.webp", "g.JPEG"]
    assert names(scan([tmp_path], extensions={"TXT"}), tmp_path) == ["d.txt"]


def test_extension_set_is_lower_case_with_dots() -> None:
    assert {".jpg", ".png", ".tiff", ".ico", ".heic", ".cr2"} <= IMAGE_EXTENSIONS
    assert ".pdf" not in IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


def test_entries_carry_size_mtime_and_absolute_paths(tmp_path: Path) -> None:
    path = touch(tmp_path / "sub" / "a.png", b"12345")
    os.utime(path, ns=(1_000_000_000, 1_234_567_890_123))
    (entry,) = scan([tmp_path / "sub" / ".." / "sub"]).files
    assert entry == FileEntry(str(path), 5, 1_234_567_890_123)


def test_hidden_and_default_excludes_are_skipped(tmp_path: Path) -> None:
    touch(tmp_path / "keep" / "a.jpg")
    touch(tmp_path / ".hidden" / "b.jpg")
    touch(tmp_path / ".c.jpg")
    touch(tmp_path / "node_modules" / "d.jpg")
    touch(tmp_path / "x" / "__pycache__" / "e.jpg")
    touch(tmp_path / "@eaDir" / "f.jpg")
    assert "node_modules" in DEFAULT_EXCLUDES
    assert names(scan([tmp_path]), tmp_path) == ["keep/a.jpg"]


def test_hidden_root_given_explicitly_is_walked(tmp_path: Path) -> None:
    touch(tmp_path / ".photos" / "a.jpg")
    touch(tmp_path / ".photos" / ".inner" / "b.jpg")
    assert names(scan([tmp_path / ".photos"]), tmp_path) == [".photos/a.jpg"]


def test_exclude_by_name_and_by_relative_glob(tmp_path: Path) -> None:
    touch(tmp_path / "raw" / "a.jpg")
    touch(tmp_path / "2019" / "raw" / "b.jpg")
    touch(tmp_path / "2019" / "c.png")
    touch(tmp_path / "2019" / "d.jpg")
    touch(tmp_path / "2020" / "e.png")
    result = scan([tmp_path], exclude=["raw", "2019/*.png"])
    assert names(result, tmp_path) == ["2019/d.jpg", "2020/e.png"]


def test_exclude_is_case_sensitive(tmp_path: Path) -> None:
    touch(tmp_path / "Raw" / "a.jpg")
    assert names(scan([tmp_path], exclude=["raw"]), tmp_path) == ["Raw/a.jpg"]


def test_symlink_loop_terminates_without_duplicates(tmp_path: Path) -> None:
    touch(tmp_path / "a" / "one.jpg")
    touch(tmp_path / "a" / "b" / "two.jpg")
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "loop")
    os.symlink(tmp_path / "a" / "b", tmp_path / "alias")
    result = scan([tmp_path, tmp_path / "a"])
    assert names(result, tmp_path) == ["a/b/two.jpg", "a/one.jpg"]
    assert result.errors == []


def test_symlinked_dir_is_followed_only_when_asked(tmp_path: Path) -> None:
    touch(tmp_path / "elsewhere" / "a.jpg")
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "elsewhere", tmp_path / "root" / "link")
    assert names(scan([tmp_path / "root"]), tmp_path) == ["root/link/a.jpg"]
    assert scan([tmp_path / "root"], follow_symlinks=False).files == []


def test_symlinked_file_keeps_first_path_and_broken_link_is_an_error(tmp_path: Path) -> None:
    touch(tmp_path / "a.jpg")
    os.symlink(tmp_path / "a.jpg", tmp_path / "b.jpg")
    os.symlink(tmp_path / "missing.jpg", tmp_path / "c.jpg")
    result = scan([tmp_path])
    assert names(result, tmp_path) == ["a.jpg"]
    assert result.errors == [(str(tmp_path / "c.jpg"), "broken symbolic link")]


def test_root_that_is_a_file(tmp_path: Path) -> None:
    image = touch(tmp_path / ".hidden.jpg")
    text = touch(tmp_path / "notes.txt")
    assert [f.path for f in scan([image, text]).files] == [str(image)]


def test_missing_root_raises_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        scan([tmp_path / "nope"])
    assert info.value.path == str(tmp_path / "nope")
    assert info.value.reason == "no such file or directory"


def test_unreadable_directory_is_recorded_and_scan_goes_on(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    touch(tmp_path / "ok" / "a.jpg")
    locked = tmp_path / "locked"
    touch(locked / "b.jpg")
    locked.chmod(0)
    try:
        result = scan([tmp_path])
    finally:
        locked.chmod(0o755)
    assert names(result, tmp_path) == ["ok/a.jpg"]
    assert result.errors == [(str(locked), "permission denied")]


def test_directory_that_cannot_be_listed_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    touch(tmp_path / "ok" / "a.jpg")
    touch(tmp_path / "locked" / "b.jpg")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = scan([tmp_path])
    assert names(result, tmp_path) == ["ok/a.jpg"]
    assert result.errors == [(str(tmp_path / "locked"), "permission denied")]


def test_content_hash_equal_for_copies_and_different_for_other_bytes(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.bin", b"hello" * 1000)
    b = touch(tmp_path / "b.bin", b"hello" * 1000)
    c = touch(tmp_path / "c.bin", b"hello" * 999 + b"hellO")
    assert content_hash(a) == content_hash(b, chunk_size=7)
    assert content_hash(a) != content_hash(c)
    assert len(content_hash(a)) == 32
    with pytest.raises(InputError):
        content_hash(tmp_path / "missing.bin")


def known(id_: int, path: Path | str, size: int = 1, mtime_ns: int = 100) -> KnownFile:
    return KnownFile(id=id_, path=str(path), size=size, mtime_ns=mtime_ns, content_hash="h")


def test_plan_changes_classifies_every_case(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    still_there = touch(photos / "excluded.jpg")
    found = [
        FileEntry(str(photos / "new.jpg"), 1, 100),
        FileEntry(str(photos / "same.jpg"), 1, 100),
        FileEntry(str(photos / "resized.jpg"), 2, 100),
        FileEntry(str(photos / "touched.jpg"), 1, 200),
    ]
    k_same = known(1, photos / "same.jpg")
    k_resized = known(2, photos / "resized.jpg")
    k_touched = known(3, photos / "touched.jpg")
    k_gone = known(4, photos / "sub" / "deleted.jpg")
    k_sibling = known(5, tmp_path / "photos2" / "deleted.jpg")  # prefix trap
    k_outside = known(6, "/elsewhere/deleted.jpg")
    k_present = known(7, still_there)
    plan = plan_changes(
        found,
        [k_same, k_resized, k_touched, k_gone, k_sibling, k_outside, k_present],
        [photos],
    )
    assert plan.new == [found[0]]
    assert plan.unchanged == [k_same]
    assert plan.changed == [(found[2], k_resized), (found[3], k_touched)]
    assert plan.gone == [k_gone]


def test_plan_changes_root_with_trailing_separator_and_file_root(tmp_path: Path) -> None:
    k_dir = known(1, tmp_path / "photos" / "a.jpg")
    k_file = known(2, tmp_path / "single.jpg")
    k_other = known(3, tmp_path / "single.jpg2")
    plan = plan_changes(
        [], [k_dir, k_file, k_other], [f"{tmp_path}/photos/", tmp_path / "single.jpg"]
    )
    assert plan.gone == [k_dir, k_file]
    assert plan.new == plan.unchanged == plan.changed == []


def test_scan_then_plan_end_to_end(tmp_path: Path) -> None:
    a = touch(tmp_path / "a.jpg")
    first = scan([tmp_path]).files
    records = [known(i, f.path, f.size, f.mtime_ns) for i, f in enumerate(first)]
    a.unlink()
    touch(tmp_path / "b.jpg")
    plan = plan_changes(scan([tmp_path]).files, records, [tmp_path])
    assert [f.path for f in plan.new] == [str(tmp_path / "b.jpg")]
    assert [k.path for k in plan.gone] == [str(a)]
