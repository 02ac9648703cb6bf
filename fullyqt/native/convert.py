"""Swap a trained model's ``QuantLinear`` layers for ``Int8Linear``.

Each linear's input grid is found by one calibration pass (``quant/input_grid.py``), so the
integer codes are taken on exactly that grid; the converted model is then checked against the
unconverted one on the same pass.
"""
import logging

import torch
from torch import nn

from ..quant.input_grid import bind_input_grids, calibration_run
from ..quant.linear import QuantLinear
from .int8_linear import Int8Linear

logger = logging.getLogger(__name__)


class NativeConversionError(ValueError):
    pass


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
    run = calibration_run(model)
    with torch.no_grad():
        reference = model(*run.inputs)[0]
    bound = bind_input_grids(model)
    for name, linear in linears.items():
        if name not in bound:
            logger.info("fullyqt: %s stays fake-quant (its input grid is not an <= 8-bit "
                        "quantizer's)", name)
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int8Linear(linear, bound[name], linear.output_quant))
    with torch.no_grad():
        native = model(*run.inputs)[0]
    err = (native - reference).abs().max().item()
    scale = max(1.0, reference.abs().max().item())
    if not err <= 0.1 * scale:  # wrong wiring is off by the whole scale
        raise NativeConversionError(f"int8 kernels disagree with the fake-quant model (max logit "
                                    f"difference {err:.3g}); decode with --quant-kernels fake")
    logger.info("fullyqt: %d of %d linear layers run int8 kernels (max logit difference %.2g)",
                len(bound), len(linears), err)
    return len(bound)
