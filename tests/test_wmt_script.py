"""scripts/prepare-wmt14.sh end to end against a small local mirror of the WMT archives."""
import gzip
import io
import os
import subprocess
import sys
import tarfile

import pytest

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "scripts", "prepare-wmt14.sh")
WORDS = "the house is small and the garden is green today".split()


def sentences(n, lang, seed):
    out = []
    for i in range(n):
        k = 3 + (i * 7 + seed) % 6
        words = [WORDS[(i + j + seed) % len(WORDS)] for j in range(k)]
        out.append(" ".join(f"{w}_{lang}" if lang != "en" else w for w in words))
    return out


def add(tar, name, lines, gz=False):
    data = ("\n".join(lines) + "\n").encode()
    if gz:
        data = gzip.compress(data)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sgm(lines, kind):
    segs = "".join(f'<seg id="{i + 1}">{s}</seg>\n' for i, s in enumerate(lines))
    return [f'<{kind}set setid="newstest2014">', '<doc docid="d1">', segs.rstrip("\n"),
            "</doc>", f"</{kind}set>"]


def make_mirror(root):
    pair_stems = {"wmt13/training-parallel-europarl-v7.tgz": ["training/europarl-v7.de-en"],
                  "wmt13/training-parallel-commoncrawl.tgz": ["commoncrawl.de-en"],
                  "wmt14/training-parallel-nc-v9.tgz": ["training/news-commentary-v9.de-en"]}
    for seed, (archive, stems) in enumerate(pair_stems.items()):
        os.makedirs(os.path.join(root, os.path.dirname(archive)), exist_ok=True)
        with tarfile.open(os.path.join(root, archive), "w:gz") as tar:
            for stem in stems:
                add(tar, f"{stem}.en", sentences(60, "en", seed) + ["", "a " * 300])
                add(tar, f"{stem}.de", sentences(60, "de", seed) + ["leer", "b"])
    with tarfile.open(os.path.join(root, "wmt14/dev.tgz"), "w:gz") as tar:
        for lang in ("en", "de"):
            add(tar, f"dev/newstest2013.{lang}", sentences(20, lang, 9))
    with tarfile.open(os.path.join(root, "wmt14/test-full.tgz"), "w:gz") as tar:
        add(tar, "test-full/newstest2014-deen-src.en.sgm", sgm(sentences(15, "en", 5), "src"))
        add(tar, "test-full/newstest2014-deen-ref.de.sgm",
            sgm([s.replace("house_de", "Haus &amp; Hof") for s in sentences(15, "de", 5)], "ref"))


def run(*args, env=None):
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **(env or {})})


@pytest.mark.slow
def test_prepare_script_runs_offline_against_a_local_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    make_mirror(str(mirror))
    dest = tmp_path / "wmt14"
    proc = run("en-de", str(dest), env={"WMT_MIRROR": f"file://{mirror}", "SPM_VOCAB": "60"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    raw = dest / "raw"
    train_src = (raw / "train.src").read_text().splitlines()
    assert len(train_src) == 180  # 3 corpora x 60; empty and over-long pairs cleaned away
    assert len((raw / "valid.tgt").read_text().splitlines()) == 20
    test_ref = (raw / "test.tgt").read_text().splitlines()
    assert len(test_ref) == 15 and any("Haus & Hof" in x for x in test_ref)
    for f in ("dict.src.txt", "train.src-tgt.src.bin", "test.src-tgt.tgt.idx"):
        assert (dest / "bin" / f).exists()
    assert (dest / "spm.model").exists()


@pytest.mark.parametrize("args", [["en-xx", "/tmp/unused"], []])
def test_bad_arguments_give_one_line(args):
    proc = run(*args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "en-de" in proc.stderr
