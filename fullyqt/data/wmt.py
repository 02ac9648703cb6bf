"""WMT14 text assembly for ``scripts/prepare-wmt14.sh``: gather the extracted training corpora,
clean them, read the newstest SGML sets, and write the ``raw/`` layout the benchmark reads.

    python -m fullyqt.data.wmt assemble en-de ORIG_DIR DEST_DIR
"""
import argparse
import gzip
import html
import os
import re
import sys
from typing import Iterator, List, Tuple

PAIRS = {
    "en-de": {
        "train": ["training/europarl-v7.de-en", "commoncrawl.de-en",
                  "training/news-commentary-v9.de-en"],
        "valid": "dev/newstest2013",
        "test": ("test-full/newstest2014-deen-src", "test-full/newstest2014-deen-ref"),
    },
    "en-fr": {
        "train": ["training/europarl-v7.fr-en", "commoncrawl.fr-en", "un/undoc.2000.fr-en",
                  "training/news-commentary-v9.fr-en", "giga-fren.release2.fixed"],
        "valid": "dev/newstest2013",
        "test": ("test-full/newstest2014-fren-src", "test-full/newstest2014-fren-ref"),
    },
}
MAX_WORDS, MAX_RATIO = 250, 1.5  # the cleaning of fairseq's prepare scripts (clean-corpus-n)
_SEG = re.compile(r"<seg[^>]*>(.*)</seg>", re.I)


def _lines(path: str) -> Iterator[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            yield line.rstrip("\n").strip()


def _find(orig: str, stem: str, lang: str) -> str:
    for candidate in (f"{stem}.{lang}", f"{stem}.{lang}.gz"):
        path = os.path.join(orig, candidate)
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"{os.path.join(orig, stem)}.{lang}[.gz] not found: "
                            "did the download and extraction finish?")


def keep(src: str, tgt: str) -> bool:
    ns, nt = len(src.split()), len(tgt.split())
    return 0 < ns <= MAX_WORDS and 0 < nt <= MAX_WORDS and max(ns, nt) <= MAX_RATIO * min(ns, nt)


def training_pairs(orig: str, pair: str) -> Iterator[Tuple[str, str]]:
    src, tgt = pair.split("-")
    for stem in PAIRS[pair]["train"]:
        for s, t in zip(_lines(_find(orig, stem, src)), _lines(_find(orig, stem, tgt))):
            if keep(s, t):
                yield s, t


def read_sgm(path: str) -> List[str]:
    with open(path, encoding="utf-8") as f:
        return [html.unescape(m.group(1).strip()) for m in map(_SEG.search, f) if m]


def assemble(pair: str, orig: str, dest: str) -> dict:
    """Write dest/raw/{train,valid,test}.{src,tgt}; returns sentence counts per split."""
    if pair not in PAIRS:
        raise ValueError(f"language pair {pair!r}: allowed {', '.join(PAIRS)}")
    src, tgt = pair.split("-")
    raw = os.path.join(dest, "raw")
    os.makedirs(raw, exist_ok=True)
    spec = PAIRS[pair]
    splits = {
        "train": training_pairs(orig, pair),
        "valid": zip(_lines(_find(orig, spec["valid"], src)),
                     _lines(_find(orig, spec["valid"], tgt))),
        "test": zip(read_sgm(os.path.join(orig, f"{spec['test'][0]}.{src}.sgm")),
                    read_sgm(os.path.join(orig, f"{spec['test'][1]}.{tgt}.sgm"))),
    }
    counts = {}
    for name, pairs in splits.items():
        n = 0
        with open(os.path.join(raw, f"{name}.src.tmp"), "w", encoding="utf-8") as fs, \
                open(os.path.join(raw, f"{name}.tgt.tmp"), "w", encoding="utf-8") as ft:
            for s, t in pairs:
                fs.write(s + "\n")
                ft.write(t + "\n")
                n += 1
        for side in ("src", "tgt"):
            os.replace(os.path.join(raw, f"{name}.{side}.tmp"), os.path.join(raw, f"{name}.{side}"))
        counts[name] = n
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fullyqt.data.wmt", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a_ = sub.add_parser("assemble")
    a_.add_argument("pair", help=f"one of {', '.join(PAIRS)}")
    a_.add_argument("orig")
    a_.add_argument("dest")
    b_ = sub.add_parser("binarize", help="joint SentencePiece BPE + fairseq-preprocess")
    b_.add_argument("dest")
    b_.add_argument("--vocab", type=int, default=32000)
    a = p.parse_args(argv)
    try:
        if a.cmd == "assemble":
            for name, n in assemble(a.pair, a.orig, a.dest).items():
                print(f"{name}: {n} sentence pairs")
        else:
            from .prepare import binarize
            binarize(a.dest, a.vocab)
    except (OSError, ValueError) as e:
        sys.exit(f"wmt: error: {e}")


if __name__ == "__main__":
    main()
