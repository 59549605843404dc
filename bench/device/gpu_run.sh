#!/usr/bin/env bash
# The GPU measurements of issue 15, as one command on the lent GPU machine (see README.md
# here). From the repo root there, with the wheels carried:
#   run(carry=[".whl"], timeout_s=560, command="bash bench/device/gpu_run.sh")
# Everything it measures lands in $OUT as it goes (a run cut short keeps what it had).
# Sizes: N2 (2 MP files), N12 (12 MP files), DISTINCT (different pictures among them),
# COMPARE (files indexed on both the CPU and the device; 256 on a GPU), BENCH_S / CHECK_S
# (seconds for the two steps), DEVICE (cuda; cpu for a rehearsal).
set -uo pipefail
OUT="${OUT:-/tmp/gpu-out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEVICE="${DEVICE:-cuda}"
work="${WORKDIR:-/tmp/ibench}"
{
    date -u; nproc; free -g | head -2; df -h /tmp | tail -1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python3 -c 'import sys, torch, torchvision, open_clip, faiss, sqlalchemy, onnxruntime, PIL, blake3
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      "torchvision", torchvision.__version__, "open_clip", open_clip.__version__,
      "faiss", faiss.__version__, "sqlalchemy", sqlalchemy.__version__,
      "onnxruntime", onnxruntime.__version__, "pillow", PIL.__version__,
      "blake3", blake3.__version__)'
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# 1. bench/index_throughput.py on the device: CPU vs device results first, then the 2 MP
#    run (the ≥ 5,000 images/s asked for), then 12 MP warm and cold.
start=$(date +%s)
timeout "${BENCH_S:-400}" python3 bench/index_throughput.py --device "$DEVICE" \
    --n "${N12:-1024}" --n2mp "${N2:-16384}" --distinct "${DISTINCT:-128}" --no-variants \
    --model-images "${MODEL_IMAGES:-16384}" --slice-images "${SLICE_IMAGES:-4096}" \
    ${COMPARE:+--compare "$COMPARE"} --workdir "$work" --json "$OUT/index_throughput_$DEVICE.json" >/dev/null 2>"$OUT/bench.log"
echo "bench: exit $? after $(($(date +%s) - start)) s"
tail -n 30 "$OUT/bench.log"
python3 - "$OUT/index_throughput_$DEVICE.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except (OSError, ValueError) as exc:
    sys.exit(f"no results: {exc}")
print(json.dumps({k: r.get(k) for k in ("machine", "engine", "cpu_vs_device", "summary")}, indent=1))
for name, e in r.get("end_to_end", {}).items():
    keys = ("images", "engine", "images_per_s", "images_per_s_after_model_load",
            "run_seconds", "model_seconds", "encode_seconds")
    print(name, {k: e.get(k) for k in keys})
PY

# 2. bench/gpu_check.py: the tiny model CPU vs CUDA, the towers' throughput, a CLI run.
if [ "$DEVICE" != cpu ]; then
    start=$(date +%s)
    timeout "${CHECK_S:-100}" python3 bench/gpu_check.py --out "$OUT/gpu_check.json" \
        >"$OUT/gpu_check.log" 2>&1
    echo "gpu_check: exit $? after $(($(date +%s) - start)) s"
    tail -n 15 "$OUT/gpu_check.log"
fi
