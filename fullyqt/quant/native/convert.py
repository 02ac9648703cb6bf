"""Swap a trained model's ``QuantLinear`` layers for ``Int8Linear``.

Each linear knows the quantizer that feeds it (wired when the model was built), so its integer
form is the one exact evaluation computes; a linear whose input is not on an <= 8-bit grid stays
fake-quant.
"""
import logging

from torch import nn

from ..integer_form import MAX_BITS
from ..linear import QuantLinear
from .int8_linear import Int8Linear

logger = logging.getLogger(__name__)


class NativeConversionError(ValueError):
    pass


def to_native_int8(model: nn.Module) -> int:
    """Replace every ``QuantLinear`` whose integer form exists by an ``Int8Linear``, in place;
    returns how many were replaced.  The model must be trained and in eval mode."""
    if model.training:
        raise NativeConversionError("convert a model in eval mode (model.eval())")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}
    bad = sorted({m.weight_quant.bits for m in linears.values()
                  if m.weight_quant.bits is None or m.weight_quant.bits > MAX_BITS}, key=str)
    if bad:
        raise NativeConversionError(f"int8 kernels need weights of at most {MAX_BITS} bits; "
                                    f"the model has {bad}")
    converted = 0
    for name, linear in linears.items():
        if linear.integer_form() is None:
            logger.info("fullyqt: %s stays fake-quant (its input is not an active <= 8-bit "
                        "quantizer's)", name)
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, Int8Linear(linear))
        converted += 1
    logger.info("fullyqt: %d of %d linear layers run int8 kernels", converted, len(linears))
    return converted
