#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of torch and ehrfm.
# Usage: bash scripts/setup.sh            (then: .venv/bin/ehrfm demo)
# On a CUDA machine: EHRFM_CUDA=1 bash scripts/setup.sh   (adds xformers; torch from your index)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin torch first and explicitly: an unpinned `torch` would pull a multi-GB CUDA build.
python -m pip install -q "torch==${EHRFM_TORCH_VERSION:-2.13.0}"
extras="test,bench"
[ "${EHRFM_CUDA:-0}" = 1 ] && extras="$extras,cuda"
python -m pip install -q -e ".[$extras]"
echo "ehrfm installed in $(pwd)/.venv: $(.venv/bin/ehrfm --version)"
