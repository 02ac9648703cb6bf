"""Scoring refuses an output that lacks sentences instead of scoring them as empty."""
import re
import subprocess
import sys

import pytest
import sacrebleu

from fullyqt.eval.bleu import hypotheses_from_generate
from tests.conftest import REPO


def generate_lines(ids):
    return [f"D-{i}\t-0.5\tsentence number {i}" for i in ids]


def test_every_sentence_must_have_a_hypothesis():
    assert hypotheses_from_generate(generate_lines([1, 0, 2]), 3) == [
        "sentence number 0", "sentence number 1", "sentence number 2"]
    with pytest.raises(ValueError, match=r"298 of 300 sentences translated \(missing ids "
                                         r"\[7, 299\]\); run fairseq-generate with "
                                         r"--required-batch-size-multiple 1"):
        hypotheses_from_generate(generate_lines(i for i in range(300) if i not in (7, 299)), 300)
    with pytest.raises(ValueError, match=r"missing ids \[1\]"):
        hypotheses_from_generate(generate_lines([0, 2]))
    with pytest.raises(ValueError, match="sentence id 3 in the output but only 3 references"):
        hypotheses_from_generate(generate_lines(range(4)), 3)


@pytest.mark.slow
def test_bleu_command_names_the_count(tmp_path):
    out, ref = tmp_path / "gen.txt", tmp_path / "ref.txt"
    hyps = [f"this is the sentence number {i} of three" for i in range(3)]
    out.write_text("".join(f"D-{i}\t-0.5\t{h}\n" for i, h in enumerate(hyps)))
    ref.write_text("\n".join(hyps) + "\n")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.eval.bleu", str(out), str(ref)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0 and "BLEU = 100.00  (3 sentences; " in proc.stdout  # all match
    ref.write_text("this is the sentence number 0 of three\nthis is sentence number 1 of three"
                   "\nthat was the sentence numeral 2 of three\n")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.eval.bleu", str(out), str(ref)],
                          capture_output=True, text=True, cwd=REPO)
    expected = sacrebleu.corpus_bleu(hyps, [ref.read_text().splitlines()]).score
    assert 0 < expected < 100 and f"BLEU = {expected:.2f}  (3 sentences; " in proc.stdout
    ref.write_text("a\nb\nc\nd\n")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.eval.bleu", str(out), str(ref)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"bleu: error: {out}: 3 of 4 sentences translated (missing ids [3]); "
        "run fairseq-generate with --required-batch-size-multiple 1")


@pytest.mark.slow
def test_bleu_command_compares_two_systems_with_an_interval(tmp_path):
    words = "the lord said unto moses go and speak to the children of israel".split()
    refs = [" ".join(words[i % 5:i % 5 + 6]) for i in range(30)]
    better = [r if i % 3 else r.split(" ", 1)[1] for i, r in enumerate(refs)]  # a third cut short
    worse = [" ".join(reversed(r.split())) if i % 2 else r for i, r in enumerate(refs)]
    ref, sys_out, ctl_out = tmp_path / "ref.txt", tmp_path / "a.txt", tmp_path / "b.txt"
    ref.write_text("\n".join(refs) + "\n")
    for path, hyps in ((sys_out, better), (ctl_out, worse)):
        path.write_text("\n".join(f"D-{i}\t-0.5\t{h}" for i, h in enumerate(hyps)) + "\n")

    def run(*args):
        return subprocess.run([sys.executable, "-m", "fullyqt.eval.bleu", *map(str, args)],
                              capture_output=True, text=True, cwd=REPO)

    proc = run(sys_out, ref, "--control", ctl_out)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.splitlines()[-1]
    delta, low, high = (float(x) for x in re.findall(r"[-+]\d+\.\d+", line.rsplit(": ", 1)[1]))
    want = (sacrebleu.corpus_bleu(better, [refs]).score
            - sacrebleu.corpus_bleu(worse, [refs]).score)
    assert line.startswith(f"vs control {ctl_out}: ") and delta == pytest.approx(want, abs=0.006)
    assert want > 10 and low < delta < high and low > 0  # a real gap, beyond resampling noise
    assert run(sys_out, ref, "--control", sys_out).stdout.splitlines()[-1].endswith(
        ": +0.00 [+0.00, +0.00]  (95% paired bootstrap)")
    ctl_out.write_text("D-0\t-0.5\tthe lord\n")
    proc = run(sys_out, ref, "--control", ctl_out)
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"bleu: error: {ctl_out}: 1 of 30 sentences translated (missing ids "
        "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10] ...); run fairseq-generate with "
        "--required-batch-size-multiple 1")


@pytest.mark.slow
def test_a_file_that_is_not_utf8_is_named(tmp_path):
    out, ref = tmp_path / "gen.txt", tmp_path / "ref.txt"
    out.write_text("D-0\t-0.5\ta b c d e\n")
    ref.write_text("a b c d e\n", encoding="utf-16")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.eval.bleu", str(out), str(ref)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"bleu: error: {ref}: not UTF-8 text (invalid start byte at byte 0)")
