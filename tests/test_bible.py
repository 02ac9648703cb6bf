"""The built-in corpus: extraction from SWORD module records, and the shipped split."""
import os

from fullyqt.data import bible

SPANISH = """$$$[ Module Heading ]
$$$Genesis 0:0
<title level="1" type="main">Génesis</title>
$$$Genesis 1:0
<chapter n="1" osisID="Gen.1" sID="Gen.1"/>
$$$Genesis 1:1
<w lemma="strong:H7225">EN el principio</w> <w lemma="strong:H1254">crió</w> <w>Dios</w> .
$$$Genesis 1:2
<w>Y la tierra</w> <transChange type="added">estaba</transChange> desordenada &amp; vacía
$$$Genesis 1:3
$$$Genesis 1:4
Palabra
$$$Exodus 1:1
Estos son los nombres
""".splitlines(True)

ENGLISH = """$$$Genesis 1:1
<w>In</w> <w>the</w> <w>beginning</w>, <w>God</w><note placement="foot"><reference>1:1 </reference>The Hebrew word “Elohim”.</note><w>created</w>.
$$$Genesis 1:2
<div sID="x" type="x-p"/>The earth was <title type="psalm">A heading</title>formless and empty.
$$$Genesis 1:3
God said, <q who="God">“Let there be light,”</q> and there was light.
$$$Genesis 1:4
""" + "word " * 200 + """
$$$Exodus 1:2
Only in English
"""
ENGLISH = ENGLISH.splitlines(True)


def test_parse_skips_headings_and_keeps_verses():
    verses = bible.parse_imp(SPANISH)
    assert list(verses) == ["Genesis 1:1", "Genesis 1:2", "Genesis 1:3", "Genesis 1:4",
                            "Exodus 1:1"]
    assert verses["Genesis 1:3"] == ""


def test_clean_strips_markup_notes_and_headings():
    en = bible.parse_imp(ENGLISH)
    assert bible.clean(en["Genesis 1:1"]) == "In the beginning, God created."
    assert bible.clean(en["Genesis 1:2"]) == "The earth was formless and empty."
    assert bible.clean(bible.parse_imp(SPANISH)["Genesis 1:2"]) == \
        "Y la tierra estaba desordenada & vacía"
    assert bible.clean('dijo: <q>“ Sí ”</q> ( bien )') == "dijo: “Sí” (bien)"


def test_align_drops_empty_long_and_unpaired_verses():
    rows = bible.align(bible.parse_imp(SPANISH), bible.parse_imp(ENGLISH))
    keys = [k for k, _, _ in rows]
    # 1:3 is empty in Spanish, 1:4 is over-long in English, Exodus verses are unpaired
    assert keys == ["Genesis 1:1", "Genesis 1:2"]
    assert rows[0][1] == "EN el principio crió Dios." and rows[0][2].startswith("In the")


def test_shipped_corpus_splits_deterministically(tmp_path):
    rows = bible.read_tsv_xz()
    assert len(rows) > 25000 and all(len(r) == 3 and r[1] and r[2] for r in rows)
    first = bible.extract(str(tmp_path / "a"))
    second = bible.extract(str(tmp_path / "b"))
    counts = {}
    for split in ("train", "valid", "test"):
        for lang in bible.LANGS:
            a = open(f"{first[split]}.{lang}", encoding="utf-8").read()
            assert a == open(f"{second[split]}.{lang}", encoding="utf-8").read()
            counts[(split, lang)] = a.count("\n")
    assert counts[("test", "es")] == counts[("test", "en")] == 1000
    assert counts[("valid", "es")] == counts[("valid", "en")] == 1000
    assert counts[("train", "es")] == len(rows) - 2000
    test = set(open(f"{first['test']}.es", encoding="utf-8"))
    train = set(open(f"{first['train']}.es", encoding="utf-8"))
    assert len(test & train) < 20  # only verses repeated verbatim in the text itself
    assert os.path.getsize(bible.SHIPPED) < 5 * 2**20
