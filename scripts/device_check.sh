#!/usr/bin/env bash
# The GPU check (scripts/device_check.py) on the device machine, which has torch, transformers,
# accelerate and timm but no network: the other packages travel as wheels.
#
#   bash scripts/device_check.sh --prepare   # here: download the wheels into .device-wheels/
#   bash scripts/device_check.sh             # there (carry .device-wheels): install, check
#
# The JSON result goes to $OUT/device_check.json (or ./device-check/ without $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.device-wheels
if [ "${1:-}" = "--prepare" ]; then
    # the device's Python is 3.12 on x86-64; datasets and what it needs beyond that image
    python3 -m pip download --dest "$WHEELS" --only-binary=:all: --python-version 3.12 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any \
        datasets dill multiprocess
    exit 0
fi
python3 -m pip install --quiet --no-index --find-links "$WHEELS" datasets
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
timeout 480 python3 scripts/device_check.py --out "${OUT:-device-check}"
