"""BLEU the way papers report it: sacrebleu on detokenized hypotheses against raw references.

``fairseq-generate --scoring sacrebleu`` scores against references rebuilt from the binarized
data (unknown words become <unk>, BPE is joined the model's way); this module reads the ``D-``
(detokenized) lines of fairseq-generate's output instead and scores them against the raw text.

    python -m fullyqt.eval.bleu GENERATE_OUTPUT REFERENCE_FILE
    python -m fullyqt.eval.bleu GENERATE_OUTPUT REFERENCE_FILE --control OTHER_OUTPUT
"""
import argparse
import re
import sys
from typing import Iterable, List, Optional, Tuple

import sacrebleu

_HYP = re.compile(r"^D-(\d+)\t[^\t]*\t(.*)$")


def hypotheses_from_generate(lines: Iterable[str], n: Optional[int] = None) -> List[str]:
    """Detokenized hypotheses of a fairseq-generate log in input order, one per sentence.

    With ``n`` (the number of references), every sentence must have one: fairseq-generate drops
    the tail of a batch under its default ``--required-batch-size-multiple 8``, and scoring the
    missing sentences as empty (or the rest against shifted references) would report a wrong BLEU.
    """
    by_id = {}
    for line in lines:
        m = _HYP.match(line.rstrip("\n"))
        if m:
            by_id.setdefault(int(m.group(1)), m.group(2))
    if not by_id:
        raise ValueError("no 'D-' lines found: is this the output of fairseq-generate?")
    if n is not None and max(by_id) >= n:
        raise ValueError(f"sentence id {max(by_id)} in the output but only {n} references")
    n = max(by_id) + 1 if n is None else n
    missing = sorted(set(range(n)) - set(by_id))
    if missing:
        raise ValueError(f"{len(by_id)} of {n} sentences translated (missing ids "
                         f"{missing[:10]}{' ...' if len(missing) > 10 else ''}); run "
                         "fairseq-generate with --required-batch-size-multiple 1")
    return [by_id[i] for i in range(n)]


def corpus_bleu(hypotheses: List[str], references: List[str]) -> Tuple[float, str]:
    """(BLEU, sacrebleu signature); refuses mismatched lengths rather than scoring a prefix."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    metric = sacrebleu.metrics.BLEU()
    score = metric.corpus_score(hypotheses, [references])
    return score.score, str(metric.get_signature())


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fullyqt.eval.bleu",
                                description=__doc__.splitlines()[0])
    p.add_argument("generate_output", help="fairseq-generate's stdout saved to a file")
    p.add_argument("reference", help="raw (untokenized) reference text, one sentence per line")
    p.add_argument("--control", metavar="GENERATE_OUTPUT",
                   help="a second system's fairseq-generate output: also print the BLEU "
                        "difference to it with its 95%% paired-bootstrap interval")
    a = p.parse_args(argv)
    try:
        refs = [line.rstrip("\n") for line in _lines(a.reference)]
        hyps = _read_hypotheses(a.generate_output, len(refs))
        control = _read_hypotheses(a.control, len(refs)) if a.control else None
        score, sig = corpus_bleu(hyps, refs)
    except (OSError, ValueError) as e:
        sys.exit(f"bleu: error: {e}")
    print(f"BLEU = {score:.2f}  ({len(hyps)} sentences; {sig})")
    if control is not None:
        from .significance import compare

        print(f"vs control {a.control}: {compare(hyps, control, refs)}  (95% paired bootstrap)")


def _lines(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); convert it, "
                         "e.g. iconv -t UTF-8") from None


def _read_hypotheses(path: str, n: int) -> List[str]:
    try:
        return hypotheses_from_generate(_lines(path), n)
    except ValueError as e:
        raise ValueError(e if str(e).startswith(f"{path}: ") else f"{path}: {e}") from None


if __name__ == "__main__":
    main()
