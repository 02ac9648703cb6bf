"""Swap a trained model's ``QuantLinear`` layers for ``Int8Linear``.

Most linears take an input that an upstream quantizer already put on its grid (a LayerNorm
output, the ReLU output, the attention output).  One calibration forward pass with hooks finds,
for each linear, which quantizer produced its input (the same storage, or else the latest
quantizer whose grid holds every value of it, for inputs that fairseq multiplied by a padding
mask), so the integer codes are taken on exactly that grid.  The converted model is then checked
against the fake-quant one on the same pass.
"""
import logging
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..quant.fake_quant import step_size
from ..quant.linear import QuantLinear
from ..quant.quantizer import ActivationQuantizer
from .int8_linear import Int8Linear

logger = logging.getLogger(__name__)


class NativeConversionError(ValueError):
    pass


def _on_grid(x: torch.Tensor, q: ActivationQuantizer) -> bool:
    """Whether every value of x is a point of q's grid."""
    if not (q.enabled and q._initialized) or x.numel() == 0:
        return False
    lo, s = q.lo.double(), step_size(q.lo.double(), q.hi.double(), q.bits)
    k = torch.round((x.double() - lo) / s)
    return bool(((k >= 0) & (k <= 2**q.bits - 1)).all()) and bool(
        ((lo + k * s - x.double()).abs() <= 1e-3 * s).all())


def _producers(model: nn.Module, run) -> Dict[str, ActivationQuantizer]:
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


def _calibration_run(model):
    """A short source sentence through the encoder and two decoder steps."""
    dictionary = model.decoder.dictionary
    first = dictionary.nspecial
    src = torch.arange(first, first + 6).clamp_max(len(dictionary) - 1)
    src = torch.cat([src, torch.tensor([dictionary.eos()])])[None]
    prev = torch.tensor([[dictionary.eos(), first]])

    def run():
        model(*run.inputs)
    run.inputs = (src, torch.tensor([src.shape[1]]), prev)
    return run


def to_native_int8(model: nn.Module) -> int:
    """Replace every ``QuantLinear`` whose input grid is known by an ``Int8Linear``, in place;
    returns how many were replaced.  The model must be trained and in eval mode."""
    if model.training:
        raise NativeConversionError("convert a model in eval mode (model.eval())")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    bad = sorted({m.weight_quant.bits for m in linears.values()
                  if m.weight_quant.bits is None or m.weight_quant.bits > 8}, key=str)
    if bad:
        raise NativeConversionError(f"int8 kernels need weights of at most 8 bits; "
                                    f"the model has {bad}")
    run = _calibration_run(model)
    with torch.no_grad():
        reference = model(*run.inputs)[0]
    producers = _producers(model, run)
    replaced = 0
    for name, linear in linears.items():
        src = producers.get(name)
        if src is None or not src.enabled or not src._initialized or src.bits > 8:
            logger.info("fullyqt: %s stays fake-quant (its input grid is not an <= 8-bit "
                        "quantizer's)", name)
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int8Linear(linear, src, linear.output_quant))
        replaced += 1
    with torch.no_grad():
        native = model(*run.inputs)[0]
    err = (native - reference).abs().max().item()
    scale = max(1.0, reference.abs().max().item())
    if not err <= 0.1 * scale:  # wrong wiring is off by the whole scale
        raise NativeConversionError(f"int8 kernels disagree with the fake-quant model (max logit "
                                    f"difference {err:.3g}); decode with --quant-kernels fake")
    logger.info("fullyqt: %d of %d linear layers run int8 kernels (max logit difference %.2g)",
                replaced, len(linears), err)
    return replaced
