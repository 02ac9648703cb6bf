"""The ``fairseq`` export: a plain stock ``transformer`` checkpoint.

Weights are the dequantized ones the quantized model computes with; quantizer state is dropped;
the arguments name a stock architecture and criterion and no plugin option.  Stock fairseq (and
CTranslate2's converter, which only accepts fairseq's own model names and argparse arguments)
load it.
"""
import argparse
import copy

import torch

from ..distill.options import CRITERION
from ..feature import plugin_options
from ..quant.quantizer import Quantizer
from ..quant.weight_source import WeightSource
from ..quant.weights import dequantized_weights, quantized_parameters, storage_key

STOCK_ARCH = {
    "fullyqt_transformer": "transformer",
    "fullyqt_transformer_tiny": "transformer",
    "fullyqt_transformer_wmt_en_de": "transformer_wmt_en_de",
    "fullyqt_transformer_wmt_en_de_big": "transformer_wmt_en_de_big",
}


def stock_args(args) -> argparse.Namespace:
    ns = copy.deepcopy(args) if isinstance(args, argparse.Namespace) else argparse.Namespace(**args)
    arch = STOCK_ARCH.get(ns.arch)
    if arch is None:
        raise ValueError(f"architecture {ns.arch!r} has no stock equivalent "
                         f"(known: {', '.join(STOCK_ARCH)})")
    for name in plugin_options():
        if hasattr(ns, name):
            delattr(ns, name)
    ns.arch = ns._name = arch
    ns.user_dir = None
    if getattr(ns, "criterion", None) == CRITERION:  # the student's loss: stock fairseq's
        ns.criterion = "label_smoothed_cross_entropy"

    return ns


@torch.no_grad()
def stock_state_dict(model) -> dict:
    """Float state dict: quantized tensors replaced by the dequantized weights the modules
    report; the state of quantizers, weight sources and other modules marked ``stock = False``
    (the pruner) dropped.  A tied weight keeps the value of its first name."""
    model.eval()
    stored = quantized_parameters(model)
    dense = dequantized_weights(model)
    plugin = tuple(f"{n}." for n, m in model.named_modules(remove_duplicate=False)
                   if isinstance(m, (Quantizer, WeightSource)) or not getattr(m, "stock", True))
    out, first = {}, {}
    for name, t in model.state_dict().items():
        if name.startswith(plugin) or (name in stored and name not in dense):
            continue  # quantizer, weight source or pruner state; a tensor a source multiplies
        if name in dense:
            t = first.setdefault(storage_key(stored[name][0]) if name in stored else name,
                                 dense[name].clone())
        out[name] = t
    for name, w in dense.items():  # weights a source makes from other tensors
        out.setdefault(name, w.clone())
    return out


def stock_checkpoint(model, args, num_updates: int = 0) -> dict:
    return {
        "args": stock_args(args),
        "model": stock_state_dict(model),
        "optimizer_history": [{"criterion_name": "CrossEntropyCriterion",
                               "optimizer_name": "Adam", "lr_scheduler_state": {"best": None},
                               "num_updates": num_updates}],
        "extra_state": {"epoch": 1},
        "last_optimizer_state": None,
    }
