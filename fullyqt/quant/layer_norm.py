"""LayerNorm with its internals quantized: numerator, denominator, quotient, gain and output."""
from typing import Optional

import torch.nn.functional as F
from torch import nn

from .config import QuantConfig
from .padding import PaddingContext, valid_mask


class QuantLayerNorm(nn.LayerNorm):
    """y = Q(Q(Q(x - mean) / Q(sqrt(var + eps))) * Q(gain) + bias); the bias stays float.

    The variance is taken from the quantized numerator, so the integer path and this one see the
    same values.  Parameter names match ``nn.LayerNorm``.  ``dropout`` (the embedding LayerNorm
    only) runs before the output quantizer, so what follows receives quantized values.  A model
    without quantization (``--no-quant``) runs torch's fused layer norm instead of the chain.
    """

    def __init__(self, dim, *, qcfg: QuantConfig, pad: Optional[PaddingContext] = None,
                 time_major=True, eps=1e-5, dropout: Optional[nn.Module] = None):
        super().__init__(dim, eps=eps)
        if dropout is not None:
            self.dropout = dropout
        self.gain_quant = qcfg.weight()
        self.numerator_quant = qcfg.act()
        # Straight-through: the denominator drifts steadily in training, the running range lags
        # behind it, and a gradient cut there stalls learning (the paper's naive-scheme failure).
        self.denominator_quant = qcfg.act(clip_gradient=False)
        self.quotient_quant = qcfg.act()
        self.output_quant = qcfg.act()
        self.pad = pad
        self.time_major = time_major
        self.unquantized = qcfg.weight_bits is None and qcfg.act_bits is None

    def quantized_parameters(self):
        return {"weight": (self.weight, self.gain_quant)}

    def dequantized_weights(self):
        return {"weight": self.gain_quant(self.weight)}

    def forward(self, x):
        if self.unquantized:
            out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                               self.bias.float(), self.eps)
            if "dropout" in self._modules:
                out = self.dropout(out)
            return out.type_as(x)
        valid = valid_mask(self, x)
        xf = x.float()
        num = self.numerator_quant(xf - xf.mean(-1, keepdim=True), valid)
        den = self.denominator_quant((num.pow(2).mean(-1, keepdim=True) + self.eps).sqrt(), valid)
        quot = self.quotient_quant(num / den, valid)
        out = quot * self.gain_quant(self.weight.float()) + self.bias.float()
        if "dropout" in self._modules:
            out = self.dropout(out)
        return self.output_quant(out, valid).type_as(x)

