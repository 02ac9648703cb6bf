#!/usr/bin/env bash
# Set up .venv (first run: a few minutes) and run the whole test suite: one worker per core
# (pytest-xdist; tests of one file stay together so their fixtures train once), each with one
# torch thread so the workers do not compete for cores.  `-n 0` runs it in one process;
# `-m "not slow"` the quick subset (no training, no command-line runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec .venv/bin/python -m pytest -q -n auto --dist loadfile "$@" tests
