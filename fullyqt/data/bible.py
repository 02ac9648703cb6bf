"""The built-in Spanish→English corpus: Reina-Valera 1909 aligned verse by verse with the World
English Bible (both public domain).

``build`` regenerates the shipped file from the Debian packages ``sword-text-sparv``,
``sword-text-web`` and ``libsword-utils`` (``mod2imp`` exports a SWORD module as ``$$$Book C:V``
records of OSIS markup); ``extract`` writes the shipped corpus out as train/valid/test text files
and needs neither network nor apt.

    python -m fullyqt.data.bible build [--out fullyqt/data/corpora/bible-es-en.tsv.xz]
    python -m fullyqt.data.bible extract DEST
"""
import argparse
import html
import lzma
import os
import random
import re
import subprocess
from typing import Dict, Iterable, List, Tuple

SPANISH_MODULE, ENGLISH_MODULE = "spaRV1909eb", "engWEB2015eb"
SHIPPED = os.path.join(os.path.dirname(__file__), "corpora", "bible-es-en.tsv.xz")
MAX_WORDS = 120  # longer "verses" are glossaries or merged passages, not translations
MAX_RATIO = 2.5  # word-count ratio beyond which the two verse numberings disagree
HELD_OUT = 1000  # verses each in valid and test
SPLIT_SEED = 20201  # fixed: the split is part of the benchmark's definition
LANGS = ("es", "en")

_KEY = re.compile(r"^\$\$\$(.+?) (\d+):(\d+)\s*$")
# Elements whose content is not verse text: footnotes, headings, variant readings.
_DROP = re.compile(r"<(note|title|rdg|speaker)\b[^>]*?(?<!/)>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def parse_imp(lines: Iterable[str]) -> Dict[str, str]:
    """``{"Genesis 1:1": raw markup}`` for the verses of a mod2imp export (chapter 0 / verse 0
    records are book and chapter headings and are skipped)."""
    verses, key, buf = {}, None, []

    def flush():
        if key is not None:
            verses[key] = " ".join(buf)

    for line in lines:
        m = _KEY.match(line)
        if m or line.startswith("$$$"):
            flush()
            key, buf = None, []
            if m and int(m.group(2)) > 0 and int(m.group(3)) > 0:
                key = f"{m.group(1)} {int(m.group(2))}:{int(m.group(3))}"
            continue
        if key is not None:
            buf.append(line.rstrip("\n"))
    flush()
    return verses


def clean(markup: str) -> str:
    """Plain verse text: notes/headings removed, other tags stripped, entities and spaces fixed."""
    text = _DROP.sub(" ", markup)
    text = _TAG.sub(" ", text)
    text = html.unescape(text)
    text = _SPACE.sub(" ", text).strip()
    text = re.sub(r" ([,.;:!?»”’)])", r"\1", text)
    return re.sub(r"([“‘«(¿¡]) ", r"\1", text)


def align(spanish: Dict[str, str], english: Dict[str, str]) -> List[Tuple[str, str, str]]:
    """(key, es, en) for verses present and non-empty in both sides, none over MAX_WORDS words
    and none whose lengths differ by more than MAX_RATIO."""
    rows = []
    for key, es_raw in spanish.items():
        if key not in english:
            continue
        es, en = clean(es_raw), clean(english[key])
        n_es, n_en = len(es.split()), len(en.split())
        if (es and en and max(n_es, n_en) <= MAX_WORDS
                and max(n_es, n_en) <= MAX_RATIO * min(n_es, n_en)):
            rows.append((key, es, en))
    return rows


def split(rows: List[Tuple[str, str, str]], held_out: int = HELD_OUT):
    """Deterministic split {train, valid, test} by a seeded shuffle of the verse keys."""
    if len(rows) < 3 * held_out:
        raise ValueError(f"only {len(rows)} aligned verses; need more than {3 * held_out}")
    keys = sorted(r[0] for r in rows)
    random.Random(SPLIT_SEED).shuffle(keys)
    test, valid = set(keys[:held_out]), set(keys[held_out:2 * held_out])
    out = {"train": [], "valid": [], "test": []}
    for r in rows:
        out["test" if r[0] in test else "valid" if r[0] in valid else "train"].append(r)
    return out


def write_tsv_xz(rows, path):
    tmp = path + ".tmp"
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as f:
        for key, es, en in rows:
            f.write(f"{key}\t{es}\t{en}\n")
    os.replace(tmp, path)


def read_tsv_xz(path=SHIPPED) -> List[Tuple[str, str, str]]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f]


def export_module(name: str) -> List[str]:
    """The module's records via ``mod2imp`` (Debian package libsword-utils)."""
    try:
        out = subprocess.run(["mod2imp", name], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        raise SystemExit("bible: error: mod2imp not found; apt-get install libsword-utils "
                         "sword-text-sparv sword-text-web")
    if not out.stdout.strip():
        raise SystemExit(f"bible: error: SWORD module {name} not installed "
                         f"(apt-get install sword-text-sparv sword-text-web)")
    return out.stdout.splitlines()


def extract(dest: str, corpus: str = SHIPPED) -> Dict[str, str]:
    """Write ``{split}.es`` / ``{split}.en`` under dest; returns the prefix per split."""
    os.makedirs(dest, exist_ok=True)
    parts = split(read_tsv_xz(corpus))
    prefixes = {}
    for name, rows in parts.items():
        for i, lang in enumerate(LANGS, start=1):
            with open(os.path.join(dest, f"{name}.{lang}"), "w", encoding="utf-8") as f:
                f.writelines(r[i] + "\n" for r in rows)
        prefixes[name] = os.path.join(dest, name)
    return prefixes


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fullyqt.data.bible",
                                description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="regenerate the shipped corpus from the Debian packages")
    b.add_argument("--out", default=SHIPPED)
    e = sub.add_parser("extract", help="write train/valid/test .es/.en files")
    e.add_argument("dest")
    a = p.parse_args(argv)
    if a.cmd == "build":
        rows = align(parse_imp(export_module(SPANISH_MODULE)),
                     parse_imp(export_module(ENGLISH_MODULE)))
        split(rows)  # refuse to ship a corpus too small to split
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        write_tsv_xz(rows, a.out)
        print(f"{len(rows)} aligned verses -> {a.out}")
    else:
        for name, prefix in extract(a.dest).items():
            print(f"{name}: {prefix}.es / {prefix}.en")


if __name__ == "__main__":
    main()
