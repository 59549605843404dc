"""The architecture holds: import contracts kept (and a broken one caught), and start-up
imports only what the command needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

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
