"""A small shapes index built with the README's fine-tuned tiny model (the ``shapes_model``
fixture), for the tests of the assistants' doors (MCP, clip-retrieval API, export)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner
from conftest import load_make_shapes

from mmsearch.cli import cli


@dataclass(frozen=True)
class ShapesIndex:
    index_dir: Path
    images: Path
    captions: dict[str, str]  # absolute image path → its generated caption

    def caption(self, path: str) -> str:
        return self.captions[str(Path(path).resolve())]


def build_shapes_index(tmp: Path, model_dir: Path, n: int = 150, seed: int = 7) -> ShapesIndex:
    """``n`` single-shape images (caption "a red circle" …) indexed by the real CLI."""
    pairs = load_make_shapes().make_shapes(tmp / "shapes", n=n, seed=seed, kinds={"single": 1.0})
    index_dir = tmp / "idx"
    images = pairs.parent / "images"
    done = CliRunner().invoke(
        cli, ["-q", "index", "--index", str(index_dir), "--model", str(model_dir), str(images)]
    )
    assert done.exit_code == 0, done.output
    with open(pairs, newline="") as f:
        captions = {
            str((pairs.parent / r["image"]).resolve()): r["caption"] for r in csv.DictReader(f)
        }
    return ShapesIndex(index_dir, images, captions)
