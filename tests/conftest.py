"""Shared test setup: never touch the network; images generated on the fly."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before anything imports huggingface_hub
os.environ.setdefault("MMSEARCH_DEVICE", "cpu")
# Exported query runtimes go to a cache shared by the session's tests (never ~/.cache):
# each model is exported once per test session.
import tempfile  # noqa: E402

os.environ.setdefault("MMSEARCH_CACHE", tempfile.mkdtemp(prefix="mmsearch-test-cache-"))

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

TINY = "mmsearch-tiny"
TINY_DIM = 128
ROOT = Path(__file__).resolve().parents[1]


def load_make_shapes() -> ModuleType:
    """data/make_shapes.py as a module (data/ holds scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("make_shapes", ROOT / "data" / "make_shapes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def unit_vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Seeded random unit rows (float32)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def clustered_dataset(
    n: int, nq: int, dim: int, n_clusters: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Database and query unit vectors drawn around shared random cluster centres.

    In the spirit of faiss's ``contrib.datasets.SyntheticDataset``: seeded, structured
    enough for a coarse quantiser to learn, noisy enough that neighbours are not trivial.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        x = centres[rng.integers(0, n_clusters, m)]
        x = x + noise * rng.standard_normal((m, dim)).astype(np.float32)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return draw(n), draw(nq)


def noise_image(
    seed: int, size: tuple[int, int] = (96, 72), tint: tuple[int, int, int] = (0, 0, 0)
) -> Image.Image:
    """A seeded random RGB image: every seed gives a clearly different picture."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(size[1] // 8 + 1, size[0] // 8 + 1, 3), dtype=np.uint8)
    arr = np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[: size[1], : size[0]]
    arr = np.clip(arr.astype(np.int16) + np.array(tint), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def exif_rotated_jpeg(path: Path, seed: int) -> None:
    """A landscape JPEG whose EXIF says 'rotate 90° clockwise' (orientation 6)."""
    img = noise_image(seed, size=(120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    """A folder of images in several formats plus three files that are not images."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    files = {
        "a.jpg": ("JPEG", 1),
        "b.png": ("PNG", 2),
        "c.webp": ("WEBP", 3),
        "sub/d.bmp": ("BMP", 4),
        "sub/e.tiff": ("TIFF", 5),
    }
    out: dict[str, Path] = {}
    for name, (fmt, seed) in files.items():
        path = root / name
        kwargs = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
        noise_image(seed).save(path, fmt, **kwargs)
        out[name] = path
    gif = root / "f.gif"
    noise_image(6).convert("P", palette=Image.Palette.ADAPTIVE).save(gif)
    out["f.gif"] = gif
    rotated = root / "rotated.jpg"
    exif_rotated_jpeg(rotated, 7)
    out["rotated.jpg"] = rotated
    # Not images: a truncated JPEG, an empty file, a text file named .jpg.
    truncated = root / "broken.jpg"
    truncated.write_bytes(out["a.jpg"].read_bytes()[:300])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not a picture\n")
    (root / ".hidden").mkdir()
    noise_image(99).save(root / ".hidden" / "secret.png")
    out.update(broken=truncated, empty=root / "empty.png", text=root / "notes.jpg")
    return out


@pytest.fixture
def catalog(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An empty catalog in a temporary index directory."""
    from mmsearch.catalog import Catalog

    with Catalog(tmp_path / "index" / "catalog.sqlite") as cat:
        yield cat


GOOD_IMAGES = 7  # images the fixture makes that can be indexed
BAD_FILES = 3  # broken.jpg, empty.png, notes.jpg


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[tuple[object, int]]:
    """faiss-gpu with one GPU, simulated: the "GPU" copy of an index is the CPU index
    itself, so the GPU code paths run on CPU-only machines (CI). Returns the recorded
    (index, ngpu) of every move to the GPUs."""
    import faiss

    moved: list[tuple[object, int]] = []

    def to_all_gpus(index, co=None, ngpu=-1):  # type: ignore[no-untyped-def]
        moved.append((index, ngpu))
        return index

    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    # faiss.Kmeans re-asks for the count (gpu=1 == True) through its own import of it.
    monkeypatch.setattr(faiss.extra_wrappers, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", to_all_gpus)
    return moved


@pytest.fixture(scope="session")
def shapes_model(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The README's fine-tuning demo, run once per test session: the tiny random model
    fine-tuned on 4,000 generated shape pairs (seed 0) with ``--epochs 18 --lr 2e-3
    --warmup 0.3`` (504 steps, about two minutes on 2 idle cores). Returns ``(model_dir, result,
    pairs_csv)``: ``result`` is the :class:`~mmsearch.finetune.FinetuneResult` with recall
    before and after.

    ``MMSEARCH_TEST_SHAPES_MODEL=DIR`` reuses a model a previous session saved with this
    recipe (``result`` and ``pairs_csv`` are then None) — a development shortcut, never set
    in CI."""
    from mmsearch.finetune import FinetuneConfig, finetune

    cached = os.environ.get("MMSEARCH_TEST_SHAPES_MODEL")
    if cached:
        return Path(cached), None, None
    tmp = tmp_path_factory.mktemp("shapes")
    pairs = load_make_shapes().make_shapes(
        tmp / "shapes", n=4000, seed=0, kinds={"single": 0.5, "count": 0.25, "pair": 0.25}
    )
    out = tmp / "tuned"
    result = finetune(
        pairs,
        out,
        model=TINY,
        device="cpu",
        config=FinetuneConfig(epochs=18, batch_size=128, lr=2e-3, warmup=0.3),
    )
    return out, result, pairs
