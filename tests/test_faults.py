"""Fault injection: ``kill -9`` the real CLI at seeded random moments of image indexing, text
indexing, ``--reembed`` and a vector-index rebuild, then check that what is left is
consistent and that the next run finishes without encoding anything twice.

Each killed run is the real ``mmsearch`` command line (``mmsearch.cli.main``) in its own
process. Those processes are forked from one warm server process that imported torch,
faiss and mmsearch once (without running anything): a cold ``python -m mmsearch`` spends
seconds importing torch, which would make a dozen trials per phase too slow for CI while
the kill would mostly land in the import. Kill times are uniform over the part of an
uninterrupted run's duration that does work (measured once per phase, same server).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, noise_image

import mmsearch

pytestmark = [pytest.mark.faults, pytest.mark.skipif(os.name != "posix", reason="fork, kill -9")]

#: Trials per phase; MMSEARCH_FAULT_TRIALS raises it (e.g. 50). The image phase runs in
#: the default (fast) test run; text, re-embed and rebuild are marked slow.
TRIALS = int(os.environ.get("MMSEARCH_FAULT_TRIALS", "8"))
#: Trials of the image phase in the default run (it runs TRIALS when slow tests run too).
FAST_TRIALS = int(os.environ.get("MMSEARCH_FAULT_TRIALS", "4"))
IMAGES = 40
TEXTS = 120

SERVER = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import torch, open_clip, faiss  # warm imports only: nothing runs before fork
    import mmsearch.cli, mmsearch.encoder, mmsearch.index
    for line in sys.stdin:
        job = json.loads(line)
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.argv = ["mmsearch", *job["argv"]]
            code = 0
            try:
                mmsearch.cli.main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        deadline = None if job["kill_after"] is None else started + job["kill_after"]
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if deadline is not None and time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                killed = True
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.005)
        elapsed = time.monotonic() - started
        rc = os.waitstatus_to_exitcode(status)
        print(json.dumps({"rc": rc, "killed": killed and rc == -9, "seconds": elapsed}),
              flush=True)
    """
)


class Runner:
    """Runs the CLI in forked processes of one warm server, killing them on request."""

    def __init__(self, workdir: Path) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "MMSEARCH_DEVICE": "cpu"}
        # No ONNX export after runs: the first run would pay for it and the next not, and
        # kill times are spread over a measured run's length (the export is atomic and
        # tested on its own, tests/test_runtime.py).
        env["MMSEARCH_QUERY_RUNTIME"] = "torch"
        env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.log = workdir / "run.log"

    def run(self, *argv: str, kill_after: float | None = None) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"argv": list(argv), "log": str(self.log), "kill_after": kill_after}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        reply["output"] = self.log.read_text(errors="replace")
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory):
    r = Runner(tmp_path_factory.mktemp("runner"))
    yield r
    r.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("corpus")
    photos = root / "photos"
    photos.mkdir()
    for i in range(IMAGES):
        noise_image(1000 + i).save(photos / f"img{i:03d}.png")
    words = [
        "red",
        "green",
        "blue",
        "car",
        "boat",
        "tree",
        "house",
        "cat",
        "dog",
        "sea",
        "sky",
        "hill",
        "road",
        "lamp",
    ]
    rng = random.Random(7)
    texts = {" ".join(rng.sample(words, 5)) + f" number {i}" for i in range(TEXTS)}
    (root / "texts.txt").write_text("\n".join(sorted(texts)) + "\n")
    return {"photos": photos, "texts": root / "texts.txt", "root": root}


@pytest.fixture(scope="module")
def other_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second model (the tiny one, perturbed) to re-embed with."""
    import torch

    from mmsearch.encoder import Encoder

    encoder = Encoder.load(TINY, device="cpu")
    with torch.no_grad():
        for p in encoder.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path_factory.mktemp("model") / "model-b"
    encoder.save(out, meta={"note": "fault tests"})
    return out


def _index_args(index: Path, *args: str) -> list[str]:
    model = [] if "--model" in args else ["--model", TINY]
    return ["-q", "index", "--index", str(index), "--batch-size", "4", "--json", *model, *args]


def _summary(reply: dict) -> dict:
    assert reply["rc"] == 0, reply["output"]
    return json.loads(reply["output"].strip().splitlines()[-1])


def check_consistent(index_dir: Path, saved: bool = False) -> dict[str, int]:
    """Catalog = store = FAISS, no duplicates, every item finds itself. Returns counts.

    The FAISS index is the one queries get (verified and repaired on open), or with
    ``saved`` the file on disk as it is (to show the check itself can fail)."""
    from mmsearch.ann.faiss_index import VectorIndex

    counts = {}
    with mmsearch.Index.open(index_dir, create=False) as index:
        catalog = index.catalog
        dim = int(index.model_info["dim"]) if index.model_info else 0
        for modality in ("image", "text"):
            ids = catalog.ids(modality)
            counts[modality] = len(ids)
            if not len(ids):
                continue
            vi = (
                VectorIndex.load(*index._upkeep().paths(modality))
                if saved
                else index.vectors(modality)
            )
            faiss_ids = _faiss_ids(vi)
            assert sorted(faiss_ids) == ids.tolist(), f"{modality}: FAISS ids != catalog ids"
            _, truth = catalog.embeddings(ids.tolist(), dim)
            stored = index._upkeep().store.get(ids)
            np.testing.assert_array_equal(stored, truth, err_msg=f"{modality}: store != catalog")
            records = catalog.records(ids.tolist()).values()
            if modality == "image":
                paths = [r.path for r in records]
                assert len(paths) == len(set(paths)), "a path is stored twice"
            else:
                hashes = [r.content_hash for r in records]
                assert len(hashes) == len(set(hashes)), "a text is stored twice"
            _check_self_retrieval(vi, ids, truth)
        _check_public_query(index)
    return counts


def _check_public_query(index) -> None:  # type: ignore[no-untyped-def]
    """One image query through the public path (by file, stored embedding, no model)."""
    images = index.catalog.image_files()
    if images:
        hit = index.search(Path(images[-1].path), k=1, include_self=True)[0]
        assert hit.id == images[-1].id


def _faiss_ids(vi) -> list[int]:  # type: ignore[no-untyped-def]
    import faiss

    index = faiss.downcast_index(vi.index)
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).tolist()
    ivf = faiss.extract_index_ivf(vi.index)
    invlists = ivf.invlists
    out: list[int] = []
    for lst in range(invlists.nlist):
        n = invlists.list_size(lst)
        if n:
            ptr = invlists.get_ids(lst)
            out.extend(faiss.rev_swig_ptr(ptr, n).tolist())
    return out


def _check_self_retrieval(vi, ids: np.ndarray, vectors: np.ndarray) -> None:  # type: ignore[no-untyped-def]
    """Every item is its own nearest neighbour (all indexes here are exact: Flat)."""
    assert vi.manifest.factory == "Flat"
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    _, found = vi.search(vectors / norms, 1)
    missed = ids[found[:, 0] != ids]
    assert not len(missed), f"items that do not find themselves: {missed.tolist()}"


def _trial_times(runner: Runner, argv_for, seed: int, trials: int = TRIALS) -> list[float]:  # type: ignore[no-untyped-def]
    """Seeded kill times spread over an uninterrupted run's duration (from 10% on: the
    first tenth is model loading, where nothing is written)."""
    clean = runner.run(*argv_for())
    assert clean["rc"] == 0, clean["output"]
    rng = random.Random(seed)
    return [rng.uniform(0.1, 1.0) * clean["seconds"] for _ in range(trials)]


def test_the_consistency_check_catches_a_stale_index(tmp_path, runner, corpus):
    """The checker itself can fail: a catalog row deleted behind mmsearch's back (no
    generation bump) leaves an id in the saved FAISS file that the catalog no longer has.
    Opening the index notices the count mismatch and repairs it, so the index queries
    get is consistent again."""
    import sqlite3

    index = tmp_path / "idx"
    _summary(runner.run(*_index_args(index, str(corpus["photos"]))))
    check_consistent(index)
    with sqlite3.connect(index / "catalog.sqlite") as db:
        db.execute("DELETE FROM items WHERE id = (SELECT max(id) FROM items)")
    with pytest.raises(AssertionError, match="FAISS ids != catalog ids"):
        check_consistent(index, saved=True)
    check_consistent(index)  # repaired on open


@pytest.mark.parametrize(
    "trials", [FAST_TRIALS, pytest.param(TRIALS, marks=pytest.mark.slow, id="full")]
)
def test_kill_during_image_indexing(tmp_path, runner, corpus, trials):
    times = _trial_times(
        runner,
        lambda: _index_args(tmp_path / "calibrate", str(corpus["photos"])),
        seed=1 + trials,
        trials=trials,
    )
    killed = 0
    for n, t in enumerate(times):
        index = tmp_path / f"idx{n}"
        reply = runner.run(*_index_args(index, str(corpus["photos"])), kill_after=t)
        killed += reply["killed"]
        if not (index / "catalog.sqlite").exists():
            continue
        before = check_consistent(index)["image"]
        summary = _summary(runner.run(*_index_args(index, str(corpus["photos"]))))
        assert summary["unchanged"] == before, "files committed before the kill were redone"
        assert summary["added"] == IMAGES - before and summary["updated"] == 0
        assert check_consistent(index)["image"] == IMAGES
    assert killed >= len(times) // 2, "most runs should have been killed mid-way"


@pytest.mark.slow
def test_kill_during_text_indexing(tmp_path, runner, corpus):
    texts = str(corpus["texts"])
    n_texts = len(corpus["texts"].read_text().splitlines())
    times = _trial_times(runner, lambda: _index_args(tmp_path / "calibrate", "--texts", texts), 2)
    killed = 0
    for n, t in enumerate(times):
        index = tmp_path / f"idx{n}"
        reply = runner.run(*_index_args(index, "--texts", texts), kill_after=t)
        killed += reply["killed"]
        if not (index / "catalog.sqlite").exists():
            continue
        before = check_consistent(index)["text"]
        summary = _summary(runner.run(*_index_args(index, "--texts", texts)))
        assert summary["added"] == n_texts - before, "texts committed before the kill were redone"
        assert check_consistent(index)["text"] == n_texts
    assert killed >= TRIALS // 2


@pytest.mark.slow
def test_kill_during_reembed(tmp_path, runner, corpus, other_model):
    texts = str(corpus["texts"])
    base = tmp_path / "base"
    _summary(runner.run(*_index_args(base, str(corpus["photos"]), "--texts", texts)))

    def argv(index: Path = base) -> list[str]:
        return _index_args(index, "--reembed", "--model", str(other_model))

    calibrate = tmp_path / "calibrate"
    _copy_index(base, calibrate)
    times = _trial_times(runner, lambda: argv(calibrate), 3)
    killed = 0
    for n, t in enumerate(times):
        index = tmp_path / f"idx{n}"
        _copy_index(base, index)
        reply = runner.run(*argv(index), kill_after=t)
        killed += reply["killed"]
        # An interrupted re-embedding is refused until finished (never half one model,
        # half the other), so finishing it is the check; then everything is consistent.
        _summary(runner.run(*argv(index)))
        counts = check_consistent(index)
        assert counts == {"image": IMAGES, "text": len(corpus["texts"].read_text().splitlines())}
        with mmsearch.Index.open(index, create=False) as opened:
            assert opened.model_info["identity"].startswith("dir:")
    assert killed >= TRIALS // 2


@pytest.mark.slow
def test_kill_during_index_rebuild(tmp_path, runner, corpus):
    """With the derived files gone (store and FAISS), the next run rebuilds them."""
    texts = str(corpus["texts"])
    base = tmp_path / "base"
    _summary(runner.run(*_index_args(base, str(corpus["photos"]), "--texts", texts)))

    def strip(index: Path) -> None:
        for pattern in ("vectors-*", "embeddings.f16*"):
            for path in index.glob(pattern):
                path.unlink()

    def argv(index: Path) -> list[str]:
        return _index_args(index, str(corpus["photos"]), "--texts", texts)

    calibrate = tmp_path / "calibrate"
    _copy_index(base, calibrate)
    strip(calibrate)
    times = _trial_times(runner, lambda: argv(calibrate), 4)
    for n, t in enumerate(times):
        index = tmp_path / f"idx{n}"
        _copy_index(base, index)
        strip(index)
        runner.run(*argv(index), kill_after=t)
        check_consistent(index)
        summary = _summary(runner.run(*argv(index)))
        assert summary["added"] == 0 and summary["updated"] == 0, "nothing is encoded again"
        check_consistent(index)


def _copy_index(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst)


@pytest.mark.parametrize(
    "runs,queries", [pytest.param(2, 40), pytest.param(5, 200, marks=pytest.mark.slow)]
)
def test_queries_while_indexing_never_fail(tmp_path, runner, corpus, runs, queries):
    """Queries (the CLI, in this process) while another process indexes: no errors, and
    every answer is right (the query image is its own best hit)."""
    import threading

    from click.testing import CliRunner

    from mmsearch.cli import cli

    folders = []
    for n in range(runs + 1):
        folder = tmp_path / "photos" / f"f{n}"
        folder.mkdir(parents=True)
        for i in range(8):
            noise_image(3000 + 8 * n + i).save(folder / f"{i}.png")
        folders.append(folder)
    index = tmp_path / "idx"
    _summary(runner.run(*_index_args(index, str(folders[0]))))
    probe = folders[0] / "3.png"
    replies: list[dict] = []

    def index_runs() -> None:
        for n in range(1, runs + 1):
            replies.append(runner.run(*_index_args(index, *map(str, folders[: n + 1]))))

    writer = threading.Thread(target=index_runs)
    writer.start()
    done, failures = 0, []
    while writer.is_alive() or done < queries:
        args = ["query", "--index", str(index), "--image", str(probe), "--include-self", "--json"]
        result = CliRunner().invoke(cli, args, catch_exceptions=True)
        done += 1
        hits = json.loads(result.stdout)["hits"] if result.exit_code == 0 else []
        if result.exit_code != 0 or not hits or hits[0]["path"] != str(probe):
            failures.append((result.exit_code, result.stderr, result.exception))
        if done >= queries and not writer.is_alive():
            break
    writer.join()
    assert [r["rc"] for r in replies] == [0] * runs
    assert not failures, failures[:3]
    assert done >= queries
    assert check_consistent(index)["image"] == 8 * (runs + 1)
