#!/usr/bin/env bash
# The main job: set up .venv, then benchmark float vs FullyQT 8/6/4-bit (and 8-bit fine-tuned
# from float) on the built-in Spanish->English Bible corpus with the cpu-small preset.
# About 75 minutes on 2 CPU cores; the report lands in runs/cpu-small/report.md.
# Extra arguments go to the benchmark, e.g. --time-budget 240 for better models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fullyqt.bench --preset cpu-small --out runs/cpu-small "$@"
