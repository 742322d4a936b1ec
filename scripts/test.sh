#!/usr/bin/env bash
# The test suite (README's test command runs this through .ci/run on a fresh machine).
set -euo pipefail
cd "$(dirname "$0")/.."
export EHRFM_QUIET=1
# One worker per core, at most 4 (pytest-xdist, `--dist loadgroup`): each test file runs whole in one
# worker, so its module fixtures are made once, and the files that submit to the real SLURM cluster
# run one after another in one worker (tests/conftest.py groups them: they compete for the single
# node's slots); the session fixtures are made once per worker. EHRFM_TEST_WORKERS=1 runs the suite
# in one process; a `-n K` of your own also wins over the default. --no-loadscope-reorder keeps
# conftest's order (the longest groups first), which xdist would otherwise replace by test counts.
workers=${EHRFM_TEST_WORKERS:-$(.venv/bin/python -c 'import os; print(min(4, len(os.sched_getaffinity(0))))')}
case " $* " in
  *" -n "*|*" -n"[0-9]*|*" --numprocesses"*) set -- --dist loadgroup --no-loadscope-reorder "$@" ;;
  *) if [ "$workers" -gt 1 ]; then set -- -n "$workers" --dist loadgroup --no-loadscope-reorder "$@"; fi ;;
esac
exec .venv/bin/python -m pytest -q "$@"
