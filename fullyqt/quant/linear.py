"""A quantized linear layer: a weight source, a weight quantizer, its input's quantizer, a matmul.

See ``weight_source.py`` for the picture.  The quantizer that produced the layer's input is
wired when the model is built (``feed_from``); with it the layer can run on integer codes.
"""
from typing import Optional

import torch
from torch import nn

from .config import QuantConfig
from .integer_form import MAX_BITS
from .layout import as_rows, from_rows
from .mode_caches import DropCachesOnModeSwitch
from .padding import PaddingContext, valid_mask
from .quantizer import ActivationQuantizer
from .weight_source import DenseWeight, WeightSource, tensor_version

LAYER_KERNELS = ("exact", "fake", "fake64")  # int8 replaces the layer


class QuantLinear(DropCachesOnModeSwitch, nn.Linear):
    """``nn.Linear`` whose weight (not bias) comes from a ``WeightSource`` and is quantized.

    ``quantize_input`` is for inputs no upstream quantizer produced; ``quantize_output`` is for
    outputs the scheme quantizes (the FFN output).  Parameter names match ``nn.Linear`` so float
    checkpoints load unchanged.  ``kernels`` picks the inference arithmetic (training always
    fake-quantizes): ``exact`` multiplies integer codes (``integer_form.py``) when the input grid
    is known, ``fake`` multiplies dequantized floats, ``fake64`` does that in float64.
    """

    def __init__(self, in_features, out_features, bias=True, *, qcfg: QuantConfig,
                 source: Optional[WeightSource] = None, quantize_input=False,
                 quantize_output=False, pad: Optional[PaddingContext] = None, time_major=True):
        super().__init__(in_features, out_features, bias=bias)
        self.weight_quant = qcfg.weight()
        self.input_quant = qcfg.act() if quantize_input else None
        self.output_quant = qcfg.act() if quantize_output else None
        self.source = source if source is not None else DenseWeight()
        self.pad = pad
        self.time_major = time_major
        self.kernels = "fake"
        # a reference to the quantizer that feeds this layer, not a child module
        self.__dict__["input_grid"] = self.input_quant
        self._form = None

    @classmethod
    def wrap(cls, linear: nn.Linear, **kwargs) -> "QuantLinear":
        """A QuantLinear that shares ``linear``'s parameters (keeps weight tying intact)."""
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, **kwargs)
        q.weight = linear.weight
        q.bias = linear.bias
        return q

    def drop_caches(self):
        self._form = None

    def feed_from(self, quantizer: Optional[ActivationQuantizer]):
        """Wire the quantizer whose output this layer receives (None: not a quantizer's)."""
        if self.input_quant is not None and quantizer is not self.input_quant:
            raise ValueError("this layer quantizes its own input")
        self.__dict__["input_grid"] = quantizer
        self._form = None

    def set_kernels(self, kernels: str):
        if kernels not in LAYER_KERNELS:
            raise ValueError(f"kernels {kernels!r}: allowed {', '.join(LAYER_KERNELS)}")
        self.kernels = kernels

    def quantized_parameters(self):
        return self.source.quantized_tensors(self)

    def dequantized_weights(self):
        return self.source.dense_weights(self)

    def integer_form(self) -> Optional[nn.Module]:
        """The integer form on the current weight and ranges (cached), or None where the input
        grid is unknown or either side is wider than 8 bits."""
        grid, wq = self.input_grid, self.weight_quant
        if grid is None or not (wq.enabled and grid.has_range) or max(wq.bits,
                                                                       grid.bits) > MAX_BITS:
            return None
        key = (self.source.version(self), grid.lo.data_ptr(), grid.lo._version,
               grid.hi._version, tensor_version(self.bias))
        if self._form is None or self._form[0] != key:
            with torch.no_grad():
                self._form = (key, self.source.integer_form(self, grid.grid))
        return self._form[1]

    def forward(self, x):
        if self.kernels == "exact" and not self.training and not torch.is_grad_enabled():
            form = self.integer_form()
            if form is not None:
                x2, perm = self._rows(x)
                y = from_rows(form(x2), x, perm)
                return y if self.output_quant is None else self.output_quant(y)
        valid = valid_mask(self, x)
        if self.input_quant is not None:
            x = self.input_quant(x, valid)
        (x2, perm), b = self._rows(x), self.bias
        rows_valid = valid if perm is None or valid is None else valid.permute(perm)
        if self.kernels == "fake64" and not self.training:
            y = self.source.linear(self, x2.double(), None if b is None else b.double())
            y = y.to(x.dtype)
        else:
            y = self.source.linear(self, x2, b, rows_valid)
        y = from_rows(y, x, perm)
        if self.output_quant is not None:
            y = self.output_quant(y, valid)
        return y

    def _rows(self, x):
        """``x`` as one matrix for one 2-D matmul (for a 3-D input and no bias, F.linear would
        fall back to a batched matmul that broadcasts the weight to every batch entry: one
        matrix-vector product per hypothesis in decoding), and the permutation for
        ``from_rows``.  In a layer (time-major) the rows go in memory order: the residual
        stream, a time-major view of batch-major memory, needs no copy, and autograd keeps the
        input quantizer's output (as codes); the output projection's go in batch order, so
        that the logits come out contiguous."""
        return as_rows(x) if self.time_major else (x.reshape(-1, x.shape[-1]), None)
