"""Which positions are padding, shared by the quantizers of one encoder or decoder stack.

The stack sets the mask for the duration of one training forward pass; a quantizer module asks
for it in its own layout so that padding never moves a running range.
"""
from contextlib import contextmanager
from typing import Optional

import torch


class PaddingContext:
    def __init__(self):
        self.valid_bt: Optional[torch.Tensor] = None  # (batch, time), True where not padding

    @contextmanager
    def tokens(self, valid_bt: Optional[torch.Tensor]):
        self.valid_bt = valid_bt
        try:
            yield
        finally:
            self.valid_bt = None

    def valid_for(self, x: torch.Tensor, time_major: bool) -> Optional[torch.Tensor]:
        """The mask shaped like x's two leading dims, or None when unknown or not applicable."""
        m = self.valid_bt
        if m is None:
            return None
        if time_major:
            m = m.t()
        return m if tuple(x.shape[:2]) == tuple(m.shape) else None


def valid_mask(module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The padding mask for ``module``'s input x in training (ranges move only then), else None."""
    if module.pad is None or not module.training:
        return None
    return module.pad.valid_for(x, module.time_major)
