#!/usr/bin/env bash
# The CUDA path, measured (scripts/gpu_check.py): xformers vs SDPA parity on packed rows, bf16 vs
# fp32, tokens/s and MFU of ehrfm vs HF LlamaForCausalLM at (4,256), (8,512), (12,768), context 2048,
# eager and torch.compile, peak memory. One GPU, at most 5 minutes, no network. Not a test: the
# CPU suite never runs it.
#   bash scripts/gpu_check.sh [--json OUT.json] [more scripts/gpu_check.py options]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi not found: this is not a GPU machine; nothing measured" >&2
  exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" EHRFM_QUIET=1
# 300 s hard limit; the script itself stops starting compiled runs after ~55% of --budget-s.
exec timeout --signal=INT --kill-after=10 300 "$PY" scripts/gpu_check.py --budget-s 270 "$@"
