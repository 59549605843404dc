"""``mmsearch export`` / ``mmsearch import``: embeddings out to clip-retrieval's layout and
to Parquet, and back into a fresh index without encoding (the same top-10 for 20 queries);
the files load with numpy and pyarrow; a different model is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY
from shapes_index import ShapesIndex, build_shapes_index

import mmsearch
from mmsearch.cli import cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(scope="module")
def shapes(shapes_model, tmp_path_factory: pytest.TempPathFactory) -> ShapesIndex:
    model_dir, _, _ = shapes_model
    built = build_shapes_index(tmp_path_factory.mktemp("exchange"), model_dir, n=120, seed=11)
    with mmsearch.Index.open(built.index_dir) as index:
        index.add_texts(sorted(set(built.captions.values())), source="captions")
    return built


def queries(shapes: ShapesIndex) -> list[str]:
    found = sorted(set(shapes.captions.values()))  # 15 colour-shape captions, and more
    extra = ["a red shape", "two circles", "something blue", "a triangle", "a green thing"]
    texts = (found + extra)[:20]
    assert len(texts) == 20, texts
    return texts


def top10(index_dir: Path, texts: list[str]) -> list[list[str]]:
    out = []
    with mmsearch.Index.open(index_dir, create=False) as index:
        for text in texts:
            out.append([h.path for h in index.search(text, k=10)])
            out.append([h.text for h in index.search(text, k=10, target="text")])
    return out


def invoke(*args: str) -> str:
    done = CliRunner().invoke(cli, list(args))
    assert done.exit_code == 0, done.output
    return done.stdout


@pytest.mark.slow  # a shapes index (120 images) and two imports: ~20 s on 2 busy cores
@pytest.mark.parametrize("fmt", ["clip", "parquet"])
def test_export_then_import_gives_the_same_top10(
    shapes: ShapesIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")
    out = tmp_path / ("export" if fmt == "clip" else "export.parquet")
    report = json.loads(
        invoke("export", str(out), "--format", fmt, "--index", str(shapes.index_dir), "--json")
    )
    n_images, n_texts = len(shapes.captions), len(set(shapes.captions.values()))
    assert (report["images"], report["texts"]) == (n_images, n_texts)
    if fmt == "clip":  # the files clip-retrieval's back end reads
        img = np.load(out / "img_emb" / "img_emb_0.npy")
        txt = np.load(out / "text_emb" / "text_emb_0.npy")
        meta = pq.read_table(out / "metadata" / "metadata_0.parquet")
        assert img.shape == (n_images, img.shape[1]) and img.dtype == np.float16
        assert txt.shape == (n_texts, img.shape[1])
        assert meta.num_rows == n_images
        paths = meta.column("image_path").to_pylist()
        assert set(paths) == set(shapes.captions)
        assert np.allclose(np.linalg.norm(img.astype(np.float32), axis=1), 1, atol=1e-2)
    else:
        table = pq.read_table(out)
        assert table.num_rows == n_images + n_texts
        assert b"mmsearch_model" in table.schema.metadata
        assert len(table.column("embedding")[0]) > 0

    fresh = tmp_path / "fresh"
    summary = json.loads(invoke("import", str(out), "--index", str(fresh), "--json"))
    assert summary["added"] == n_images + n_texts
    texts = queries(shapes)
    assert top10(fresh, texts) == top10(shapes.index_dir, texts)
    # Again: everything is there already, nothing added twice.
    again = json.loads(invoke("import", str(out), "--index", str(fresh), "--json"))
    assert again["added"] == 0

    other = tmp_path / "other"
    with mmsearch.Index.open(other, model=TINY) as index:
        index.add_texts(["a red circle"])  # an index of another model
    done = CliRunner().invoke(cli, ["import", str(out), "--index", str(other)])
    assert done.exit_code != 0
    assert "model" in done.output.lower(), done.output


@pytest.mark.slow  # the shapes index of this module
def test_import_of_a_foreign_export_needs_its_model(
    shapes: ShapesIndex, shapes_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MMSEARCH_QUERY_RUNTIME", "torch")
    out = tmp_path / "export"
    invoke("export", str(out), "--index", str(shapes.index_dir))
    (out / "mmsearch_model.json").unlink()  # as clip-retrieval writes it: no model record
    fresh = tmp_path / "fresh"
    done = CliRunner().invoke(cli, ["import", str(out), "--index", str(fresh)])
    assert done.exit_code != 0 and "--model" in done.output, done.output
    model_dir, _, _ = shapes_model
    summary = json.loads(
        invoke("import", str(out), "--index", str(fresh), "--model", str(model_dir), "--json")
    )
    assert summary["added"] == len(shapes.captions) + len(set(shapes.captions.values()))
    texts = queries(shapes)
    assert top10(fresh, texts) == top10(shapes.index_dir, texts)


def test_import_refuses_embeddings_of_another_dimension(tmp_path: Path) -> None:
    out = tmp_path / "foreign"  # what clip-retrieval writes, 7 dimensions
    for folder in ("img_emb", "metadata"):
        (out / folder).mkdir(parents=True)
    np.save(out / "img_emb" / "img_emb_0.npy", np.ones((2, 7), np.float16))
    table = pa.table({"image_path": ["/a.jpg", "/b.jpg"], "caption": ["a", "b"]})
    pq.write_table(table, out / "metadata" / "metadata_0.parquet")
    done = CliRunner().invoke(
        cli, ["import", str(out), "--index", str(tmp_path / "i"), "--model", TINY]
    )
    assert done.exit_code != 0 and "7 dimensions" in done.output, done.output
    assert (
        not (tmp_path / "i" / "catalog.db").exists()
        or mmsearch.Index.open(tmp_path / "i").info().images == 0
    )
