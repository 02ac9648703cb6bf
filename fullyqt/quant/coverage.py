"""List every quantization point of a model: where it is, what it quantizes, bits and range.

    fullyqt-coverage CHECKPOINT            # a table
    fullyqt-coverage CHECKPOINT --json     # one JSON object per point
    fullyqt-coverage CHECKPOINT --data DIR # dictionaries from DIR, not the recorded data path
"""
import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch

from .grid import bucket_range
from .quantizer import ActivationQuantizer, Quantizer, WeightQuantizer
from .weights import quantized_parameters


@dataclass
class QuantPoint:
    name: str
    kind: str  # "weight" or "activation"
    bits: Optional[int]
    active: bool
    lo: Optional[float]
    hi: Optional[float]
    detail: str


def quantization_points(model: torch.nn.Module) -> List[QuantPoint]:
    """One entry per quantizer; weight ranges are read off the tensors each weight quantizer
    quantizes (min/max over their buckets)."""
    covers: Dict[int, List[torch.Tensor]] = {}
    for t, q in quantized_parameters(model).values():
        covers.setdefault(id(q), []).append(t)
    points = []
    for name, q in model.named_modules():
        if not isinstance(q, Quantizer):
            continue
        lo = hi = None
        if isinstance(q, WeightQuantizer):
            ranges = [bucket_range(t, q.buckets) for t in covers.get(id(q), [])]
            if ranges:
                lo = min(float(r[0].min()) for r in ranges)
                hi = max(float(r[1].max()) for r in ranges)
            detail = f"buckets={q.buckets}"
        else:
            assert isinstance(q, ActivationQuantizer)
            if bool(q.initialized):
                lo, hi = float(q.lo), float(q.hi)
            detail = ("unsigned " if q.unsigned else "") + f"ema={q.momentum}"
        points.append(QuantPoint(name, q.kind, q.bits, bool(q.active), lo, hi, detail))
    return points


def format_table(points: List[QuantPoint]) -> str:
    def rng(p):
        return "not observed yet" if p.lo is None else f"[{p.lo:+.4g}, {p.hi:+.4g}]"

    width = max(len(p.name) for p in points) if points else 10
    lines = [f"{'quantization point':<{width}}  {'kind':<10} bits  active  range / detail"]
    for p in points:
        lines.append(f"{p.name:<{width}}  {p.kind:<10} {str(p.bits):>4}  {str(p.active):<6}  "
                     f"{rng(p)}  {p.detail}")
    n_w = sum(p.kind == "weight" for p in points)
    lines.append(f"{len(points)} points: {n_w} weight, {len(points) - n_w} activation")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="fullyqt-coverage", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--data", help="data directory with the dictionaries (default: the one "
                                  "recorded in the checkpoint)")
    a = p.parse_args(argv)
    from ..checkpoint import arch_of, load_model, read_checkpoint
    try:
        arch = arch_of(read_checkpoint(a.checkpoint))
        if not str(arch).startswith("fullyqt"):
            raise ValueError(f"{a.checkpoint}: architecture {arch!r} is not a fullyqt model; "
                             "it has no quantization points")
        model = load_model(a.checkpoint, a.data)
    except (OSError, ValueError) as e:
        sys.exit(f"fullyqt-coverage: error: {e}")
    points = quantization_points(model)
    if a.json:
        for pt in points:
            print(json.dumps(asdict(pt)))
    else:
        print(format_table(points))


if __name__ == "__main__":
    main()
