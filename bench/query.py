"""Query latency benchmark: cold `mmsearch query` (a new process each time) and warm
`Index.search`, torch vs the exported ONNX runtime, idle and beside a CPU-bound process.

    python bench/query.py --json bench/results/query_cpu2.json
    python bench/query.py --sizes 1000,100000,1000000 --workdir /tmp/qbench

The model is ViT-B-32 with random-initialised weights saved to a safetensors checkpoint
(``--model ViT-B-32 --pretrained FILE``): the architecture is what costs time, not the
values, and no weights are downloaded. Each index holds a few real shape images (indexed
with the model, so the model is recorded and its towers are exported once to the ONNX
cache under the work dir) and synthetic clustered unit vectors (``bench/ann.py``'s
generator) inserted straight into the catalog up to the size; the ANN index (IVF-PQ from
100k on) is built and tuned once before anything is timed. Indexes and the export are
kept in the work dir and reused by later runs.

Measured, per size:

* cold: wall time and peak RSS of ``python -m mmsearch -q query "a red car" --index ...``,
  a new process per run (``os.wait4`` gives each child's own peak RSS), median of
  ``--runs``, for ``MMSEARCH_QUERY_RUNTIME=torch`` and ``onnx``; and whether torch or
  open_clip appear in ``python -X importtime`` of the ONNX-path command (they must not),
  with the slowest imports;
* warm (in one worker process per case, so environment variables that must precede
  ``import faiss`` can differ): text and image ``Index.search`` p50/p99 per runtime, and
  the text p50 with one CPU-bound busy-loop process running beside it, as a ratio to the
  idle p50 measured in the same run, for each thread setting in ``--thread-variants``.

Timings depend on what else runs on the machine: compare within a run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUERY = "a red car"
MODEL = "ViT-B-32"
#: Warm-path thread settings compared, each (environment of the worker process, the
#: runtimes it is measured for). "spin": faiss with every OpenMP thread, busy-waiting (what
#: a process gets without OMP_WAIT_POLICY); "passive": OpenMP threads (faiss', torch's)
#: sleep when idle; "ort1": one onnxruntime intra-op thread instead of two.
THREAD_VARIANTS: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "default": ({}, ("onnx", "torch")),
    "spin": ({"OMP_WAIT_POLICY": "ACTIVE", "MMSEARCH_BENCH_FAISS_THREADS": "0"}, ("onnx",)),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ("torch",)),
    "ort1": ({"MMSEARCH_BENCH_ORT_THREADS": "1"}, ("onnx",)),
}


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    # Bytecode is written and used, as for an installed mmsearch (pip compiles it): without
    # it every cold run would compile mmsearch's sources first.
    dropped = ("OMP_WAIT_POLICY", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        MMSEARCH_CACHE=str(workdir / "cache"),
        MMSEARCH_DEVICE="cpu",
    )
    env.update(extra)
    return env


# -- building ---------------------------------------------------------------------------


def checkpoint(workdir: Path) -> Path:
    """ViT-B-32 with random weights as a safetensors file (made once)."""
    path = workdir / "vit-b-32-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model(MODEL)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
    return path


def build(workdir: Path, n: int, weights: Path) -> Path:
    """The index of ``n`` items (made once; reused while its marker file is there)."""
    idx = workdir / f"idx-{n}"
    marker = idx / "bench-built.json"
    if marker.exists():
        return idx
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "bench"))
    from ann import Synthetic, add_synthetic_images
    from conftest import load_make_shapes

    import mmsearch

    shapes = workdir / "shapes"
    if not (shapes / "images").exists():
        load_make_shapes().make_shapes(shapes, 8, seed=0, size=224)
    t0 = time.perf_counter()
    with mmsearch.Index.open(idx, model=MODEL, pretrained=str(weights), device="cpu") as index:
        index.add_images([shapes / "images"])  # records the model and exports it (once)
        exported = time.perf_counter() - t0
        rng = np.random.default_rng(0)
        synthetic = Synthetic(dim=index.dim)
        have = index.catalog.count("image")
        add_synthetic_images(index.catalog, synthetic, rng, have, n)
        inserted = time.perf_counter() - t0 - exported
        vi = index.refresh("image")  # build and tune the ANN index once, before timing
        factory = vi.manifest.factory
    built = {
        "n": n,
        "factory": factory,
        "index_and_export_s": round(exported, 1),
        "insert_s": round(inserted, 1),
        "ann_build_s": round(time.perf_counter() - t0 - exported - inserted, 1),
    }
    marker.write_text(json.dumps(built))
    return idx


# -- cold -------------------------------------------------------------------------------


def cold_once(cmd: list[str], env: dict[str, str], scratch: Path) -> tuple[float, float, float]:
    """Wall seconds, peak RSS (MB) and CPU seconds (user + system) of one run of ``cmd``
    in a new process. ``/usr/bin/time`` starts it: a child forked from this process
    would report this process' peak RSS when it is larger (Linux keeps it across exec)."""
    report = scratch / "time.txt"
    timed = ["/usr/bin/time", "-o", str(report), "-f", "%M %U %S", *cmd]
    t0 = time.perf_counter()
    proc = subprocess.run(timed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")
    rss_kib, user, system = report.read_text().split()[-3:]
    return wall, int(rss_kib) / 1024, float(user) + float(system)


def query_cmd(idx: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, *extra, "-m", "mmsearch", "-q", "query", QUERY, "--index", str(idx)]


def cold(workdir: Path, idx: Path, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"loadavg_before": os.getloadavg()}
    runtimes = ("torch", "onnx")
    envs = {r: _env(workdir, MMSEARCH_QUERY_RUNTIME=r) for r in runtimes}
    for runtime in runtimes:
        cold_once(query_cmd(idx), envs[runtime], workdir)  # not counted: fills the page cache
    samples: dict[str, list[tuple[float, float, float]]] = {r: [] for r in runtimes}
    for _ in range(runs):  # interleaved: a change of the machine's load hits both alike
        for runtime in runtimes:
            samples[runtime].append(cold_once(query_cmd(idx), envs[runtime], workdir))
    for runtime in runtimes:
        got = samples[runtime]
        out[runtime] = {
            "wall_s_median": round(statistics.median(s[0] for s in got), 3),
            "wall_s_all": [round(s[0], 3) for s in got],
            "peak_rss_mb_median": round(statistics.median(s[1] for s in got), 1),
            "cpu_s_median": round(statistics.median(s[2] for s in got), 3),
        }
    out["loadavg_after"] = os.getloadavg()
    out["onnx_imports"] = import_profile(workdir, idx)
    out["onnx_phases"] = phases(workdir, idx, runs)
    return out


def import_profile(workdir: Path, idx: Path) -> dict[str, Any]:
    """``-X importtime`` of the ONNX-path query: heavy modules present, slowest imports."""
    env = _env(workdir, MMSEARCH_QUERY_RUNTIME="onnx")
    cmd = [c for c in query_cmd(idx, ("-X", "importtime")) if c != "-q"]  # -q mutes stderr
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((m.group(4), int(m.group(1)), int(m.group(2)), len(m.group(3))))
    names = {name.split(".")[0] for name, *_ in rows}
    top = sorted((r for r in rows if r[3] <= 3), key=lambda r: -r[2])[:12]
    return {
        "torch": "torch" in names,
        "sqlalchemy": "sqlalchemy" in names,
        "open_clip": "open_clip" in names,
        "total_import_s": round(sum(r[1] for r in rows) / 1e6, 3),
        "slowest_cumulative_ms": {name: round(cum / 1e3, 1) for name, _, cum, _ in top},
    }


PHASES = """
import resource, sys, time
def now():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime
marks = [("start", *now())]
def mark(name):
    marks.append((name, *now()))
import numpy; mark("import numpy")
import faiss; mark("import faiss")
import onnxruntime; mark("import onnxruntime")
import mmsearch.cli; mark("import mmsearch.cli")
from mmsearch.index import Index; mark("import mmsearch.index (rest)")
index = Index.open(sys.argv[1], create=False, few_queries=True); mark("Index.open (catalog)")
encoder = index.query_encoder(); mark("QueryRuntime.load (tokenizer)")
encoder._session("text"); mark("text session (self-test: only if not verified)")
vector = encoder.encode_texts(["a red car"])[0]; mark("encode the query")
vi = index.vectors("image"); mark("open the store + load the ANN index")
hits = index.search("a red car", k=10); mark("search (encode again + ANN + re-rank + rows)")
out = {}
for (_, w0, c0), (name, w1, c1) in zip(marks, marks[1:]):
    out[name] = {"wall_ms": round(1e3 * (w1 - w0), 1), "cpu_ms": round(1e3 * (c1 - c0), 1)}
import json; print(json.dumps(out))
"""


def phases(workdir: Path, idx: Path, runs: int) -> dict[str, Any]:
    """Where a cold ONNX-path query's time goes: each phase's median wall and CPU ms over
    ``runs`` new processes (imports in dependency order, so each counts what it adds)."""
    env = _env(workdir, MMSEARCH_QUERY_RUNTIME="onnx")
    samples = []
    for _ in range(runs):
        proc = subprocess.run(
            [sys.executable, "-c", PHASES, str(idx)], env=env, capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        samples.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return {
        name: {
            key: round(statistics.median(s[name][key] for s in samples), 1)
            for key in ("wall_ms", "cpu_ms")
        }
        for name in samples[0]
    }


# -- warm -------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """Runs in its own process: warm ``Index.search`` latencies, printed as JSON."""
    threads = os.environ.get("MMSEARCH_BENCH_FAISS_THREADS")
    import mmsearch

    if threads:  # emulate "before": faiss with every OpenMP thread
        from mmsearch.ann.library import require_faiss

        faiss = require_faiss()
        faiss.omp_set_num_threads(int(threads) or os.cpu_count() or 1)
    ort_threads = os.environ.get("MMSEARCH_BENCH_ORT_THREADS")
    if ort_threads:
        from mmsearch.runtime import towers

        base = towers._session_options

        def options(ort: Any, *args: Any) -> Any:
            opts = base(ort, *args)
            opts.intra_op_num_threads = int(ort_threads)
            return opts

        towers._session_options = options
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import noise_image

    result: dict[str, Any] = {}
    with mmsearch.Index.open(args.index, device="cpu") as index:
        image = noise_image(seed=1, size=(640, 480))  # a photo-sized query
        for _ in range(5):  # sessions, index, caches
            index.search(QUERY, k=10)
            if not args.text_only:
                index.search(image, k=10)
        result["encoder"] = type(index.query_encoder()).__name__
        kinds = [("text", QUERY)] + ([] if args.text_only else [("image", image)])
        for kind, query in kinds:
            times = []
            for _ in range(args.queries):
                t0 = time.perf_counter()
                index.search(query, k=10)
                times.append((time.perf_counter() - t0) * 1e3)
            result[kind] = {
                "p50_ms": round(float(np.percentile(times, 50)), 2),
                "p99_ms": round(float(np.percentile(times, 99)), 2),
            }
            # What the vector search alone costs (the query encoded once, outside the timer).
            if kind == "text":
                vector = index.query_encoder().encode_texts([QUERY])[0]
                vi, keeper = index.vectors("image"), index._upkeep()
                from mmsearch.search import search_vector

                times = []
                for _ in range(args.queries):
                    t0 = time.perf_counter()
                    search_vector(  # through the rows reader Index.search uses
                        index._reads, vi, vector, 10, keeper.fetch, query_modality="text"
                    )
                    times.append((time.perf_counter() - t0) * 1e3)
                result["search_only_p50_ms"] = round(float(np.percentile(times, 50)), 2)
                times = []
                for _ in range(args.queries):
                    t0 = time.perf_counter()
                    index.query_encoder().encode_texts([QUERY])
                    times.append((time.perf_counter() - t0) * 1e3)
                result["encode_only_p50_ms"] = round(float(np.percentile(times, 50)), 2)
    print(json.dumps(result))


def run_worker(
    workdir: Path, idx: Path, runtime: str, queries: int, text_only: bool, env_extra: dict
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", "--index", str(idx), "--queries", str(queries)]
    if text_only:
        cmd.append("--text-only")
    env = _env(workdir, MMSEARCH_QUERY_RUNTIME=runtime, **env_extra)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


BUSY = "import time\nwhile True:\n    pass\n"


def warm(
    workdir: Path,
    idx: Path,
    queries: int,
    variants: list[str],
    runtimes: tuple[str, ...] = ("torch", "onnx"),
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for runtime in runtimes:
        out[runtime] = run_worker(workdir, idx, runtime, queries, False, {})
    for name in variants:
        env_extra, variant_runtimes = THREAD_VARIANTS[name]
        for runtime in (r for r in variant_runtimes if r in runtimes):
            idle = run_worker(workdir, idx, runtime, queries, True, env_extra)
            busy = subprocess.Popen([sys.executable, "-c", BUSY])
            try:
                time.sleep(0.5)
                loaded = run_worker(workdir, idx, runtime, queries, True, env_extra)
            finally:
                busy.kill()
                busy.wait()
            out[f"load_{name}_{runtime}"] = {
                "idle_text_p50_ms": idle["text"]["p50_ms"],
                "loaded_text_p50_ms": loaded["text"]["p50_ms"],
                "ratio": round(loaded["text"]["p50_ms"] / idle["text"]["p50_ms"], 2),
                "idle_search_only_p50_ms": idle["search_only_p50_ms"],
                "loaded_search_only_p50_ms": loaded["search_only_p50_ms"],
                "idle_encode_only_p50_ms": idle["encode_only_p50_ms"],
                "loaded_encode_only_p50_ms": loaded["encode_only_p50_ms"],
            }
    return out


# -- report -----------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    lines = [
        "| items | index | runtime | cold wall s (median) | cold CPU s | cold peak RSS MB "
        "| warm text p50/p99 ms "
        "| warm image p50/p99 ms | text p50 beside a busy core (x idle) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for size in results["sizes"]:
        for runtime in ("torch", "onnx"):
            c = size.get("cold", {}).get(runtime, {})
            w = size["warm"].get(runtime)
            if w is None:
                continue
            loads = ", ".join(
                f"{key.split('_')[1]}: {v['loaded_text_p50_ms']:.0f} ms ({v['ratio']:.2f}x)"
                for key, v in size["warm"].items()
                if key.startswith("load_") and key.endswith(runtime)
            )
            lines.append(
                f"| {size['n']:,} | {size['build']['factory']} | {runtime} "
                f"| {c.get('wall_s_median', '—')} | {c.get('cpu_s_median', '—')} "
                f"| {c.get('peak_rss_mb_median', '—')} "
                f"| {w['text']['p50_ms']:.1f} / {w['text']['p99_ms']:.1f} "
                f"| {w['image']['p50_ms']:.1f} / {w['image']['p99_ms']:.1f} | {loads} |"
            )
    for size in results["sizes"]:
        phases = size.get("cold", {}).get("onnx_phases")
        if phases:
            lines += ["", f"Cold ONNX-path query at {size['n']:,} items, by phase (median):", ""]
            lines += ["| phase | wall ms | CPU ms |", "|---|---:|---:|"]
            lines += [f"| {k} | {v['wall_ms']} | {v['cpu_ms']} |" for k, v in phases.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,100000", help="comma-separated item counts")
    parser.add_argument("--runs", type=int, default=7, help="cold runs per runtime (median)")
    parser.add_argument("--queries", type=int, default=200, help="warm queries per case")
    parser.add_argument(
        "--cold-max", type=int, default=100_000, help="largest size whose cold start is timed"
    )
    parser.add_argument("--thread-variants", default=",".join(THREAD_VARIANTS))
    parser.add_argument("--runtimes", default="torch,onnx", help="warm runtimes measured")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmsearch-bench-query"))
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--text-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, str(ROOT))
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "mmsearch"), str(ROOT / "indexer")],
        env=_env(args.workdir),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(_env(args.workdir))
    weights = checkpoint(args.workdir)
    variants = [v for v in args.thread_variants.split(",") if v]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "model": f"{MODEL} (random weights, safetensors checkpoint)",
        "query": QUERY,
        "sizes": [],
    }
    for n in (int(s) for s in args.sizes.split(",")):
        idx = build(args.workdir, n, weights)
        entry: dict[str, Any] = {
            "n": n,
            "build": json.loads((idx / "bench-built.json").read_text()),
        }
        print(f"{n}: {entry['build']}", file=sys.stderr)
        if n <= args.cold_max:
            entry["cold"] = cold(args.workdir, idx, args.runs)
            print(f"{n} cold: {entry['cold']}", file=sys.stderr)
        runtimes = tuple(r for r in args.runtimes.split(",") if r)
        entry["warm"] = warm(args.workdir, idx, args.queries, variants, runtimes)
        print(f"{n} warm: {entry['warm']}", file=sys.stderr)
        results["sizes"].append(entry)
        if args.json:  # after each size: a long run that is stopped keeps what it measured
            args.json.write_text(json.dumps(results, indent=1) + "\n")
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
