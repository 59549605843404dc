"""The architecture holds: import contracts kept (and a broken one caught), and start-up
imports only what the command needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, noise_image

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "faiss", "sqlalchemy")


def _modules_after(code: str, *args: str) -> set[str]:
    """Top-level modules imported by a fresh interpreter running ``code``."""
    probe = code + "\nimport sys\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    out = subprocess.run(
        [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def _lint_imports(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe)], cwd=cwd, capture_output=True, text=True)


def test_import_mmsearch_loads_nothing_heavy():
    loaded = _modules_after("import mmsearch, mmsearch.cli, mmsearch.errors")
    assert not loaded & set(HEAVY), loaded & set(HEAVY)


def test_the_query_path_imports_neither_torch_nor_sqlalchemy():
    """What `mmsearch query` imports before it opens an index: the facade and everything it
    imports at module level. (A session module importing the ORM catalog put 0.65 s of
    SQLAlchemy back on every cold query; only the slow -X importtime test saw it.)"""
    loaded = _modules_after("import mmsearch.cli, mmsearch.index")
    assert not loaded & {"torch", "open_clip", "sqlalchemy"}, sorted(loaded)


def test_contracts_kept_and_a_broken_one_fails(tmp_path):
    assert _lint_imports(ROOT).returncode == 0
    copy = tmp_path / "repo"
    copy.mkdir()
    for name in ("mmsearch", "indexer"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", copy / "setup.cfg")
    catalog = copy / "mmsearch" / "catalog.py"
    catalog.write_text(catalog.read_text() + "\nimport faiss  # a component reaching into ANN\n")
    broken = _lint_imports(copy)
    assert broken.returncode != 0
    assert "faiss only in the ANN package BROKEN" in broken.stdout


def test_query_by_indexed_image_path_imports_no_torch(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        noise_image(seed).save(photos / f"{seed}.png")
    index = str(tmp_path / "idx")
    subprocess.run(
        [sys.executable, "-m", "mmsearch", "-q", "index", "--index", index, "--model", TINY,
         str(photos)],
        check=True, capture_output=True,
    )  # fmt: skip
    code = (
        "import sys\n"
        "from mmsearch.cli import main\n"
        "sys.argv = ['mmsearch', 'query', '--index', sys.argv[1], '--image', sys.argv[2]]\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
    )
    loaded = _modules_after(code, index, str(photos / "1.png"))
    assert "torch" not in loaded and "open_clip" not in loaded
    assert "faiss" in loaded  # the query did run a search


# What the repository may hold at its top level, and file kinds that are only ever a run's
# output. (A catalog from a test run, idx3/catalog.sqlite, and a command's b.out and b.err
# were committed with a merge and stayed for weeks.)
TOP_LEVEL = {
    ".ci",
    ".gitignore",
    "README.md",
    "bench",
    "data",
    "docs",
    "indexer",
    "mmsearch",
    "pyproject.toml",
    "setup.cfg",
    "tests",
}
OUTPUT_SUFFIXES = (".sqlite", ".sqlite-wal", ".faiss", ".npy", ".out", ".err", ".log", ".pyc")


def _tracked_files() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(
        [git, "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [p for p in out.stdout.split("\0") if p]


def stray_files(paths: list[str]) -> list[str]:
    """Tracked paths outside the layout, or of a kind only a run writes."""
    return sorted(
        p for p in paths if p.split("/")[0] not in TOP_LEVEL or p.endswith(OUTPUT_SUFFIXES)
    )


def test_the_repository_holds_no_run_output():
    tracked = _tracked_files()
    assert "mmsearch/__init__.py" in tracked
    assert stray_files(tracked) == []
    # The check itself: the files that were once committed by mistake are caught.
    assert stray_files(["idx3/catalog.sqlite", "b.out", "tests/x.err", "README.md"]) == [
        "b.out",
        "idx3/catalog.sqlite",
        "tests/x.err",
    ]
