"""The FFN non-linearity followed by its output quantizer."""
from typing import Optional

from fairseq import utils
from torch import nn

from .config import QuantConfig
from .padding import PaddingContext, valid_mask


class QuantActivation(nn.Module):
    """The FFN non-linearity followed by its output quantizer (unsigned after ReLU)."""

    def __init__(self, name: str, *, qcfg: QuantConfig, pad: Optional[PaddingContext] = None):
        super().__init__()
        self.name = name
        self.fn = utils.get_activation_fn(name)
        self.quant = qcfg.act(unsigned=name == "relu")
        self.pad = pad
        self.time_major = True

    def forward(self, x):
        valid = valid_mask(self, x)
        return self.quant(self.fn(x), valid)

    def extra_repr(self):
        return self.name
