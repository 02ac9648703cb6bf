#!/usr/bin/env bash
# Set up .venv (first run: a few minutes) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
exec .venv/bin/python -m pytest -q "$@" tests
