#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with the CPU build of torch and ehrfm.
# Usage: bash scripts/setup.sh            (then: .venv/bin/ehrfm demo)
# On a CUDA machine: EHRFM_CUDA=1 bash scripts/setup.sh   (adds xformers; torch from your index)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || { echo "setup: ehrfm needs Python >= 3.10; $PY is $("$PY" -V 2>&1) (set PYTHON=...)" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  # A failed venv (Debian/Ubuntu without python3-venv) leaves a .venv with no interpreter: start over.
  rm -rf .venv
  "$PY" -m venv .venv || { rm -rf .venv; echo "setup: '$PY -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# Pin torch first and explicitly: an unpinned `torch` would pull a multi-GB CUDA build. A version
# pin alone does not choose the build: where pip's own configuration offers no CPU wheel (this
# project's machines have one on disk), set EHRFM_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
# NumPy comes with it: torch warns "Failed to initialize NumPy" when it is imported without one.
python -m pip install -q "torch==${EHRFM_TORCH_VERSION:-2.13.0}" "numpy>=1.26" ${EHRFM_TORCH_INDEX_URL:+--index-url "$EHRFM_TORCH_INDEX_URL"}
# Say which build came: a CUDA build on a CPU-only machine is gigabytes for nothing.
python -c "import torch; print('torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
extras="test,bench"
[ "${EHRFM_CUDA:-0}" = 1 ] && extras="$extras,cuda"
python -m pip install -q -e ".[$extras]"
# Import every stage: `ehrfm --version` alone imports too little to prove the install works.
python -c "import ehrfm.train, ehrfm.clinical.probe, tokenization.etl, sweeps.launch, analysis.fit"
echo "ehrfm installed in $(pwd)/.venv: $(.venv/bin/ehrfm --version)"
