"""Files that could not be decoded are remembered: an unchanged one is not read again (but
still reported), a changed one is tried again, a deleted one is forgotten."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY, noise_image
from test_pipeline import FakeEncoder

import mmsearch.media
from indexer.pipeline import index_images
from indexer.scan import FileEntry, plan_remembered
from mmsearch.catalog_base import SkipRecord
from mmsearch.cli import cli

BROKEN = b"\x89PNG\r\n\x1a\n garbage"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for i in range(3):
        noise_image(i).save(root / f"{i}.png")
    (root / "broken.png").write_bytes(BROKEN)
    return root


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names of the files decoded and hashed, run after run."""
    seen: dict[str, list[str]] = {"decoded": [], "hashed": []}
    real_load, real_read = mmsearch.media.load_image, mmsearch.media.read_file

    def load(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["decoded"].append(Path(path).name)
        return real_load(path, *args, **kwargs)

    def digest(path, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen["hashed"].append(Path(path).name)
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(mmsearch.media, "load_image", load)  # what the decoding threads call
    monkeypatch.setattr(mmsearch.media, "read_file", digest)  # one read: hashed and decoded
    return seen


def _run(catalog, root, **kwargs):  # type: ignore[no-untyped-def]
    return index_images(catalog, [root], lambda: FakeEncoder(), **kwargs)


def _skips(summary) -> dict[str, tuple[str, bool]]:  # type: ignore[no-untyped-def]
    return {Path(s.path).name: (s.reason, s.remembered) for s in summary.skipped}


def test_an_unchanged_bad_file_is_not_read_again_but_still_reported(catalog, folder, reads):
    first = _run(catalog, folder)
    reason, remembered = _skips(first)["broken.png"]
    assert "corrupt" in reason and not remembered and first.added == 3
    assert reads["decoded"].count("broken.png") == 1
    (record,) = catalog.skipped_files()
    st = os.stat(folder / "broken.png")
    assert record == SkipRecord(str(folder / "broken.png"), st.st_size, st.st_mtime_ns, reason)

    reads["decoded"].clear()
    reads["hashed"].clear()
    again = _run(catalog, folder)
    assert _skips(again) == {"broken.png": (reason, True)}
    assert reads == {"decoded": [], "hashed": []}  # neither decoded nor hashed
    assert (again.scanned, again.unchanged, again.added) == (4, 3, 0)
    assert again.to_dict()["skipped"] == [
        {"path": str(folder / "broken.png"), "reason": reason, "remembered": True}
    ]


def test_a_fixed_file_is_indexed_and_forgotten(catalog, folder, reads):
    _run(catalog, folder)
    noise_image(9).save(folder / "broken.png")
    summary = _run(catalog, folder)
    assert (summary.added, summary.skipped) == (1, [])
    assert catalog.skipped_files() == []
    assert "broken.png" in {Path(r.path).name for r in catalog.image_files()}


def test_a_file_changed_but_still_bad_is_tried_again_and_remembered_anew(catalog, folder, reads):
    _run(catalog, folder)
    (folder / "broken.png").write_bytes(b"still not a picture, but longer")
    reads["decoded"].clear()
    summary = _run(catalog, folder)
    assert reads["decoded"] == ["broken.png"]
    assert not _skips(summary)["broken.png"][1]  # a fresh failure, not a remembered one
    (record,) = catalog.skipped_files()
    assert record.size == len(b"still not a picture, but longer")


def test_a_deleted_bad_file_is_forgotten(catalog, folder):
    _run(catalog, folder)
    (folder / "broken.png").unlink()
    assert _run(catalog, folder).skipped == []
    assert catalog.skipped_files() == []


def test_a_bad_file_outside_this_runs_roots_is_kept_in_mind(catalog, folder, tmp_path):
    _run(catalog, folder)
    other = tmp_path / "other"
    other.mkdir()
    noise_image(5).save(other / "x.png")
    _run(catalog, other)
    assert [Path(r.path).name for r in catalog.skipped_files()] == ["broken.png"]


def test_a_known_image_that_turns_bad_leaves_the_index_and_is_remembered(catalog, folder):
    _run(catalog, folder)
    (folder / "1.png").write_bytes(BROKEN + b"!")
    summary = _run(catalog, folder)
    assert (summary.removed, summary.updated) == (1, 0)
    assert "1.png" not in {Path(r.path).name for r in catalog.image_files()}
    assert {Path(r.path).name for r in catalog.skipped_files()} == {"1.png", "broken.png"}
    assert _skips(_run(catalog, folder))["1.png"][1]  # remembered on the next run


def test_retry_skipped_reads_remembered_files_again(catalog, folder, reads):
    _run(catalog, folder)
    reads["decoded"].clear()
    summary = _run(catalog, folder, retry_skipped=True)
    assert reads["decoded"] == ["broken.png"] and not _skips(summary)["broken.png"][1]
    assert len(catalog.skipped_files()) == 1


def test_plan_remembered_sorts_still_bad_changed_new_and_gone(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    outside = str(tmp_path / "elsewhere" / "z.png")
    found = [FileEntry(str(root / n), 10, 5) for n in ("same.png", "changed.png", "new.png")]
    remembered = [
        SkipRecord(str(root / "same.png"), 10, 5, "bad"),
        SkipRecord(str(root / "changed.png"), 10, 4, "bad"),
        SkipRecord(str(root / "deleted.png"), 1, 1, "bad"),
        SkipRecord(outside, 1, 1, "bad"),
    ]
    plan = plan_remembered(found, remembered, [root])
    assert [Path(e.path).name for e in plan.to_try] == ["changed.png", "new.png"]
    assert [r.path for r in plan.still_bad] == [str(root / "same.png")]
    assert [r.path for r in plan.gone] == [str(root / "deleted.png")]


def test_cli_reports_remembered_skips_and_info_lists_them(tmp_path, folder, monkeypatch):
    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")  # no ONNX export: not tested here
    runner = CliRunner()
    idx = str(tmp_path / "idx")

    def run(*args: str) -> str:
        result = runner.invoke(cli, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("-q", "index", "--index", idx, "--model", TINY, "--json", str(folder))
    second = runner.invoke(
        cli, ["-q", "index", "--index", idx, str(folder)], catch_exceptions=False
    )
    assert "broken.png" in second.stderr and "(remembered" in second.stderr
    assert "skipped:  1 files remembered" in run("info", "--index", idx)
    info = json.loads(run("info", "--index", idx, "--json"))
    assert [(Path(s["path"]).name, s["remembered"]) for s in info["skipped_files"]] == [
        ("broken.png", True)
    ]
    shutil.rmtree(folder)
    folder.mkdir()
    noise_image(0).save(folder / "0.png")
    run("-q", "index", "--index", idx, "--json", str(folder))
    assert json.loads(run("info", "--index", idx, "--json"))["skipped_files"] == []
