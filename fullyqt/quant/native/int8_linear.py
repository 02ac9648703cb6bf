"""A linear layer that holds only integer codes and multiplies them with ``torch._int_mm``.

It runs its source's integer form (``quant/integer_form.py``), the one ``--quant-kernels exact``
runs, so the two give identical results; it drops the float weight (smaller in memory).
"""
import torch
from torch import nn


class Int8Linear(nn.Module):
    """Inference-only integer form of a trained ``QuantLinear`` (weights and input <= 8 bits)."""

    def __init__(self, linear):
        super().__init__()
        form = linear.integer_form()
        if form is None:
            raise ValueError("Int8Linear needs a linear fed by an active, calibrated quantizer "
                             "of at most 8 bits, with weights of at most 8 bits")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.form = form
        self.output_quant = linear.output_quant
        self.input_bits = linear.input_grid.bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("Int8Linear is inference-only; train the fake-quant checkpoint, "
                               "not an integer export")
        y = self.form(x)
        return y if self.output_quant is None else self.output_quant(y)

    def extra_repr(self):
        return f"input_bits={self.input_bits}"
