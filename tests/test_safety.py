"""Never a silently wrong answer: odd file names, output that cannot be forged, two writers,
a full or read-only disk, quiet runs, binary files given as texts."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY, noise_image

import mmsearch
from mmsearch.cli import cli, escape
from mmsearch.errors import StorageError
from mmsearch.lock import WriterLock
from mmsearch.status import ExitStatus

BAD_NAME = os.fsdecode(b"\xff\xfe.png")
FORGED = "fake\n0.999\tFORGED.png"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def run_bytes(*args: str) -> bytes:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return result.stdout_bytes


@pytest.fixture
def odd(tmp_path: Path) -> Path:
    """Five images, two with names that break naive code: undecodable bytes, a newline."""
    root = tmp_path / "odd"
    root.mkdir()
    for i, name in enumerate(["a.png", BAD_NAME, FORGED, "z1.png", "z2.png"]):
        noise_image(100 + i).save(os.path.join(root, name), "PNG")
    return root


def _index(index: Path, *args: str) -> dict:
    code, out, err = run("-q", "index", "--index", str(index), "--model", TINY, "--json", *args)
    assert code == 0, err
    return json.loads(out)


# -- 1. file names that are not UTF-8 -------------------------------------------------------


def test_non_utf8_file_name_is_indexed_found_and_kept(tmp_path, odd):
    summary = _index(tmp_path / "idx", str(odd))
    assert summary["added"] == 5 and not summary["skipped"]  # files after it are indexed too
    assert _index(tmp_path / "idx", str(odd))["unchanged"] == 5  # found again: not redone
    with mmsearch.Index.open(tmp_path / "idx", create=False) as index:
        path = os.path.join(odd, BAD_NAME)
        assert index.catalog.find_path(path) is not None
        hit = index.search(Path(path), k=1, include_self=True)[0]
        assert hit.path == path and Path(hit.path).exists()  # it opens again
    raw = run_bytes(
        "query", "--index", str(tmp_path / "idx"), "--image", path, "--include-self", "-0"
    )
    assert os.fsencode(path) in raw.split(b"\0")


# -- 2. output lines cannot be forged -------------------------------------------------------


def test_escape():
    assert escape("plain/path.png") == "plain/path.png"
    assert escape(FORGED) == "fake\\n0.999\\tFORGED.png"
    assert escape("a\x1b[31mred") == "a\\x1b[31mred"
    assert escape(BAD_NAME) == "\\xff\\xfe.png"
    assert escape("line\u2028sep\u202e") == "line\\u2028sep\\u202e"
    assert escape("back\\slash\n") == ("back\\\\slash\\n" if os.sep == "/" else "back\\slash\\n")


def test_file_names_cannot_forge_result_lines(tmp_path, odd):
    _index(tmp_path / "idx", str(odd))
    query = ["query", "--index", str(tmp_path / "idx"), "--image", str(odd / "a.png"), "-k", "4"]
    _, plain, _ = run(*query)
    lines = plain.splitlines()
    assert len(lines) == 4 and all(line.count("\t") == 1 for line in lines)
    assert any(line.endswith("fake\\n0.999\\tFORGED.png") for line in lines)
    _, paths, _ = run(*query, "--paths-only")
    assert len(paths.splitlines()) == 4
    assert not any(line.startswith("0.999") for line in paths.splitlines())
    exact = run_bytes(*query, "--print0").split(b"\0")
    assert exact[-1] == b"" and len(exact) == 5
    assert os.fsencode(odd / FORGED) in exact
    _, as_json, _ = run(*query, "--json")
    assert str(odd / FORGED) in [h["path"] for h in json.loads(as_json)["hits"]]


def test_file_names_cannot_forge_classify_lines(tmp_path, odd):
    """``classify`` prints one line per image and one ``skipped`` line per failure, with
    the names escaped like search results."""
    missing = os.path.join(odd, "gone\nskipped fake: forged")
    images = [str(odd / "a.png"), str(odd / FORGED), missing]
    code, out, err = run("classify", *images, "--model", TINY, "--labels", "cat, dog")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(line.count("\t") == 2 for line in lines)
    assert lines[1].startswith(escape(str(odd / FORGED)) + "\t")
    skipped = [line for line in err.splitlines() if line.startswith("skipped")]
    assert skipped == [f"skipped {escape(missing)}: no such file"]


# -- 3. one writer at a time ----------------------------------------------------------------


def test_second_writer_refused_with_no_wait_and_readers_unaffected(tmp_path, odd):
    index = tmp_path / "idx"
    _index(index, str(odd))
    with WriterLock(index):  # another "process" (its own open file) is writing
        code, out, err = run("index", "--index", str(index), "--no-wait", str(odd))
        assert code == ExitStatus.BUSY
        assert f"pid {os.getpid()}" in err and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err
        code, out, _ = run("query", "--index", str(index), "--image", str(odd / "a.png"))
        assert code == 0 and len(out.splitlines()) == 4  # readers never take the lock


def test_second_writer_waits_and_says_for_whom(tmp_path, odd):
    index = tmp_path / "idx"
    _index(index, str(odd))
    lock = WriterLock(index)
    lock.acquire()
    timer = threading.Timer(1.0, lock.release)
    timer.start()
    try:
        code, out, err = run("index", "--index", str(index), "--json", str(odd))
    finally:
        timer.join()
    assert code == 0, err
    assert f"waiting for another mmsearch process (pid {os.getpid()}) writing this index" in err
    assert json.loads(out)["unchanged"] == 5


def test_lock_is_released_when_the_holder_is_killed(tmp_path):
    script = (
        "import sys, time; from pathlib import Path; from mmsearch.lock import WriterLock; "
        "WriterLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"locked"
    with pytest.raises(mmsearch.MMSearchError, match=f"pid {proc.pid}"):
        WriterLock(tmp_path, wait=False).acquire()
    proc.kill()
    proc.wait()
    with WriterLock(tmp_path, wait=False):  # the kernel dropped it: no stale lock
        pass


# -- 4. a full disk -------------------------------------------------------------------------


def _enospc(*_args, **_kwargs):  # type: ignore[no-untyped-def]
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_full_disk_while_saving_derived_files_still_answers(tmp_path, odd, monkeypatch, caplog):
    import faiss

    index = tmp_path / "idx"
    _index(index, str(odd))
    for path in [*index.glob("vectors-*"), *index.glob("embeddings.f16*")]:
        path.unlink()  # the query must rebuild them, and cannot save them
    monkeypatch.setattr(os, "posix_fallocate", _enospc)

    def write_index(*_args):  # type: ignore[no-untyped-def]
        raise RuntimeError("Error in faiss::FileIOWriter: write error: No space left")

    monkeypatch.setattr(faiss, "write_index", write_index)
    code, out, err = run("query", "--index", str(index), "--image", str(odd / "a.png"))
    assert code == 0, err
    assert len(out.splitlines()) == 4
    warned = [r for r in caplog.records if "no space left" in r.getMessage()]
    assert len(warned) == 1  # warned once, not per file
    code, out, err = run("info", "--index", str(index))
    assert code == 0 and "images:   5" in out


def test_full_disk_on_commit_is_one_line_and_keeps_committed_data(tmp_path, odd, monkeypatch):
    from sqlalchemy.engine.default import DefaultDialect

    index = tmp_path / "idx"
    _index(index, str(odd / "a.png"))

    def do_commit(self, dbapi_connection):  # type: ignore[no-untyped-def]
        exc = sqlite3.OperationalError("database or disk is full")
        exc.sqlite_errorname = "SQLITE_FULL"
        raise exc

    monkeypatch.setattr(DefaultDialect, "do_commit", do_commit)
    code, _, err = run("index", "--index", str(index), "--model", TINY, str(odd))
    assert code == ExitStatus.STORAGE
    assert "no space left" in err and "catalog.sqlite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    monkeypatch.undo()
    with mmsearch.Index.open(index, create=False) as opened:
        assert opened.catalog.count("image") == 1  # what was committed is intact


def test_storage_error_names_path_action_and_errno():
    exc = StorageError.from_os_error(OSError(errno.EDQUOT, "quota"), "writing x", "/i/x")
    assert exc.errno == errno.EDQUOT and exc.path == "/i/x" and exc.action == "writing x"
    assert str(exc) == "writing x failed: disk quota exceeded (/i/x)"


def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0
    except OSError:
        return False


@pytest.fixture
def tmpfs(tmp_path: Path):
    """A 3 MB tmpfs (needs root and mount rights; skipped elsewhere)."""
    where = tmp_path / "small"
    where.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=3m", "tmpfs", str(where)):
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.faults
def test_really_full_disk(tmp_path, tmpfs):
    photos = tmp_path / "many"
    photos.mkdir()
    for i in range(40):
        noise_image(500 + i).save(photos / f"{i:02d}.png")
    st = os.statvfs(tmpfs)
    (tmpfs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 24_000))
    args = ["-q", "index", "--index", str(tmpfs / "idx"), "--model", TINY, "--batch-size", "4"]
    code, _, err = run(*args, str(photos))
    assert code == ExitStatus.STORAGE, err
    assert "no space left" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    (tmpfs / "filler").unlink()
    code, out, err = run(*args, "--json", str(photos))
    assert code == 0, err  # once there is room again, the run completes
    assert json.loads(out)["added"] + json.loads(out)["unchanged"] == 40
    with mmsearch.Index.open(tmpfs / "idx", create=False) as index:
        assert index.vectors("image").count == index.catalog.count("image") == 40


# -- 5. a read-only index -------------------------------------------------------------------


@pytest.fixture
def read_only_index(tmp_path: Path, odd: Path):
    """An index on a read-only bind mount (needs mount rights; skipped elsewhere)."""
    index = tmp_path / "idx"
    _index(index, str(odd))
    view = tmp_path / "ro"
    view.mkdir()
    if not _mount("--bind", str(index), str(view)):
        pytest.skip("cannot bind-mount here")
    if not _mount("-o", "remount,ro,bind", str(view)):
        subprocess.run(["umount", "-l", str(view)], check=False)
        pytest.skip("cannot remount read-only here")
    yield view
    subprocess.run(["umount", "-l", str(view)], check=False)


@pytest.mark.faults
def test_read_only_index_answers_queries_and_refuses_writes(read_only_index, odd):
    code, out, err = run("query", "--index", str(read_only_index), "--image", str(odd / "a.png"))
    assert code == 0, err
    assert len(out.splitlines()) == 4 and not err
    code, out, err = run("info", "--index", str(read_only_index))
    assert code == 0 and "images:   5" in out
    code, _, err = run("index", "--index", str(read_only_index), str(odd))
    assert code == ExitStatus.STORAGE
    assert "read-only file system" in err and len(err.strip().splitlines()) == 1


@pytest.mark.faults
def test_read_only_index_with_stale_derived_files(tmp_path, odd):
    """Derived files missing on read-only media: rebuilt in memory, answered right."""
    index = tmp_path / "idx"
    _index(index, str(odd))
    for path in index.glob("vectors-*"):
        path.unlink()
    view = tmp_path / "ro"
    view.mkdir()
    if not (_mount("--bind", str(index), str(view)) and _mount("-o", "remount,ro,bind", str(view))):
        subprocess.run(["umount", "-l", str(view)], check=False)
        pytest.skip("cannot mount read-only here")
    try:
        with mmsearch.Index.open(view, create=False) as opened:
            assert opened.catalog.read_only
            hit = opened.search(odd / "z1.png", k=1, include_self=True)[0]
            assert hit.path == str(odd / "z1.png")
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


# -- 6. -q means quiet ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:PYTHON WARNING")
def test_quiet_silences_c_libraries_and_warnings_but_not_errors(tmp_path, odd, capfd, monkeypatch):
    from mmsearch.ann.faiss_index import VectorIndex

    original = VectorIndex.save

    def noisy_save(self, *args):  # type: ignore[no-untyped-def]
        os.write(2, b"C LIBRARY NOISE\n")  # what faiss and libtiff do
        warnings.warn("PYTHON WARNING", UserWarning, stacklevel=1)
        return original(self, *args)

    monkeypatch.setattr(VectorIndex, "save", noisy_save)
    with warnings.catch_warnings():
        code, _, err = run("-q", "index", "--index", str(tmp_path / "q"), "--model", TINY, str(odd))
    captured = capfd.readouterr()
    assert code == 0
    assert "NOISE" not in captured.err + err and "PYTHON WARNING" not in captured.err + err
    with warnings.catch_warnings():  # without -q the same noise shows: the test can fail
        run("index", "--index", str(tmp_path / "loud"), "--model", TINY, str(odd))
    assert "C LIBRARY NOISE" in capfd.readouterr().err
    code, _, err = run("-q", "query", "--index", str(tmp_path / "none"), "x")
    assert code == ExitStatus.NO_INDEX and "no index" in err  # errors still show


# -- 7. binary files given as texts ---------------------------------------------------------


def test_binary_files_given_as_texts_are_skipped_with_a_reason(tmp_path, odd):
    png_as_txt = tmp_path / "photo.txt"
    shutil.copy(odd / "a.png", png_as_txt)
    nul = tmp_path / "data.txt"
    nul.write_bytes(b"abc\x00\x01\x02" * 100)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1") * 10)
    good = tmp_path / "good.txt"
    good.write_text("a red car\nt\u00e9l\u00e9phone\n")
    summary = _index(tmp_path / "idx", *(f"--texts={p}" for p in (png_as_txt, nul, latin, good)))
    assert summary["added"] == 2
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert reasons["photo.txt"] == "not a text file: a PNG image"
    assert "NUL" in reasons["data.txt"] and "UTF-8" in reasons["latin.txt"]


def test_waiting_writer_gets_the_lock_once_released(tmp_path):
    """The waiting writer really waits (asserted on the order of events, not on time)."""
    events: list[str] = []
    holder = WriterLock(tmp_path)
    holder.acquire()
    waiter = WriterLock(tmp_path, on_wait=lambda pid: events.append(f"wait {pid}"))

    def take() -> None:
        with waiter:
            events.append("got")

    thread = threading.Thread(target=take)
    thread.start()
    while not events:
        time.sleep(0.01)
    events.append("released")
    holder.release()
    thread.join()
    assert events == [f"wait {os.getpid()}", "released", "got"]
