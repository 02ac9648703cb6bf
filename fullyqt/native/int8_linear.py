"""A linear layer that holds only integer codes and multiplies them with ``torch._int_mm``.

The arithmetic is ``quant/integer_form.py``'s, the same as ``--quant-kernels exact``, so the two
give identical results; this module drops the float weight (smaller in memory) and needs no
calibration at run time.
"""
from typing import Optional

import torch
from torch import nn

from ..quant.integer_form import IntegerForm, apply_integer_form, integer_form
from ..quant.quantizer import ActivationQuantizer


class Int8Linear(nn.Module):
    """Inference-only integer form of a trained ``QuantLinear`` (weights and input <= 8 bits)."""

    def __init__(self, linear, input_quant: ActivationQuantizer,
                 output_quant: Optional[ActivationQuantizer] = None):
        super().__init__()
        form = integer_form(linear, input_quant)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.output_quant = output_quant
        self.input_bits = input_quant.bits
        # the int8 codes, stored (in, out) so that _int_mm reads them without a copy
        for name in ("weight_t", "alpha", "beta", "c"):
            self.register_buffer(name, getattr(form, name), persistent=False)
        self._input = (form.x_scale_inv, form.x_shift, form.x_min, form.x_max)

    def form(self) -> IntegerForm:
        return IntegerForm(self.weight_t, self.alpha, self.beta, self.c, *self._input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("Int8Linear is inference-only; train the fake-quant checkpoint, "
                               "not an integer export")
        y = apply_integer_form(self.form(), x)
        return y if self.output_quant is None else self.output_quant(y)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"input_bits={self.input_bits}")
