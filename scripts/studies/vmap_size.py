"""Vocabulary-map sizes on a CTranslate2 model: BLEU, tokens/s against the same model without a
map (one run, best of two decodes each), and the target candidates a batch of 32 keeps, for
several (per source token, always kept) sizes of the map built from the training data.

    python scripts/studies/vmap_size.py runs/cpu-small/recipes/fast/eval/input-ct2-vmap \
        runs/cpu-small/data/bin runs/cpu-small/data/raw/test.tgt --out runs/vmap-size
"""
import argparse
import os
import shutil
import time

from fullyqt.compress.evaluate import detokenizer, test_sources
from fullyqt.eval.decode import ct2_decode
from fullyqt.export.vmap import VmapSize, build_vmap, mean_candidates
from train_speed import write_outputs

SIZES = [(20, 100), (10, 100), (10, 50), (5, 50), (5, 20), (3, 20)]


def decode(model_dir, sources, refs, detok, threads, use_vmap):
    """The faster of two decodes of the test set (BLEU is the same in both)."""
    runs = [ct2_decode(model_dir, sources, refs, detok, threads=threads, use_vmap=use_vmap)
            for _ in range(2)]
    return max(runs, key=lambda r: r["tokens_per_second"])


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/studies/vmap_size.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("model", help="a CTranslate2 model folder (without a map, or with one)")
    p.add_argument("data", help="its binarized data (the map is built from the training split)")
    p.add_argument("reference", help="the raw target side of the test split")
    p.add_argument("--out", required=True, help="folder for vmap_size.json / .md and the maps")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4))
    a = p.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    with open(a.reference, encoding="utf-8") as f:
        refs = [line.rstrip("\n") for line in f]
    sources = test_sources(a.data, "src", "tgt")
    detok = detokenizer("sentencepiece")
    batches = [sources[i:i + 32] for i in range(0, len(sources), 32)]
    plain = decode(a.model, sources, refs, detok, a.threads, False)
    rows = []
    for per_token, frequent in SIZES:
        folder = os.path.join(a.out, f"ct2-{per_token}-{frequent}")
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(a.model, folder)
        build_vmap(a.data, "src", "tgt", os.path.join(folder, "vmap.txt"),
                   VmapSize(per_token, frequent))
        res = decode(folder, sources, refs, detok, a.threads, True)
        rows.append({"per_token": per_token, "frequent": frequent,
                     "candidates": mean_candidates(os.path.join(folder, "vmap.txt"), batches),
                     "bleu": res["bleu"], "tokens_per_second": res["tokens_per_second"]})
    lines = [f"{time.strftime('%Y-%m-%d')}, {a.threads} threads, CTranslate2 one batch per "
             f"thread, beam 5, batches of 32; without a map: BLEU {plain['bleu']:.2f}, "
             f"{plain['tokens_per_second']:.0f} tokens/s.", "",
             "| per source token | always kept | candidates per batch | BLEU vs no map | "
             "tokens/s vs no map |", "|---|---|---|---|---|"]
    lines += [f"| {r['per_token']} | {r['frequent']} | {r['candidates']:.0f} | "
              f"{r['bleu'] - plain['bleu']:+.2f} | "
              f"{r['tokens_per_second'] / plain['tokens_per_second']:.2f}x |" for r in rows]
    write_outputs(a.out, "vmap_size", "Vocabulary-map sizes",
                  {"kind": "vmap_size", "plain": {k: plain[k] for k in ("bleu",
                                                                        "tokens_per_second")},
                   "rows": rows}, lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
