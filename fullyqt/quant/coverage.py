"""List every quantization point of a model: where it is, what it quantizes, bits and range.

    fullyqt-coverage CHECKPOINT            # a table
    fullyqt-coverage CHECKPOINT --json     # one JSON object per point
"""
import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

from .quantizer import ActivationQuantizer, Quantizer, WeightQuantizer, bucket_range


@dataclass
class QuantPoint:
    name: str
    kind: str  # "weight" or "activation"
    bits: Optional[int]
    active: bool
    lo: Optional[float]
    hi: Optional[float]
    detail: str


def _owner_weight(model, name):
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    for attr in ("weight", "weights"):
        w = getattr(owner, attr, None)
        if isinstance(w, torch.Tensor):
            return w
    return None


def quantization_points(model: torch.nn.Module) -> List[QuantPoint]:
    """One entry per quantizer; weight ranges are read off the weight (min/max over buckets)."""
    points = []
    for name, q in model.named_modules():
        if not isinstance(q, Quantizer):
            continue
        lo = hi = None
        if isinstance(q, WeightQuantizer):
            w = _owner_weight(model, name)
            if w is not None:
                blo, bhi = bucket_range(w, q.buckets)
                lo, hi = float(blo.min()), float(bhi.max())
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
    a = p.parse_args(argv)
    from ..checkpoint import load_model
    try:
        model = load_model(a.checkpoint)
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
