"""Linear layer with a fake-quantized weight and optional input/output activation quantizers."""
from typing import Optional

import torch.nn.functional as F
from torch import nn

from .config import QuantConfig
from .padding import PaddingContext, valid_mask


class QuantLinear(nn.Linear):
    """``nn.Linear`` whose weight (not bias) is quantized per bucket.

    ``quantize_input`` is for inputs no upstream quantizer produced; ``quantize_output`` is for
    outputs the scheme quantizes (the FFN output).  Parameter names match ``nn.Linear`` so float
    checkpoints load unchanged.
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
        self.accumulate_double = False  # eval only: --quant-kernels fake64

    @classmethod
    def wrap(cls, linear: nn.Linear, **kwargs) -> "QuantLinear":
        """A QuantLinear that shares ``linear``'s parameters (keeps weight tying intact)."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def forward(self, x):
        valid = valid_mask(self, x)
        if self.input_quant is not None:
            x = self.input_quant(x, valid)
        # One 2-D matmul: for a transposed (batch-major view) activation and no bias, F.linear
        # falls back to a batched matmul that broadcasts the weight to every batch entry (one
        # matrix-vector product per hypothesis in incremental decoding).
        x2, w, b = x.reshape(-1, x.shape[-1]), self.weight_quant(self.weight), self.bias
        if self.accumulate_double and not self.training:
            y = F.linear(x2.double(), w.double(), None if b is None else b.double()).to(x.dtype)
        else:
            y = F.linear(x2, w, b)
        y = y.view(*x.shape[:-1], y.shape[-1])
        if self.output_quant is not None:
            y = self.output_quant(y, valid)
        return y
