#!/usr/bin/env bash
# The main job: set up .venv, then benchmark on the built-in Spanish->English Bible corpus with the
# cpu-small preset: the float model, its control fine-tuned on in float, and the four
# fullyqt-compress recipes (int8, int4, fast, smallest) run on the float model as a user runs them,
# each against CTranslate2's int8 conversion of the float model.  About 2 hours on 2 CPU cores;
# the report lands in runs/cpu-small/report.md.  Extra arguments go to the benchmark: --full-grid
# adds the studies of configs/cpu-small/preset.yaml's extra_variants (most of a day); --variants
# NAME,... runs just those (and what they build on; finished runs are reused).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fullyqt.bench --preset cpu-small --out runs/cpu-small "$@"
