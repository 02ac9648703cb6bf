#!/usr/bin/env bash
# Regenerate fullyqt/data/corpora/bible-es-en.tsv.xz from the Debian packages of the two public
# domain Bibles (Reina-Valera 1909, World English Bible) and SWORD's mod2imp exporter.
# Needs root for apt-get; the shipped file makes this unnecessary for normal use.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v mod2imp >/dev/null || [ ! -e /usr/share/sword/mods.d/spaRV1909eb.conf ] \
   || [ ! -e /usr/share/sword/mods.d/engWEB2015eb.conf ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sword-text-sparv sword-text-web libsword-utils
fi
bash scripts/setup.sh
exec .venv/bin/python -m fullyqt.data.bible build "$@"
