"""Decoder time per beam-search step of a compact (pruned) model against its dense model at the
paper's sizes, on random weights (speed does not depend on their values): where removing heads
and FFN units pays.  Both run fullyqt's float layers, the code path a compact model takes.

    python -m fullyqt.bench.compact_speed --sizes cpu-small,base --heads 0.5 --ffn 0.3
"""
import argparse
import sys
from typing import List

from ..prune.macs import dims_of, step_macs
from ..prune.shapes import CompactShapes, LayerShape
from .kernels import SIZES, _args, _step_ms, add_size_args, checked_sizes, dictionary
from .steps import _Timer


def shapes_for(size: dict, heads: float, ffn: float) -> CompactShapes:
    """Every layer keeping the share ``heads`` of its heads and ``ffn`` of its FFN units (at
    least one of each)."""
    h = max(1, round(size["heads"] * heads))
    f = max(1, round(size["ffn"] * ffn))
    n = size["layers"]
    return CompactShapes([LayerShape(h, None, f)] * n, [LayerShape(h, h, f)] * n)


def build(size: dict, d, shapes: CompactShapes = None, user_dir: str = None):
    """A randomly initialised fullyqt float model of ``size`` (compact when ``shapes``)."""
    from fairseq.tasks.translation import TranslationTask

    extra = ["--no-quant"] + (["--prune-compact-shapes", shapes.to_json()] if shapes else [])
    args = _args(size, user_dir or _user_dir(), True, extra)
    return TranslationTask(args, d, d).build_model(args).eval()


def _user_dir():
    import os

    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed_step(model, d, *, batch: int = 32, beam: int = 5, src_len: int = 30, steps: int = 8,
               repeats: int = 3):
    """(whole step ms, decoder layers ms) of the least disturbed of ``repeats`` timings."""
    _step_ms(model, d, batch, beam, src_len, steps)  # warm-up: first-call allocations
    best = None
    for _ in range(repeats):
        timers = [_Timer(layer) for layer in model.decoder.layers]
        try:
            total = _step_ms(model, d, batch, beam, src_len, steps)
        finally:
            for t in timers:
                t.remove()
        layers = 1e3 * sum(t.seconds / t.calls for t in timers)
        if best is None or total < best[0]:
            best = (total, layers)
    return best


def measure(sizes: List[str], heads: float, ffn: float, *, src_len: int = 30, steps: int = 8,
            table=SIZES) -> List[dict]:
    rows = []
    for name in sizes:
        size = table[name]
        d = dictionary(size["vocab"])
        shapes = shapes_for(size, heads, ffn)
        dense, compact = build(size, d), build(size, d, shapes)
        (d_step, d_layers), (c_step, c_layers) = (timed_step(m, d, src_len=src_len, steps=steps)
                                                  for m in (dense, compact))
        position = steps // 2 + 1
        dm, cm = (step_macs(dims_of(m), position, src_len) for m in (dense, compact))
        rows.append({"size": name, **size, "kept_heads": shapes.decoder[0].heads,
                     "kept_ffn": shapes.decoder[0].ffn,
                     "dense_layers_ms": d_layers, "compact_layers_ms": c_layers,
                     "dense_step_ms": d_step, "compact_step_ms": c_step,
                     "layer_mac_ratio": dm["decoder_layers"] / cm["decoder_layers"],
                     "step_mac_bound": sum(dm.values()) / sum(cm.values()),
                     "output_share": dm["output_projection"] / sum(dm.values())})
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
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fullyqt.bench.compact_speed",
                                description=__doc__.split("\n\n")[0])
    add_size_args(p)
    p.add_argument("--heads", type=float, default=0.5, help="share of heads kept (default 0.5)")
    p.add_argument("--ffn", type=float, default=0.3, help="share of FFN units kept (default 0.3)")
    a = p.parse_args(argv)
    sizes = checked_sizes(p, a)
    for option, value in (("--heads", a.heads), ("--ffn", a.ffn)):
        if not 0 < value <= 1:
            p.exit(2, f"{p.prog}: error: {option}: got {value}; allowed: a share in (0, 1]\n")
    print("\n".join(markdown(measure(sizes, a.heads, a.ffn), a.threads)))


if __name__ == "__main__":
    sys.exit(main())
