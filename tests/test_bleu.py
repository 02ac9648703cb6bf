"""Scoring refuses an output that lacks sentences instead of scoring them as empty."""
import subprocess
import sys

import pytest

from fullyqt.eval.bleu import corpus_bleu, hypotheses_from_generate
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


def test_bleu_command_names_the_count(tmp_path):
    out, ref = tmp_path / "gen.txt", tmp_path / "ref.txt"
    out.write_text("\n".join(generate_lines(range(3))) + "\n")
    ref.write_text("sentence number 0\nsentence number 1\nsentence number 2\n")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.eval.bleu", str(out), str(ref)],
                          capture_output=True, text=True, cwd=REPO)
    expected = corpus_bleu([f"sentence number {i}" for i in range(3)],
                           ref.read_text().splitlines())[0]
    assert proc.returncode == 0 and f"BLEU = {expected:.2f}  (3 sentences; " in proc.stdout
    ref.write_text("a\nb\nc\nd\n")
    proc = subprocess.run([sys.executable, "-m", "fullyqt.eval.bleu", str(out), str(ref)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == ("bleu: error: 3 of 4 sentences translated (missing ids [3]); "
                                   "run fairseq-generate with --required-batch-size-multiple 1")
