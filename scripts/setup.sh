#!/usr/bin/env bash
# Create .venv (if missing) and install fullyqt with the given extras, e.g. `scripts/setup.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
extras=${1:-}
.venv/bin/pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}" \
  2> >(grep -v "^WARNING: Location" >&2)
