"""A weight held as a sum of Kronecker products and multiplied without forming it.

``(A ⊗ B) x = vec(A X Bᵀ)`` for ``X = x`` reshaped to ``(n1, n2)``: one matmul by ``B`` over
``n2``, one by ``A`` over ``n1`` (and the rank), both plain 2-D matmuls over the whole batch.
Under quantization both factors are quantized (``A`` by the layer's weight quantizer, ``B`` by
``b_quant``) and so is the intermediate product (``mid_quant``), so the integer form is two
integer matmuls, the one ``exact`` evaluation and the int8 kernels share.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..quant.config import QuantConfig
from ..quant.integer_form import MAX_BITS, IntegerMatmul
from ..quant.weight_source import WeightSource, tensor_version
from .factors import KronShape
from .nearest import dense


def init_factors(a: torch.Tensor, b: torch.Tensor, std: float, rank: int):
    """Normal factors whose product entries have standard deviation ``std`` (as the dense
    initialization had): each factor at ``(std^2 / rank)^(1/4)``."""
    s = (std * std / rank) ** 0.25
    with torch.no_grad():
        a.normal_(0.0, s)
        b.normal_(0.0, s)


def _reorder(z: torch.Tensor, rows: int, inner: int, cols: int) -> torch.Tensor:
    """``(rows, inner * cols)`` read as ``(rows, inner, cols)``, to ``(rows * cols, inner)``."""
    return z.view(rows, inner, cols).transpose(1, 2).reshape(rows * cols, inner)


def _assemble(y: torch.Tensor, ks: KronShape, rows: int) -> torch.Tensor:
    """The second matmul's ``(rows * m2, m1)`` as the layer output ``(rows, m1 * m2)``."""
    return y.view(rows, ks.m2, ks.m1).transpose(1, 2).reshape(rows, ks.m1 * ks.m2)


class KroneckerWeight(WeightSource):
    """Factors ``a`` ``(m1, n1 * rank)`` and ``b`` ``(rank * m2, n2)`` (layout: ``nearest.py``)."""

    def __init__(self, ks: KronShape, qcfg: QuantConfig, a: Optional[nn.Parameter] = None,
                 b: Optional[nn.Parameter] = None):
        super().__init__()
        self.ks = ks
        self.a = a if a is not None else nn.Parameter(torch.empty(ks.m1, ks.n1 * ks.rank))
        self.b = b if b is not None else nn.Parameter(torch.empty(ks.rank * ks.m2, ks.n2))
        self.b_quant = qcfg.weight()
        self.mid_quant = qcfg.act()

    def quantized_tensors(self, layer):
        return {"source.a": (self.a, layer.weight_quant), "source.b": (self.b, self.b_quant)}

    def dense_weights(self, layer):
        return {"weight": dense(layer.weight_quant(self.a), self.b_quant(self.b), self.ks)}

    def linear(self, layer, x, bias, valid=None):
        ks, rows = self.ks, x.shape[0]
        z = F.linear(x.reshape(rows * ks.n1, ks.n2), self.b_quant(self.b).to(x.dtype))
        z = self.mid_quant(z.view(rows, -1), None if valid is None else valid.reshape(-1))
        z = _reorder(z, rows, ks.n1 * ks.rank, ks.m2)
        y = _assemble(F.linear(z, layer.weight_quant(self.a).to(x.dtype)), ks, rows)
        return y if bias is None else y + bias

    def integer_form(self, layer, input_grid):
        mid = self.mid_quant
        if not (mid.has_range and mid.bits <= MAX_BITS and self.b_quant.bits <= MAX_BITS):
            return None
        first = IntegerMatmul(*self.b_quant.codes(self.b.detach()), input_grid)
        second = IntegerMatmul(*layer.weight_quant.codes(self.a.detach()), mid.grid)
        return KroneckerIntegerMatmul(self.ks, first, second,
                                      None if layer.bias is None else layer.bias.detach())

    def version(self, layer):
        mid = self.mid_quant
        return (tensor_version(self.a) + tensor_version(self.b)
                + (mid.lo.data_ptr(), mid.lo._version, mid.hi._version, mid._initialized))

    def extra_repr(self):
        return str(self.ks)


class KroneckerIntegerMatmul(nn.Module):
    """``linear`` of ``KroneckerWeight`` on integer codes: the first integer matmul's float
    result is quantized onto the intermediate grid by the second (inference only)."""

    def __init__(self, ks: KronShape, first: IntegerMatmul, second: IntegerMatmul,
                 bias: Optional[torch.Tensor]):
        super().__init__()
        self.ks, self.first, self.second = ks, first, second
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ks = self.ks
        x2 = x.reshape(-1, x.shape[-1])
        rows = x2.shape[0]
        z = self.first(x2.reshape(rows * ks.n1, ks.n2))
        y = _assemble(self.second(_reorder(z, rows, ks.n1 * ks.rank, ks.m2)), ks, rows)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    def extra_repr(self):
        m, n = self.ks.shape
        return f"in_features={n}, out_features={m}, {self.ks}"
