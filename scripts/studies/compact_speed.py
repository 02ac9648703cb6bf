"""Decoder time per beam-search step of a compact (pruned) model against its dense model at the
paper's sizes, on random weights (speed does not depend on their values): where removing heads
and FFN units pays.  Both run fullyqt's float layers, the code path a compact model takes.

    python scripts/studies/compact_speed.py --sizes cpu-small,base --heads 0.5 --ffn 0.3 [--ct2]
"""
import argparse
import json
import os
import sys
import tempfile
from typing import List, Optional

import torch

from fullyqt.prune.macs import dims_of, sentence_macs, step_macs
from fullyqt.prune.shapes import CompactShapes, LayerShape
from fullyqt.bench.kernels import SIZES, size_args, add_size_args, checked_sizes, dictionary
from fullyqt.bench.deploy import ct2_sentence_ms
from pruning_report import timed_parts
from fullyqt.eval.decode import USER_DIR


def shapes_for(size: dict, heads: float, ffn: float) -> CompactShapes:
    """Every layer keeping the share ``heads`` of its heads and ``ffn`` of its FFN units (at
    least one of each)."""
    h = max(1, round(size["heads"] * heads))
    f = max(1, round(size["ffn"] * ffn))
    n = size["layers"]
    return CompactShapes([LayerShape(h, None, f)] * n, [LayerShape(h, h, f)] * n)


def model_args(size: dict, shapes: CompactShapes = None):
    """fairseq arguments of a fullyqt float model of ``size`` (compact when ``shapes``)."""
    extra = ["--no-quant"] + (["--prune-compact-shapes", shapes.to_json()] if shapes else [])
    return size_args(size, USER_DIR, True, extra)


def build(size: dict, d, shapes: CompactShapes = None):
    """A randomly initialised fullyqt float model of ``size`` (compact when ``shapes``)."""
    from fairseq.tasks.translation import TranslationTask

    args = model_args(size, shapes)
    return TranslationTask(args, d, d).build_model(args).eval()


def _checkpoint(model, args, d, directory: str, name: str) -> str:
    """``model`` (built from ``args``) saved as a fairseq checkpoint, its dictionaries in
    ``directory`` (for fullyqt-export)."""
    for lang in ("src", "tgt"):
        d.save(os.path.join(directory, f"dict.{lang}.txt"))
    args = argparse.Namespace(**{**vars(args), "data": directory, "source_lang": "src",
                                 "target_lang": "tgt"})
    path = os.path.join(directory, f"{name}.pt")
    torch.save({"args": args, "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"num_updates": 0, "best_loss": None}],
                "last_optimizer_state": None}, path)
    return path


def _ct2_columns(size, shapes, dense, compact, d, threads: int, src_len: int,
                 tgt_len: int) -> dict:
    from fullyqt.export.cli import export

    with tempfile.TemporaryDirectory() as tmp:
        ms = {}
        for name, model, args in (("dense", dense, model_args(size)),
                                  ("compact", compact, model_args(size, shapes))):
            out = export(_checkpoint(model, args, d, tmp, name), "ctranslate2",
                         os.path.join(tmp, f"{name}-ct2"), force=True, data=tmp)
            ms[name] = ct2_sentence_ms(out, d, threads=threads, src_len=src_len,
                                       tgt_len=tgt_len)
    bound = (sentence_macs(dims_of(dense), src_len, tgt_len)
             / sentence_macs(dims_of(compact), src_len, tgt_len))
    return {"ct2_dense_ms": ms["dense"], "ct2_compact_ms": ms["compact"],
            "sentence_mac_bound": bound}


def measure(sizes: List[str], heads: float, ffn: float, *, src_len: int = 30, steps: int = 8,
            table=SIZES, ct2_threads: Optional[int] = None) -> List[dict]:
    """One row per size; ``ct2_threads``: also CTranslate2 time per sentence of both models
    (converted by ``fullyqt-export --format ctranslate2``) against the multiply-add bound."""
    rows = []
    for name in sizes:
        size = table[name]
        d = dictionary(size["vocab"])
        shapes = shapes_for(size, heads, ffn)
        dense, compact = build(size, d), build(size, d, shapes)
        (d_step, d_layers, _), (c_step, c_layers, _) = (
            timed_parts(m, d, 32, 5, src_len, steps) for m in (dense, compact))
        position = steps // 2 + 1
        dm, cm = (step_macs(dims_of(m), position, src_len) for m in (dense, compact))
        rows.append({"size": name, **size, "kept_heads": shapes.decoder[0].heads,
                     "kept_ffn": shapes.decoder[0].ffn,
                     "dense_layers_ms": d_layers, "compact_layers_ms": c_layers,
                     "dense_step_ms": d_step, "compact_step_ms": c_step,
                     "layer_mac_ratio": dm["decoder_layers"] / cm["decoder_layers"],
                     "step_mac_bound": sum(dm.values()) / sum(cm.values()),
                     "output_share": dm["output_projection"] / sum(dm.values())})
        if ct2_threads:
            rows[-1].update(_ct2_columns(size, shapes, dense, compact, d, ct2_threads,
                                         src_len, src_len))
    return rows


def markdown(rows: List[dict], threads: int) -> List[str]:
    lines = ["## Compact model time per decoding step by size", "",
             f"One incremental decoder step for 32 sentences x beam 5, source length 30, "
             f"{threads} threads, random weights; dense and compact both in fullyqt's float "
             "layers.  Layer MACs: dense / compact multiply-adds in the decoder layers; step "
             "bound: the same for the whole step, output projection included.", "",
             "| size | heads kept | FFN units kept | decoder layers ms dense → compact | "
             "layers speed-up | layer MACs ratio | step ms dense → compact | step speed-up | "
             "step MAC bound | output projection share of dense MACs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['size']} (d={r['dim']}) | {r['kept_heads']} of {r['heads']} | "
            f"{r['kept_ffn']} of {r['ffn']} | {r['dense_layers_ms']:.2f} → "
            f"{r['compact_layers_ms']:.2f} | "
            f"{r['dense_layers_ms'] / r['compact_layers_ms']:.2f}x | "
            f"{r['layer_mac_ratio']:.2f}x | {r['dense_step_ms']:.2f} → "
            f"{r['compact_step_ms']:.2f} | {r['dense_step_ms'] / r['compact_step_ms']:.2f}x | "
            f"{r['step_mac_bound']:.2f}x | {r['output_share']:.0%} |")
    ct2 = [r for r in rows if "ct2_dense_ms" in r]
    if ct2:
        lines += ["", "CTranslate2 (int8, `fullyqt-export --format ctranslate2`): the same two "
                  "models, 32 random sources of 30 tokens a thread (one batch per thread), beam 5 "
                  "forced to exactly 30 target tokens; the bound is dense / compact multiply-adds "
                  "of a whole sentence (encoder, cross-attention keys and values, 30 decoder "
                  "steps).", "",
                  "| size | ms per sentence dense → compact | speed-up | MAC bound | "
                  "share of the bound |", "|---|---|---|---|---|"]
        for r in ct2:
            up = r["ct2_dense_ms"] / r["ct2_compact_ms"]
            lines.append(f"| {r['size']} (d={r['dim']}) | {r['ct2_dense_ms']:.2f} → "
                         f"{r['ct2_compact_ms']:.2f} | {up:.2f}x | "
                         f"{r['sentence_mac_bound']:.2f}x | {up / r['sentence_mac_bound']:.0%} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python scripts/studies/compact_speed.py",
                                description=__doc__.split("\n\n")[0])
    add_size_args(p)
    p.add_argument("--heads", type=float, default=0.5, help="share of heads kept (default 0.5)")
    p.add_argument("--ffn", type=float, default=0.3, help="share of FFN units kept (default 0.3)")
    p.add_argument("--ct2", action="store_true",
                   help="also time both models in CTranslate2 (needs the deploy extra)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the rows there (with its tables, for python -m fullyqt.bench.readme)")
    a = p.parse_args(argv)
    sizes = checked_sizes(p, a)
    for option, value in (("--heads", a.heads), ("--ffn", a.ffn)):
        if not 0 < value <= 1:
            p.exit(2, f"{p.prog}: error: {option}: got {value}; allowed: a share in (0, 1]\n")
    if a.ct2:
        try:
            import ctranslate2  # noqa: F401
        except ImportError:
            p.exit(2, f"{p.prog}: error: --ct2 needs CTranslate2: pip install -e '.[deploy]'\n")
    rows = measure(sizes, a.heads, a.ffn, ct2_threads=a.threads if a.ct2 else None)
    print("\n".join(markdown(rows, a.threads)))
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump({"kind": "compact_speed", "threads": a.threads, "rows": rows,
                       "markdown": markdown(rows, a.threads)[2:]}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
