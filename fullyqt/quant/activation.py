"""The FFN non-linearity followed by its output quantizer."""
from typing import Optional

import torch
from fairseq import utils
from torch import nn

from .config import QuantConfig
from .padding import PaddingContext, valid_mask


class QuantActivation(nn.Module):
    """The FFN non-linearity, the layer's activation dropout, then the output quantizer
    (unsigned after ReLU): fc2 receives exactly the quantized values, in training too."""

    def __init__(self, name: str, *, qcfg: QuantConfig, pad: Optional[PaddingContext] = None,
                 dropout: Optional[nn.Module] = None):
        super().__init__()
        self.name = name
        self.fn = utils.get_activation_fn(name)
        self.dropout = dropout if dropout is not None else nn.Identity()
        self.quant = qcfg.act(unsigned=name == "relu")
        self.pad = pad
        self.time_major = True

    def forward(self, x):
        if self._quant_clamps_for_relu(x):
            return self.quant(x)
        valid = valid_mask(self, x)
        return self.quant(self.dropout(self.fn(x)), valid)

    def _quant_clamps_for_relu(self, x) -> bool:
        """Whether the quantizer alone gives ``Q(relu(x))``: in evaluation without gradient, a
        frozen range whose lower end is 0 clamps exactly as ReLU does (the same values, one
        pass less), unless hooks watch the quantizer's input."""
        q = self.quant
        return (self.name == "relu" and not self.training and q.unsigned and q.has_range
                and not (torch.is_grad_enabled() and x.requires_grad) and not q.hooked
                and q.frozen_range()[0] == 0.0)

    def extra_repr(self):
        return self.name
