"""End-to-end tests of the real CLI on generated images (CliRunner, and one subprocess)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import BAD_FILES, GOOD_IMAGES, TINY, noise_image

from indexer.runtime_encoder import RuntimeEncoder
from mmsearch.cli import cli
from mmsearch.encoder import Encoder
from mmsearch.status import ExitStatus

HIT_LINE = re.compile(r"^-?\d\.\d{3}\t\S.*$")


def run(*args: str, ok: bool = True) -> tuple[int, str, str]:
    runner = CliRunner()
    result = runner.invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.stderr or result.output
    return result.exit_code, result.stdout, result.stderr


#: What encodes a run's images: torch, or the model's exported towers (no GPU here).
ENGINES = (Encoder, RuntimeEncoder)


def index_json(index: Path, *args: str) -> dict:
    _, out, _ = run("-q", "index", "--index", str(index), "--model", TINY, "--json", *args)
    return json.loads(out)


@pytest.fixture
def encoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images that go through the image tower, batch by batch (torch's, or the
    exported one that runs encode with once the tiny model's export is in the cache)."""
    sizes: list[int] = []
    for engine in ENGINES:
        original = engine.encode_image_tensors

        def spy(self, batch, original=original):  # type: ignore[no-untyped-def]
            sizes.append(len(batch))
            return original(self, batch)

        monkeypatch.setattr(engine, "encode_image_tensors", spy)
    return sizes


def test_index_reports_counts_and_skips_bad_files(tmp_path, photos, encoded):
    summary = index_json(tmp_path / "idx", str(tmp_path / "photos"))
    assert summary["added"] == GOOD_IMAGES
    assert summary["scanned"] == GOOD_IMAGES + BAD_FILES
    assert sum(encoded) == GOOD_IMAGES
    reasons = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(reasons) == {"broken.jpg", "empty.png", "notes.jpg"}
    assert reasons["empty.png"] == "empty file"
    assert "not an image" in reasons["notes.jpg"]
    assert "truncated" in reasons["broken.jpg"] or "corrupt" in reasons["broken.jpg"]
    for key in ("updated", "unchanged", "removed", "reused"):
        assert summary[key] == 0
    assert summary["model_seconds"] > 0 and summary["encode_seconds"] > 0
    assert summary["engine"] in ("onnx", "torch:cpu")
    assert summary["model_seconds"] + summary["encode_seconds"] < summary["seconds"]


def test_plain_summary_lists_skipped_on_stderr(tmp_path, photos):
    _, out, err = run(
        "-q", "index", "--index", str(tmp_path / "i"), "--model", TINY, str(tmp_path / "photos")
    )
    assert out.startswith(f"scanned {GOOD_IMAGES + BAD_FILES}, added {GOOD_IMAGES}")
    times = r"(onnx|torch:cpu): model load [0-9.]+s, encoding [0-9.]+s"
    assert re.search(rf" in [0-9.]+s \({times}\)$", out.strip())
    assert "skipped" in err and "empty.png: empty file" in err


def test_query_all_directions(tmp_path, photos):
    idx = str(tmp_path / "idx")
    texts = tmp_path / "captions.txt"
    texts.write_text("a red car\n\na dog on the beach\nsunset over the sea\n")
    index_json(tmp_path / "idx", str(tmp_path / "photos"), "--texts", str(texts))

    _, out, _ = run("query", "--index", idx, "a red car", "-k", "3")  # text → image
    lines = out.splitlines()
    assert len(lines) == 3 and all(HIT_LINE.match(line) for line in lines)
    assert all(Path(line.split("\t")[1]).is_absolute() for line in lines)

    _, out, _ = run("query", "--index", idx, "a red car", "--target", "text", "-k", "1")
    assert out.splitlines()[0].endswith("\ta red car")  # text → text finds itself

    _, out, _ = run("query", "--index", idx, "--image", str(photos["b.png"]), "--target", "text")
    assert {line.split("\t")[1] for line in out.splitlines()} == {
        "a red car",
        "a dog on the beach",
        "sunset over the sea",
    }  # image → text

    _, out, _ = run("query", "--index", idx, "--image", str(photos["b.png"]), "--paths-only")
    paths = out.splitlines()
    assert len(paths) == GOOD_IMAGES - 1  # the query image is not its own hit
    assert str(photos["b.png"]) not in paths

    _, out, _ = run(
        "query",
        "--index",
        idx,
        "--image",
        str(photos["b.png"]),
        "--include-self",
        "-k",
        "1",
        "--json",
    )
    (hit,) = json.loads(out)["hits"]
    assert hit["path"] == str(photos["b.png"]) and hit["score"] == pytest.approx(1.0, abs=2e-3)


def test_identical_copy_ranks_first_with_score_one(tmp_path, photos):
    idx = str(tmp_path / "idx")
    index_json(tmp_path / "idx", str(tmp_path / "photos"))
    outside = tmp_path / "queries"
    outside.mkdir()
    byte_copy = outside / "copy.png"
    shutil.copy(photos["b.png"], byte_copy)
    _, out, _ = run("query", "--index", idx, "--image", str(byte_copy), "-k", "2")
    first = out.splitlines()[0].split("\t")
    assert first[1] == str(photos["b.png"]) and float(first[0]) >= 0.999
    # Same pixels in another container: encoded afresh, must still match ≈ 1.0.
    pixel_copy = outside / "copy.bmp"
    noise_image(2).save(pixel_copy)
    _, out, _ = run("query", "--index", idx, "--image", str(pixel_copy), "-k", "2")
    first, second = (line.split("\t") for line in out.splitlines())
    assert first[1] == str(photos["b.png"]) and float(first[0]) >= 0.99
    assert float(second[0]) < float(first[0])


def test_exif_orientation_applied(tmp_path, photos):
    idx = str(tmp_path / "idx")
    index_json(tmp_path / "idx", str(tmp_path / "photos"))
    _, out, _ = run(
        "query",
        "--index",
        idx,
        "--image",
        str(photos["rotated.jpg"]),
        "--include-self",
        "-k",
        "1",
        "--json",
    )
    (hit,) = json.loads(out)["hits"]
    assert hit["path"].endswith("rotated.jpg")
    assert (hit["width"], hit["height"]) == (60, 120)  # stored 120×60, EXIF rotates 90°


def test_reindex_is_incremental(tmp_path, photos, encoded):
    idx = tmp_path / "idx"
    root = tmp_path / "photos"
    index_json(idx, str(root))
    encoded.clear()

    assert index_json(idx, str(root))["unchanged"] == GOOD_IMAGES
    assert encoded == []  # nothing re-encoded on an unchanged tree

    noise_image(50).save(root / "new.png")  # added
    noise_image(51).save(photos["a.jpg"], "JPEG", quality=95)  # modified
    photos["c.webp"].unlink()  # deleted
    photos["sub/d.bmp"].rename(root / "moved.bmp")  # renamed + moved
    shutil.copy(photos["b.png"], root / "sub" / "b-copy.png")  # duplicate content
    summary = index_json(idx, str(root))
    assert summary["added"] == 1
    assert summary["updated"] == 1
    assert summary["removed"] == 1
    assert summary["reused"] == 2
    assert summary["unchanged"] == GOOD_IMAGES - 3
    assert sum(encoded) == 2  # only the new and the modified file were encoded

    _, out, _ = run("info", "--index", str(idx), "--json")
    assert json.loads(out)["images"] == GOOD_IMAGES + 1
    _, out, _ = run(
        "query",
        "--index",
        str(idx),
        "--image",
        str(root / "moved.bmp"),
        "--include-self",
        "-k",
        "1",
        "--paths-only",
    )
    assert out.strip() == str(root / "moved.bmp")
    _, out, _ = run("query", "--index", str(idx), "x", "-k", "50", "--paths-only")
    assert str(photos["c.webp"]) not in out and str(photos["sub/d.bmp"]) not in out


def test_interrupted_run_resumes(tmp_path, photos, monkeypatch):
    idx = tmp_path / "idx"
    calls = {"n": 0}
    for engine in ENGINES:
        original = engine.encode_image_tensors

        def dies_on_second_batch(self, batch, original=original):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return original(self, batch)

        monkeypatch.setattr(engine, "encode_image_tensors", dies_on_second_batch)
    result = CliRunner().invoke(
        cli,
        [
            "-q",
            "index",
            "--index",
            str(idx),
            "--model",
            TINY,
            "--batch-size",
            "2",
            str(tmp_path / "photos"),
        ],
    )
    assert result.exit_code != 0 and calls["n"] == 2
    monkeypatch.undo()  # both engines encode again
    summary = index_json(idx, str(tmp_path / "photos"))
    assert summary["unchanged"] == 2  # the first batch was committed
    assert summary["added"] == GOOD_IMAGES - 2


def test_texts_jsonl_csv_and_truncation(tmp_path):
    idx = tmp_path / "idx"
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a cat"}\nnot json\n{"body": "x"}\n{"text": "a cat"}\n')
    csv = tmp_path / "t.csv"
    csv.write_text("id,caption\n1,a red car\n2," + "very long " * 60 + "\n")
    summary = index_json(idx, "--texts", str(jsonl))
    assert summary["added"] == 1  # the duplicate "a cat" is stored once
    assert len(summary["skipped"]) == 2
    summary = index_json(idx, "--texts", str(csv), "--column", "caption")
    assert summary["added"] == 2 and summary["truncated"] == 1
    code, _, err = run(
        "-q", "index", "--index", str(idx), "--model", TINY, "--texts", str(csv), ok=False
    )
    assert code == ExitStatus.INPUT and "caption" in err  # lists the available columns


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["query", "--index", "{idx}", "   "], ExitStatus.INPUT, "empty query"),
        (["query", "--index", "{tmp}/nowhere", "cat"], ExitStatus.NO_INDEX, "no index at"),
        (
            ["query", "--index", "{idx}", "--image", "{tmp}/missing.png"],
            ExitStatus.INPUT,
            "cannot read query image",
        ),
        (
            ["query", "--index", "{idx}", "--image", "{tmp}/photos/notes.jpg"],
            ExitStatus.INPUT,
            "not an image",
        ),
        (
            ["query", "--index", "{idx}", "--model", "ViT-B-31", "cat"],
            ExitStatus.MODEL,
            "Did you mean",
        ),
        (
            ["query", "--index", "{idx}", "--model", "ViT-B-32", "cat"],
            ExitStatus.MODEL,
            "--reembed",
        ),
        (
            ["index", "--index", "{tmp}/new", "--model", "ViT-B-32", "{tmp}/photos"],
            ExitStatus.MODEL,
            "--pretrained",
        ),
    ],
)
def test_errors_are_one_line_with_exit_code(tmp_path, photos, args, status, message):
    idx = tmp_path / "idx"
    index_json(idx, str(tmp_path / "photos"))
    argv = [a.format(idx=idx, tmp=tmp_path) for a in args]
    code, out, err = run(*argv, ok=False)
    assert code == status, err
    assert message in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0  # one line
    assert out == ""


def test_model_missing_weights_fails_fast(tmp_path, photos, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    import open_clip

    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a model was built although its weights are unavailable")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", must_not_build)
    code, _, err = run(
        "index",
        "--index",
        str(tmp_path / "x"),
        "--model",
        "ViT-B-32",
        str(tmp_path / "photos"),
        ok=False,
    )
    assert code == ExitStatus.MODEL
    assert "--model" in err and "--pretrained" in err


def test_stale_or_missing_vector_files_are_repaired(tmp_path, photos):
    idx = tmp_path / "idx"
    index_json(idx, str(tmp_path / "photos"))
    (idx / "vectors-image.faiss").unlink()
    _, out, _ = run("query", "--index", str(idx), "cat", "-k", "100", "--paths-only")
    assert len(out.splitlines()) == GOOD_IMAGES
    (idx / "vectors-image.faiss").write_bytes(b"garbage")
    _, out, _ = run("query", "--index", str(idx), "cat", "-k", "100", "--paths-only")
    assert len(out.splitlines()) == GOOD_IMAGES
    # An index file from an older generation (saved before a file was added) is topped up.
    old = (idx / "vectors-image.faiss").read_bytes(), (idx / "vectors-image.json").read_text()
    noise_image(77).save(tmp_path / "photos" / "late.png")
    index_json(idx, str(tmp_path / "photos"))
    (idx / "vectors-image.faiss").write_bytes(old[0])
    (idx / "vectors-image.json").write_text(old[1])
    _, out, _ = run("query", "--index", str(idx), "cat", "-k", "100", "--paths-only")
    assert str(tmp_path / "photos" / "late.png") in out.splitlines()


def test_info(tmp_path, photos):
    idx = tmp_path / "idx"
    index_json(idx, str(tmp_path / "photos"))
    _, out, _ = run("info", "--index", str(idx))
    assert f"images:   {GOOD_IMAGES}" in out and TINY in out and "Flat" in out
    _, out, _ = run("info", "--index", str(idx), "--json")
    info = json.loads(out)
    assert info["dim"] == 128 and info["vectors"][0]["index_type"] == "Flat"


def test_info_shows_the_tuning_of_each_query_modality(tmp_path, photos, monkeypatch):
    import mmsearch
    from mmsearch.ann import policy as index_policy

    monkeypatch.setattr(index_policy, "EXACT_MAX", 300)
    colours, things = ["red", "green", "blue", "grey"], ["car", "boat", "dog", "tree", "house"]
    texts = [f"{c} {t} number {i}" for i in range(60) for c in colours for t in things]
    idx = tmp_path / "idx"
    with mmsearch.Index.open(idx, model=TINY) as index:
        index.add_images([tmp_path / "photos"])
        index.add_texts(texts)
    _, out, _ = run("info", "--index", str(idx))
    assert re.search(r"text: 1200 in IVF\d+,PQ\d+ \(.*nprobe=\d+", out), out
    assert re.search(r"text queries: nprobe=\d+, re-rank x\d+, tuned recall@10 [\d.]+", out)
    assert re.search(r"image queries: nprobe=\d+, re-rank x\d+", out), out
    assert "by_query" not in out
    # The run exported the model's towers; this machine has no GPU and the tests ask for
    # the CPU: the next run encodes with them.
    assert "indexing: onnx (the model's exported towers)" in out, out


def test_index_env_var_and_several_folders(tmp_path, photos, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    noise_image(300).save(other / "x.png")
    monkeypatch.setenv("MMSEARCH_INDEX", str(tmp_path / "env-idx"))
    run("-q", "index", "--model", TINY, str(tmp_path / "photos"))
    run("-q", "index", str(other))  # the index remembers its model
    _, out, _ = run("info", "--json")
    assert json.loads(out)["images"] == GOOD_IMAGES + 1


def test_real_subprocess(tmp_path, photos):
    env = {**os.environ, "MMSEARCH_INDEX": str(tmp_path / "idx")}
    cmd = [sys.executable, "-m", "mmsearch"]
    done = subprocess.run(
        [*cmd, "index", "--model", TINY, "--json", str(tmp_path / "photos")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == GOOD_IMAGES
    done = subprocess.run(
        [*cmd, "query", "a red car", "-k", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert all(HIT_LINE.match(line) for line in done.stdout.splitlines())
    assert len(done.stdout.splitlines()) == 2
    done = subprocess.run([*cmd, "query", ""], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == ExitStatus.INPUT and done.stdout == ""
    assert done.stderr.startswith("Error: empty query")
