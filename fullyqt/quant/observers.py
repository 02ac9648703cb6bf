"""How an activation quantizer measures one training batch's range before its running update.

``minmax`` (the paper's): the batch's minimum and maximum.  ``mse``: the clipping of that range
whose grid reproduces the batch with the least squared error, searched over ``CLIP_RATIOS`` of
the min-max range (the ends move towards 0, or towards the end nearer 0 when the range does
not hold it).  At 4 bits a min-max range spends most of its 16 levels on a few outliers; the
clipped range keeps the bulk of the values apart.  Both ignore padding and never wait on the
device.
"""
from typing import Optional, Tuple

import torch

from . import fused
from .grid import Grid, fake_quantize_frozen

OBSERVERS = ("minmax", "mse")
CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
MSE_SAMPLE = 16384  # values the search looks at: every k-th row of a larger batch
ROW_REDUCE_MIN = 64  # values per padding-mask entry from which rows are reduced before masking


def batch_min_max(x: torch.Tensor, valid: Optional[torch.Tensor]
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """(min, max) of the non-padding entries of ``x`` (float32 scalars; +-inf if none)."""
    if x.numel() == 0:
        inf = torch.tensor(float("inf"), device=x.device)
        return inf, -inf
    got = fused.masked_min_max(x, valid)  # one pass on CPU
    if got is not None:
        return got
    if valid is None:
        return torch.aminmax(x.float())
    if x.numel() // valid.numel() >= ROW_REDUCE_MIN:
        # each row's min and max first, then the mask over those: two reads of x, no full-size
        # temporary (at a layer's width this is several times faster than masking x)
        lead = valid.dim()
        rows = x.reshape(*x.shape[:lead], -1)
        return (torch.where(valid, rows.amin(-1), float("inf")).amin().float(),
                torch.where(valid, rows.amax(-1), float("-inf")).amax().float())
    v = _broadcast(valid, x)
    return (torch.where(v, x, float("inf")).amin().float(),
            torch.where(v, x, float("-inf")).amax().float())


def mse_clip(x: torch.Tensor, valid: Optional[torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
             bits: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """The clipping of [lo, hi] among ``CLIP_RATIOS`` whose ``bits``-bit grid gives the least
    squared error on the non-padding entries of ``x`` (on every k-th row of a batch of more than
    ``MSE_SAMPLE`` values)."""
    if x.numel() == 0:
        return lo, hi
    lead = x.dim() - 1 if valid is None else valid.dim()
    rows = x.detach().float().reshape(-1, *x.shape[lead:]).flatten(1)
    weight = (torch.ones(rows.shape[0], device=x.device) if valid is None
              else valid.reshape(-1).to(rows.dtype))
    stride = -(-x.numel() // MSE_SAMPLE)
    rows, weight = rows[::stride], weight[::stride]
    ratios = torch.tensor(CLIP_RATIOS, device=x.device).view(-1, 1, 1)
    centre = torch.clamp(torch.zeros_like(lo), lo, hi)
    los, his = centre + ratios * (lo - centre), centre + ratios * (hi - centre)
    # padding may hold anything (inf included): a finite value keeps 0 * error at 0
    rows = torch.where(weight[:, None] > 0, rows, centre)
    # every candidate grid's values, then their error, in place on one (ratios, rows, values) tensor
    err = fake_quantize_frozen(rows, los, his, Grid(los, his, bits).step())
    best = torch.argmin(err.sub_(rows).square_().sum(-1) @ weight)
    return los.flatten()[best], his.flatten()[best]


def _broadcast(valid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return valid.reshape(valid.shape + (1,) * (x.dim() - valid.dim()))
