"""Paired bootstrap of a BLEU difference against sacrebleu's corpus BLEU on resampled lists."""
import random

import numpy as np
import pytest
import sacrebleu

from fullyqt.eval.significance import (compare, bleu_from_stats, resample_indices,
                                       resampled_deltas, sentence_stats)

WORDS = "the lord said unto moses and his people went out of the land of egypt".split()


def corpus(n=120, seed=0):
    rng = random.Random(seed)
    refs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]

    def noisy(p):
        return [" ".join(w if rng.random() > p else rng.choice(WORDS) for w in r.split())
                for r in refs]
    return refs, noisy(0.2), noisy(0.35)


def test_summed_sentence_statistics_give_sacrebleus_corpus_bleu():
    refs, good, _ = corpus()
    direct = sacrebleu.corpus_bleu(good, [refs]).score
    assert bleu_from_stats(sentence_stats(good, refs).sum(0)) == pytest.approx(direct, abs=1e-9)


def test_resampled_differences_equal_sacrebleu_on_the_resampled_lists():
    refs, good, bad = corpus()
    idx = resample_indices(len(refs), samples=5, seed=3)
    deltas = resampled_deltas(sentence_stats(good, refs), sentence_stats(bad, refs), idx)
    for row, d in zip(idx, deltas):
        pick = lambda xs: [xs[i] for i in row]  # noqa: E731
        ref = [pick(refs)]
        expected = (sacrebleu.corpus_bleu(pick(good), ref).score
                    - sacrebleu.corpus_bleu(pick(bad), ref).score)
        assert d == pytest.approx(expected, abs=1e-9)


def test_interval_brackets_the_difference_and_separates_a_clearly_better_system():
    refs, good, bad = corpus()
    same = compare(good, good, refs, samples=200)
    assert (same.delta, same.low, same.high) == (0.0, 0.0, 0.0)
    better = compare(refs, bad, refs, samples=200)  # the references themselves: BLEU 100
    assert better.low > 0 and better.low <= better.delta <= better.high
    close = compare(good, bad, refs, samples=200)
    assert close.high - close.low > 0
    assert str(close).startswith(f"{close.delta:+.2f} [")
    assert compare(good, bad, refs, samples=200) == close  # seeded: the same interval again


def test_mismatched_lengths_are_refused_with_the_counts():
    refs, good, bad = corpus(10)
    with pytest.raises(ValueError, match="9 hypotheses for 10 references"):
        compare(good[:9], bad, refs)
    with pytest.raises(ValueError, match="control: 8 hypotheses for 10 references"):
        compare(good, bad[:8], refs)
    with pytest.raises(ValueError, match="samples 0: allowed an integer >= 1"):
        compare(good, bad, refs, samples=0)
    assert np.isfinite(compare(good, bad, refs, samples=20).delta)
