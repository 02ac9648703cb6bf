"""A linear layer that multiplies integer codes with ``torch._int_mm`` (int8 x int8 -> int32).

The arithmetic is ``quant/integer_form.py``'s, the same as ``--quant-kernels exact``, so the
two give identical results; only the integer matmul differs.
"""
from typing import Optional

import torch
from torch import nn

from ..quant.integer_form import (IntegerForm, apply_integer_form, exact_matmul,
                                  integer_form)
from ..quant.quantizer import ActivationQuantizer


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 ``a @ b`` of integer-valued ``a`` (any dtype, values in int8) and int8 ``b``.
    CUDA's ``_int_mm`` wants more than 16 rows and sizes divisible by 8; other shapes there (and
    empty inputs) take the exact float path."""
    m, k = a.shape
    if m == 0 or (a.is_cuda and (m <= 16 or k % 8 or b.shape[1] % 8)):
        return exact_matmul(a, b).to(torch.int32)
    return torch._int_mm(a.to(torch.int8), b)


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
        y = apply_integer_form(self.form(), x, int_matmul)
        return y if self.output_quant is None else self.output_quant(y)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"input_bits={self.input_bits}")
