#!/usr/bin/env bash
# The main job: set up .venv, then benchmark on the built-in Spanish->English Bible corpus with the
# cpu-small preset: the float model, FullyQT 8- and 4-bit fine-tuned from it with and without
# knowledge distillation (with a float control fine-tuned the same way), and a smaller student
# with and without sequence-level distillation, plus int8/int4 exports and CTranslate2 rows.
# About 80 minutes on 2 CPU cores; the report lands in runs/cpu-small/report.md.
# Extra arguments go to the benchmark: --full-grid adds FullyQT 8/6/4-bit trained from scratch
# and the block-pruning rows (about 90 minutes more); --variants prune-topk30,prune-topk50,
# prune-sigmoid,prune8-topk50 runs just those (and what they build on; finished runs are reused);
# --time-budget 240 trains better models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m fullyqt.bench --preset cpu-small --out runs/cpu-small "$@"
