"""GPU check and encoder throughput: run on a machine with CUDA (and on CPU as reference).

    python bench/gpu_check.py --out result.json [--pairs data/shapes/pairs.csv]

1. The tiny model's embeddings on CUDA (fp16 autocast) match the CPU ones (cosine).
2. Encoding throughput of a ViT-B-32-sized image tower and text tower (random weights,
   so no download), CUDA fp16 vs CPU fp32, measured in the same run.
3. With --pairs: a fine-tuning run on CUDA with mixed precision, its pairs/s and the
   recall before/after on the validation split.
4. ``mmsearch index`` + ``query`` end to end on CUDA with the tiny model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mmsearch.encoder import Encoder  # noqa: E402


def _time(fn, repeat: int = 5) -> float:
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeat


def tiny_agreement() -> dict[str, float]:
    cpu, gpu = (
        Encoder.load("mmsearch-tiny", device="cpu"),
        Encoder.load("mmsearch-tiny", device="cuda"),
    )
    texts = ["a red car", "two blue squares left of a green circle", "a dog"]
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)) for _ in range(8)]
    t = (cpu.encode_texts(texts) * gpu.encode_texts(texts)).sum(1)
    i = (cpu.encode_images(images) * gpu.encode_images(images)).sum(1)
    return {"text_cos_min": float(t.min()), "image_cos_min": float(i.min())}


def throughput(batch: int = 256) -> dict[str, float]:
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    out: dict[str, float] = {}
    images = torch.randn(batch, 3, 224, 224)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a photo of a red car on a street"] * batch)
    for device in ("cuda", "cpu"):
        m = model.to(device).eval()
        x, tok = images.to(device), tokens.to(device)
        ctx = (
            torch.autocast("cuda", dtype=torch.float16)
            if device == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        n = batch if device == "cuda" else 32
        with torch.inference_mode(), ctx:
            reps = 5 if device == "cuda" else 2
            ti = _time(lambda m=m, x=x, n=n: m.encode_image(x[:n]), reps)
            tt = _time(lambda m=m, tok=tok, n=n: m.encode_text(tok[:n]), reps)
        out[f"{device}_images_per_s"] = round(n / ti, 1)
        out[f"{device}_texts_per_s"] = round(n / tt, 1)
    out["gpu_over_cpu_images"] = round(out["cuda_images_per_s"] / out["cpu_images_per_s"], 1)
    return out


def finetune_run(pairs: str, seconds: float, lr: float, batch: int) -> dict:
    from mmsearch.finetune import FinetuneConfig, finetune

    out = tempfile.mkdtemp()
    res = finetune(
        pairs,
        out,
        model="mmsearch-tiny",
        device="cuda",
        config=FinetuneConfig(epochs=1000, batch_size=batch, lr=lr, max_seconds=seconds),
    )
    return {k: v for k, v in res.to_dict().items() if k != "skipped"}


def end_to_end(pairs_dir: str | None) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "MMSEARCH_INDEX": tempfile.mkdtemp(), "PYTHONPATH": path}
    folder = str(Path(pairs_dir) / "images") if pairs_dir else str(ROOT / "tests")
    cmd = [sys.executable, "-m", "mmsearch"]
    start = time.perf_counter()
    index = subprocess.run(
        [*cmd, "-q", "index", "--model", "mmsearch-tiny", "--device", "cuda", "--json", folder],
        capture_output=True,
        text=True,
        env=env,
    )
    took = time.perf_counter() - start
    query = subprocess.run(
        [*cmd, "query", "a red circle", "-k", "3", "--device", "cuda"],
        capture_output=True,
        text=True,
        env=env,
    )
    return {
        "index_rc": index.returncode,
        "index": index.stdout.strip()[:300],
        "index_stderr": index.stderr[-300:],
        "index_s": round(took, 1),
        "query_rc": query.returncode,
        "query": query.stdout.strip().splitlines(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--pairs")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()
    result: dict = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    result["tiny_agreement"] = tiny_agreement()
    print(json.dumps(result), flush=True)
    result["throughput"] = throughput()
    print(json.dumps(result["throughput"]), flush=True)
    if args.pairs:
        result["finetune"] = finetune_run(args.pairs, args.seconds, args.lr, args.batch)
        print(json.dumps(result["finetune"]), flush=True)
    result["end_to_end"] = end_to_end(str(Path(args.pairs).parent) if args.pairs else None)
    print(json.dumps(result["end_to_end"]), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
