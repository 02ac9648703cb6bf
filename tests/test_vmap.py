"""The vocabulary map for CTranslate2: IBM model 1 against a direct implementation, the right
candidates on a task where they are known, a map that keeps every token changing nothing, and
malformed options refused in one line."""
import os
from collections import defaultdict

import pytest
import torch

from conftest import CKPT, cli
from fullyqt.export.vmap import VmapSize, build_vmap, candidates, lexical_table, read_vmap


def ibm1_reference(pairs, iterations):
    """IBM model 1 by the textbook loops: t(t|s) over the pairs that co-occur."""
    t = defaultdict(lambda: 1.0)
    for _ in range(iterations):
        count, total = defaultdict(float), defaultdict(float)
        for src, tgt in pairs:
            for w in tgt:
                z = sum(t[(s, w)] for s in src)
                for s in src:
                    count[(s, w)] += t[(s, w)] / z
                    total[s] += t[(s, w)] / z
        t = defaultdict(float, {(s, w): c / total[s] for (s, w), c in count.items()})
    return dict(t)


def test_lexical_table_is_ibm_model_1():
    pairs = [([4, 5, 2], [7, 8]), ([4, 6, 2], [7, 9, 9]), ([5, 6, 2], [8, 9]), ([4, 2], [7])]
    src, tgt, prob = lexical_table([torch.tensor(s) for s, _ in pairs],
                                   [torch.tensor(t) for _, t in pairs], iterations=4)
    got = {(int(s), int(t)): float(p) for s, t, p in zip(src, tgt, prob)}
    want = ibm1_reference(pairs, 4)
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12), key


def test_the_map_finds_each_source_words_translation(toy_data):
    """The toy task reverses w<i> sentences into W<i>: each source word's best candidate is its
    own translation, whatever the word order."""
    by_source, frequent = candidates(str(toy_data[1]), "src", "tgt",
                                     VmapSize(per_token=2, frequent=3))
    words = [w for w in by_source if w.startswith("w")]
    assert len(words) >= 10
    for w in words:
        assert by_source[w][0] == "W" + w[1:], (w, by_source[w])
        assert len(by_source[w]) == 2
    assert len(frequent) == 3 and all(f.startswith("W") for f in frequent)


def test_a_map_that_keeps_every_token_translates_as_without(toy_data, teacher, tmp_path):
    ctranslate2 = pytest.importorskip("ctranslate2")
    from fullyqt.export.ctranslate2 import convert

    data = str(toy_data[1])
    everything = build_vmap(data, "src", "tgt", str(tmp_path / "vmap.txt"),
                            VmapSize(per_token=10_000, frequent=10_000))
    rules, always = read_vmap(everything)
    symbols = [line.split()[0] for line in open(os.path.join(data, "dict.tgt.txt"))]
    assert set(symbols) <= always
    out = tmp_path / "ct2"
    convert(str(teacher), data, str(out), "src", "tgt", vmap=everything)
    assert (out / "vmap.txt").exists()
    sources = [line.split() for line in (toy_data[0] / "test.src").read_text().splitlines()]
    translator = ctranslate2.Translator(str(out), device="cpu")
    plain = translator.translate_batch(sources, beam_size=4)
    mapped = translator.translate_batch(sources, beam_size=4, use_vmap=True)
    assert [r.hypotheses[0] for r in mapped] == [r.hypotheses[0] for r in plain]
    # and a map of one candidate per word is really used: fewer distinct output tokens
    small = build_vmap(data, "src", "tgt", str(tmp_path / "small.txt"),
                       VmapSize(per_token=1, frequent=0))
    out2 = tmp_path / "ct2-small"
    convert(str(teacher), data, str(out2), "src", "tgt", vmap=small)
    narrow = ctranslate2.Translator(str(out2), device="cpu").translate_batch(
        sources[:1], beam_size=4, use_vmap=True)[0].hypotheses[0]
    allowed = set().union(*(read_vmap(small)[0].get(w, set()) for w in sources[0]))
    assert set(narrow) <= allowed


@pytest.mark.parametrize("args, message", [
    (["--format", "ctranslate2", "--vmap", "--vmap-per-token", "0"],
     "--vmap-per-token: got '0'; allowed: an integer >= 1"),
    (["--format", "ctranslate2", "--vmap", "--vmap-frequent", "many"],
     "--vmap-frequent: got 'many'; allowed: an integer >= 0"),
    (["--format", "int8", "--vmap"], "--vmap: a CTranslate2 option; --format int8 has no "
                                     "vocabulary map"),
])
def test_malformed_vmap_options_are_refused_in_one_line(args, message, tmp_path):
    proc = cli("fullyqt-export", CKPT, "--out", tmp_path / "x", *args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == f"fullyqt-export: error: {message}"
    assert not (tmp_path / "x").exists()
