"""Two `mmsearch index` runs creating one new index at once (a watcher and a user's run):
the second waits for the first, then finds nothing to do — never "catalog … is empty"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, noise_image


def _race(tmp_path: Path, rounds: int) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for seed in range(3):
        noise_image(seed).save(photos / f"{seed}.png")
    for n in range(rounds):
        idx = str(tmp_path / f"idx{n}")
        cmd = [sys.executable, "-m", "mmsearch", "-q", "index", str(photos), "--index", idx,
               "--model", TINY, "--json"]  # fmt: skip
        runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(2)]  # fmt: skip
        outs = [r.communicate(timeout=300) for r in runs]
        for run, (_, err) in zip(runs, outs, strict=True):
            assert run.returncode == 0, err
        summaries = sorted((json.loads(out) for out, _ in outs), key=lambda s: -s["added"])
        assert summaries[0]["added"] == 3, summaries
        assert summaries[1]["added"] == 0 and summaries[1]["unchanged"] == 3, summaries


def test_two_runs_creating_one_index_at_once(tmp_path: Path) -> None:
    _race(tmp_path, 3)


@pytest.mark.slow
def test_two_runs_creating_one_index_at_once_20_times(tmp_path: Path) -> None:
    _race(tmp_path, 20)
