#!/usr/bin/env bash
# Download WMT14 en-de or en-fr, clean it, learn a joint SentencePiece BPE and binarize it.
#
#   scripts/prepare-wmt14.sh en-de|en-fr DEST
#
# Environment: WMT_MIRROR (default http://statmt.org) replaces the download base; SPM_VOCAB
# (default 32000) the BPE vocabulary.  Downloads are cached in DEST/orig.  Output: DEST/raw
# (clean text; test = newstest2014, valid = newstest2013), DEST/spm.model, DEST/bin (fairseq).
set -euo pipefail
usage="usage: $0 en-de|en-fr DEST"
[ $# -eq 2 ] || { echo "$usage" >&2; exit 2; }
pair=$1 dest=$2
case "$pair" in
  en-de) archives=(wmt13/training-parallel-europarl-v7.tgz wmt13/training-parallel-commoncrawl.tgz
                   wmt14/training-parallel-nc-v9.tgz wmt14/dev.tgz wmt14/test-full.tgz) ;;
  en-fr) archives=(wmt13/training-parallel-europarl-v7.tgz wmt13/training-parallel-commoncrawl.tgz
                   wmt13/training-parallel-un.tgz wmt14/training-parallel-nc-v9.tgz
                   wmt10/training-giga-fren.tar wmt14/dev.tgz wmt14/test-full.tgz) ;;
  *) echo "$0: error: language pair '$pair'; allowed: en-de, en-fr" >&2; exit 2 ;;
esac
mirror=${WMT_MIRROR:-http://statmt.org}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
[ -x "$python" ] || python=python3
orig=$dest/orig
mkdir -p "$orig"
for a in "${archives[@]}"; do
  file=$orig/$(basename "$a")
  if [ ! -s "$file" ]; then
    echo "downloading $mirror/$a"
    curl -fsSL --retry 3 -o "$file.part" "$mirror/$a"
    mv "$file.part" "$file"
  fi
  tar -xf "$file" -C "$orig"
done
"$python" -m fullyqt.data.wmt assemble "$pair" "$orig" "$dest"
"$python" -m fullyqt.data.wmt binarize "$dest" --vocab "${SPM_VOCAB:-32000}"
echo "done: $dest/bin (fairseq data), $dest/raw/test.tgt (reference for scoring)"
