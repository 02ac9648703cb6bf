"""A generated translation task a tiny model learns in about a minute: reverse a word sequence.

Source and target use disjoint vocabularies (``a3`` -> ``A3``) so the model must learn a
mapping and the reordering; lengths vary so padding is exercised.
"""
import argparse
import os
import random

SPLITS = {"train": 4000, "valid": 200, "test": 200}


def make_pair(rng: random.Random, vocab: int, min_len: int, max_len: int):
    words = [f"w{rng.randrange(vocab)}" for _ in range(rng.randint(min_len, max_len))]
    return " ".join(words), " ".join(w.upper() for w in reversed(words))


def write_reversal_task(dest: str, vocab: int = 12, min_len: int = 3, max_len: int = 9,
                        seed: int = 1, sizes=None):
    """Write ``{split}.src`` / ``{split}.tgt`` under ``dest``; returns the file prefix per split."""
    os.makedirs(dest, exist_ok=True)
    rng = random.Random(seed)
    prefixes = {}
    for split, n in (sizes or SPLITS).items():
        pairs = [make_pair(rng, vocab, min_len, max_len) for _ in range(n)]
        for side, idx in (("src", 0), ("tgt", 1)):
            with open(os.path.join(dest, f"{split}.{side}"), "w") as f:
                f.writelines(p[idx] + "\n" for p in pairs)
        prefixes[split] = os.path.join(dest, split)
    return prefixes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dest")
    p.add_argument("--vocab", type=int, default=12)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    write_reversal_task(a.dest, vocab=a.vocab, seed=a.seed)


if __name__ == "__main__":
    main()
