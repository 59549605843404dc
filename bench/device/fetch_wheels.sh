#!/usr/bin/env bash
# Fetch the wheels in wheels.txt into .whl/ (ignored by git) for the GPU machine's Python
# (3.12, x86-64; another version as $1, e.g. 3.11 for a rehearsal here).
#   bash bench/device/fetch_wheels.sh        # then: run(carry=[".whl"], command="bash bench/device/gpu_run.sh")
set -euo pipefail
cd "$(dirname "$0")/../.."
version="${1:-3.12}"
rm -rf .whl && mkdir -p .whl
grep -v '^#' bench/device/wheels.txt | xargs python3 -m pip download -q --no-deps \
    --only-binary=:all: --python-version "$version" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl
du -sh .whl
