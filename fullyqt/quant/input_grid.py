"""Which quantizer put each linear layer's input on its grid.

Most linears take an input that an upstream quantizer already rounded (a LayerNorm output, the
ReLU output, the attention output).  One calibration forward pass with hooks finds, for each
``QuantLinear``, the quantizer that produced its input: the same storage, or else the latest
quantizer whose grid holds every value of it (inputs that fairseq multiplied by a padding mask).
Knowing that grid lets the layer run on integer codes (``integer_form.py``).
"""
from typing import Dict, List, Tuple

import torch
from torch import nn

from .fake_quant import step_size
from .linear import QuantLinear
from .quantizer import ActivationQuantizer


def _on_grid(x: torch.Tensor, q: ActivationQuantizer) -> bool:
    """Whether every value of x is a point of q's grid."""
    if not (q.enabled and q._initialized) or x.numel() == 0:
        return False
    lo, s = q.lo.double(), step_size(q.lo.double(), q.hi.double(), q.bits)
    k = torch.round((x.double() - lo) / s)
    return bool(((k >= 0) & (k <= 2**q.bits - 1)).all()) and bool(
        ((lo + k * s - x.double()).abs() <= 1e-3 * s).all())


def usable(q) -> bool:
    """Whether ``q`` is an active, calibrated quantizer of at most 8 bits."""
    return (isinstance(q, ActivationQuantizer) and q.enabled and q._initialized
            and q.bits <= 8)


def find_producers(model: nn.Module, run) -> Dict[str, ActivationQuantizer]:
    """``{linear name: the quantizer whose output it reads}`` seen in one ``run()``."""
    made: Dict[int, Tuple[ActivationQuantizer, torch.Tensor]] = {}
    seen: Dict[str, List] = {}
    handles = []

    def produced(module, _inputs, out):
        made[out.untyped_storage().data_ptr()] = (module, out)  # holding out keeps the key unique

    def consumed(name):
        def hook(module, inputs):
            x = inputs[0]
            hit = made.get(x.untyped_storage().data_ptr())
            src = hit[0] if hit is not None and hit[1].numel() == x.numel() else None
            if src is None and module.input_quant is None:
                src = next((q for q, _ in reversed(list(made.values())) if _on_grid(x, q)),
                           None)
            seen.setdefault(name, []).append(module.input_quant or src)
        return hook

    for m in model.modules():
        if isinstance(m, ActivationQuantizer):
            handles.append(m.register_forward_hook(produced))
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            handles.append(m.register_forward_pre_hook(consumed(name)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return {name: srcs[0] for name, srcs in seen.items()
            if srcs[0] is not None and all(s is srcs[0] for s in srcs)}


def calibration_run(model):
    """A short source sentence through the encoder and two decoder steps (``run.inputs``)."""
    dictionary = model.decoder.dictionary
    first = dictionary.nspecial
    src = torch.arange(first, first + 6).clamp_max(len(dictionary) - 1)
    src = torch.cat([src, torch.tensor([dictionary.eos()])])[None]
    prev = torch.tensor([[dictionary.eos(), first]])
    device = next(model.parameters()).device

    def run():
        model(*run.inputs)
    run.inputs = (src.to(device), torch.tensor([src.shape[1]], device=device), prev.to(device))
    return run


def ready(model: nn.Module) -> bool:
    """Whether every activation quantizer is active and has a range (grids can be found)."""
    return all(q.enabled and q._initialized for q in model.modules()
               if isinstance(q, ActivationQuantizer) and q.bits is not None)


def bind_input_grids(model: nn.Module) -> Dict[str, ActivationQuantizer]:
    """Find each ``QuantLinear``'s input quantizer in one eval-mode pass and record it on the
    layer (``QuantLinear.input_grid``); returns ``{linear name: quantizer}`` of the usable ones."""
    if model.training:
        raise ValueError("find input grids in eval mode (model.eval())")
    producers = find_producers(model, calibration_run(model))
    bound = {}
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            src = producers.get(name)
            narrow = m.weight_quant.bits is not None and m.weight_quant.bits <= 8
            m.bind_input_grid(src if narrow and usable(src) else None)
            if m.input_grid is not None:
                bound[name] = src
    return bound
