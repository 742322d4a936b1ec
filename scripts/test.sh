#!/usr/bin/env bash
# The test suite (README's test command runs this through .ci/run on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export EHRFM_QUIET=1
# One worker per core, at most 4 (pytest-xdist): each test file runs whole in one worker, so its module
# fixtures are made once; the session fixtures (tests/conftest.py) are made once per worker. The suite
# already passes with every core busy (two CI runs at once), which is what two workers are.
# EHRFM_TEST_WORKERS=1 runs it in one process, as before.
workers=${EHRFM_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}
if [ "$workers" -gt 1 ]; then
  set -- -n "$workers" --dist loadfile "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
