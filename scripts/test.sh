#!/usr/bin/env bash
# The test suite (README's test command runs this through .ci/run on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export EHRFM_QUIET=1
exec .venv/bin/python -m pytest -q "$@"
