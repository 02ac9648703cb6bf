"""Where a quantized linear layer's weight comes from.

A ``QuantLinear`` is a weight source, a weight quantizer, the quantizer of its input and the
matmul::

    source ──> weight quantizer ──> matmul <── input grid (the quantizer that fed x)
                                      │
                                    y = x Wᵀ + b

The source owns how the weight is made and how it is multiplied: the fake-quant product for
training, the integer form for exact evaluation and the int8 kernels, the tensors an integer
export packs and the dense weight a stock export writes.  ``DenseWeight`` is the plain weight;
another kind (a block-masked weight, a sum of Kronecker products) is one new subclass, and the
integer form, the exports and the coverage listing ask it through these methods alone.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .integer_form import IntegerMatmul


class WeightSource(nn.Module):
    """The interface; methods take the owning layer (which holds the bias and the quantizers,
    and for sources built on a dense weight, that weight: fairseq builds, initialises and ties
    it)."""

    def quantized_tensors(self, layer) -> Dict[str, Tuple[torch.Tensor, nn.Module]]:
        """``{name relative to the layer: (tensor, its weight quantizer)}`` of every tensor that
        is stored quantized."""
        raise NotImplementedError

    def dense_weights(self, layer) -> Dict[str, torch.Tensor]:
        """The float weights a stock ``nn.Linear`` holds for this layer (``{"weight": ...}``)."""
        raise NotImplementedError

    def linear(self, layer, x: torch.Tensor, bias, valid=None) -> torch.Tensor:
        """``x @ Q(W)^T + bias`` of a 2-D input (fake quantization: training, fake eval);
        ``valid`` marks the rows that are not padding, for a source with quantizers of its own."""
        raise NotImplementedError

    def integer_form(self, layer, input_grid) -> nn.Module:
        """A module computing ``linear`` from integer codes for inputs on ``input_grid``."""
        raise NotImplementedError

    def version(self, layer) -> tuple:
        """Changes whenever a tensor the integer form depends on changes (its cache key)."""
        raise NotImplementedError


def tensor_version(t) -> tuple:
    return (t.data_ptr(), t._version, t.device) if t is not None else (None,)


class DenseWeight(WeightSource):
    """The layer's own ``weight``, quantized per bucket by the layer's weight quantizer."""

    def quantized_tensors(self, layer):
        return {"weight": (layer.weight, layer.weight_quant)}

    def dense_weights(self, layer):
        return {"weight": layer.weight_quant(layer.weight)}

    def linear(self, layer, x, bias, valid=None):
        return F.linear(x, layer.weight_quant(layer.weight).to(x.dtype), bias)

    def integer_form(self, layer, input_grid):
        codes, grid = layer.weight_quant.codes(layer.weight.detach())
        return IntegerMatmul(codes, grid, input_grid,
                             None if layer.bias is None else layer.bias.detach())

    def version(self, layer):
        return tensor_version(layer.weight)
