"""CTranslate2 models timed on equal work: the test split's first sources, beam search forced to
the same number of target tokens for every model (the test targets' mean length), so a model that
writes shorter translations is not counted faster; tokens/s against a reference model, all in
one run, one batch per thread.

    python scripts/studies/equal_work.py runs/cpu-small/data/bin \
        input=runs/cpu-small/recipes/fast/eval/input-ct2-vmap \
        input+vmap=runs/cpu-small/recipes/fast/eval/input-ct2-vmap \
        fast+vmap=runs/cpu-small/recipes/fast/ct2 --out runs/equal-work
"""
import argparse
import json
import os
import time

from fullyqt.compress.evaluate import test_sources
from fullyqt.eval.decode import ct2_translator


def target_mean_length(data: str, src: str = "src", tgt: str = "tgt") -> int:
    """Mean token count of the test split's targets (without end of sentence), rounded."""
    from fairseq.data import data_utils

    ds = data_utils.load_indexed_dataset(os.path.join(data, f"test.{src}-{tgt}.{tgt}"), None)
    return round(sum(len(ds[i]) - 1 for i in range(len(ds))) / len(ds))


def timed(model_dir: str, sources, length: int, *, threads: int, use_vmap: bool,
          batch: int = 32, beam: int = 5, repeats: int = 3) -> float:
    """Target tokens per second, beam search forced to ``length`` tokens; the best of
    ``repeats`` after a warm-up."""
    translator = ct2_translator(model_dir, threads)
    fixed = dict(beam_size=beam, max_batch_size=batch, min_decoding_length=length,
                 max_decoding_length=length, use_vmap=use_vmap)
    translator.translate_batch(sources, **fixed)
    best = min(_seconds(translator, sources, fixed) for _ in range(repeats))
    return len(sources) * length / best


def _seconds(translator, sources, fixed) -> float:
    start = time.perf_counter()
    translator.translate_batch(sources, **fixed)
    return time.perf_counter() - start


def parse_model(p, text: str):
    """``NAME=DIR`` or ``NAME+vmap=DIR`` (decode with the folder's vocabulary map)."""
    name, sep, folder = text.partition("=")
    if not sep or not name or not os.path.isfile(os.path.join(folder, "model.bin")):
        p.error(f"{text!r}: expected NAME=DIR or NAME+vmap=DIR with DIR a CTranslate2 model")
    vmap = name.endswith("+vmap")
    if vmap and not os.path.isfile(os.path.join(folder, "vmap.txt")):
        p.error(f"{text!r}: {folder} has no vmap.txt")
    return name, folder, vmap


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/studies/equal_work.py",
                                description=__doc__.splitlines()[0])
    p.add_argument("data", help="the binarized data (its test split is decoded)")
    p.add_argument("models", nargs="+", help="NAME=DIR or NAME+vmap=DIR; the first is the "
                                             "reference")
    p.add_argument("--out", required=True, help="folder for equal_work.json / .md")
    p.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 4))
    p.add_argument("--sentences", type=int, default=256)
    a = p.parse_args(argv)
    models = [parse_model(p, m) for m in a.models]
    sources = test_sources(a.data, "src", "tgt")[:a.sentences]
    length = target_mean_length(a.data)
    rows = [{"model": name, "dir": folder, "vmap": vmap,
             "tokens_per_second": timed(folder, sources, length, threads=a.threads,
                                        use_vmap=vmap)} for name, folder, vmap in models]
    ref = rows[0]["tokens_per_second"]
    lines = [f"{time.strftime('%Y-%m-%d')}, {a.threads} threads, CTranslate2 one batch per "
             f"thread, beam 5 forced to {length} target tokens (the test targets' mean), the "
             f"first {len(sources)} test sources, best of 3.", "",
             "| model | tokens/s | vs " + rows[0]["model"] + " |", "|---|---|---|"]
    lines += [f"| {r['model']} | {r['tokens_per_second']:.0f} | "
              f"{r['tokens_per_second'] / ref:.2f}x |" for r in rows]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "equal_work.json"), "w") as f:
        json.dump({"length": length, "sentences": len(sources), "rows": rows}, f, indent=1)
    with open(os.path.join(a.out, "equal_work.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
