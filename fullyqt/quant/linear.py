"""Linear layer with a fake-quantized weight and optional input/output activation quantizers."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import QuantConfig
from .integer_form import apply_integer_form, integer_form
from .padding import PaddingContext, valid_mask


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose weight (not bias) is quantized per bucket.

    ``quantize_input`` is for inputs no upstream quantizer produced; ``quantize_output`` is for
    outputs the scheme quantizes (the FFN output).  Parameter names match ``nn.Linear`` so float
    checkpoints load unchanged.  ``kernels`` picks the inference arithmetic (training always
    fake-quantizes): ``exact`` multiplies integer codes (``integer_form.py``; needs
    ``bind_input_grid``), ``fake``
    multiplies dequantized floats, ``fake64`` does that in float64.
    """

    def __init__(self, in_features, out_features, bias=True, *, qcfg: QuantConfig,
                 quantize_input=False, quantize_output=False, pad: Optional[PaddingContext] = None,
                 time_major=True):
        super().__init__(in_features, out_features, bias=bias)
        self.weight_quant = qcfg.weight()
        self.input_quant = qcfg.act() if quantize_input else None
        self.output_quant = qcfg.act() if quantize_output else None
        self.pad = pad
        self.time_major = time_major
        self.kernels = "fake"
        self.__dict__["input_grid"] = None  # a reference, not a child module
        self._form = None

    @classmethod
    def wrap(cls, linear: nn.Linear, **kwargs) -> "QuantLinear":
        """A QuantLinear that shares ``linear``'s parameters (keeps weight tying intact)."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def bind_input_grid(self, quantizer):
        """Record the activation quantizer whose grid this layer's inputs lie on (or None)."""
        self.__dict__["input_grid"] = quantizer
        self._form = None

    def exact_form(self):
        """The integer form on the current weight and ranges (cached), or None where unknown."""
        grid = self.input_grid
        if grid is None or not (self.weight_quant.enabled and grid.enabled and grid._initialized):
            return None
        w, b = self.weight, self.bias
        key = (w.data_ptr(), w._version, w.device, grid.lo.data_ptr(), grid.lo._version,
               grid.hi._version, None if b is None else (b.data_ptr(), b._version))
        if self._form is None or self._form[0] != key:
            self._form = (key, integer_form(self, grid))
        return self._form[1]

    def forward(self, x):
        if self.kernels == "exact" and not self.training and not torch.is_grad_enabled():
            form = self.exact_form()
            if form is not None:
                y = apply_integer_form(form, x)
                return y if self.output_quant is None else self.output_quant(y)
        valid = valid_mask(self, x)
        if self.input_quant is not None:
            x = self.input_quant(x, valid)
        # One 2-D matmul: for a transposed (batch-major view) activation and no bias, F.linear
        # falls back to a batched matmul that broadcasts the weight to every batch entry (one
        # matrix-vector product per hypothesis in incremental decoding).
        x2, w, b = x.reshape(-1, x.shape[-1]), self.weight_quant(self.weight), self.bias
        if self.kernels == "fake64" and not self.training:
            y = F.linear(x2.double(), w.double(), None if b is None else b.double()).to(x.dtype)
        else:
            y = F.linear(x2, w, b)
        y = y.view(*x.shape[:-1], y.shape[-1])
        if self.output_quant is not None:
            y = self.output_quant(y, valid)
        return y
