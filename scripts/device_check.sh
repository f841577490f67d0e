#!/usr/bin/env bash
# The GPU check (scripts/device_check.py) on the device machine, which has torch, transformers,
# accelerate, timm and pyarrow but no network and no datasets: datasets travels as wheels.
#
#   bash scripts/device_check.sh --prepare   # here: download the wheels into .device-wheels/
#   bash scripts/device_check.sh [--stages ...]  # there (carry .device-wheels): install, check
#
# Only datasets and the two packages it needs that the device image lacks travel (a call
# carries at most 64 MiB); pyarrow travels too and is installed only where the image's is
# older than datasets needs. The JSON result goes to $OUT/device_check.json (or
# ./device-check/ without $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.device-wheels
DATASETS=datasets==5.2.0  # needs pyarrow >= 24 and huggingface-hub >= 1.31
if [ "${1:-}" = "--prepare" ]; then
    rm -rf "$WHEELS"
    # the device's Python is 3.12 on x86-64
    python3 -m pip download --dest "$WHEELS" --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any \
        "$DATASETS" "dill<0.4.2" "multiprocess<0.70.20" "pyarrow>=24"
    exit 0
fi
if ! python3 -c 'import pyarrow, sys; sys.exit(int(pyarrow.__version__.split(".")[0]) < 24)'; then
    python3 -m pip install --quiet --no-index --no-deps "$WHEELS"/pyarrow-*.whl
fi
python3 -m pip install --quiet --no-index --no-deps "$WHEELS"/datasets-*.whl \
    "$WHEELS"/dill-*.whl "$WHEELS"/multiprocess-*.whl
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
timeout 420 python3 scripts/device_check.py --out "${OUT:-device-check}" "$@"
