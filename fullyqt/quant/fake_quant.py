"""Fake quantization as one autograd operation: the value on a grid, a 1-byte straight-through
mask for backward, and the output offered to ``saved_codes`` (which may keep its byte codes for
backward instead of the floats)."""
import torch

from . import fused, saved_codes
from .grid import Grid, round_onto_grid_


def fake_quantize(grid: Grid, x: torch.Tensor, clip_gradient: bool = True) -> torch.Tensor:
    """x on ``grid``; gradient 1 where lo <= x <= hi and 0 where the clamp cut it (with
    ``clip_gradient=False``, 1 everywhere: a plain straight-through estimator).  The range
    receives no gradient."""
    return _FakeQuantize.apply(x, grid.lo.detach(), grid.hi.detach(), grid.bits, clip_gradient)


class _FakeQuantize(torch.autograd.Function):
    """One operation: the value on the grid, and for backward only the 1-byte mask of where the
    clamp let x through (the straight-through gradient): ``clamp(x) == x``, exactly
    ``lo <= x <= hi``.  On CPU float32 one pass of ``fused.py``'s kernel computes both."""

    @staticmethod
    def forward(ctx, x, lo, hi, bits, clip_gradient):
        out, inside = quantize_values(x, lo, hi, bits, clip_gradient and ctx.needs_input_grad[0])
        save_mask(ctx, inside)
        return out

    @staticmethod
    def backward(ctx, grad):
        return pass_inside_backward(ctx, grad), None, None, None, None


def quantize_values(x, lo, hi, bits, want_mask):
    """(``x`` on the grid, the bool mask of ``lo <= x <= hi`` or None where not wanted or all
    True) outside autograd; the value is offered to ``saved_codes``."""
    s = Grid(lo, hi, bits).step()
    top = Grid(lo, hi, bits).top
    # activations only: a weight (one range per row) is small beside them, and its floats
    # are rebuilt in backward by every use
    want_codes = lo.numel() == 1 and saved_codes.wanted(x, top)
    if fused.applies(x, lo):
        out, inside, codes = fused.fake_quantize(x, lo, hi, s, want_mask, want_codes)
        if codes is not None:  # (None: a NaN, which has no code)
            saved_codes.offer(out, lo, s, top, codes)
    else:
        out = torch.clamp_min(x, lo).clamp_max_(hi)  # clamp(x, lo, hi), twice as fast
        inside = out == x if want_mask else None
        round_onto_grid_(out, lo, s)
        if want_codes:
            saved_codes.offer(out, lo, s, top)  # codes made if a view of it is saved
    return out, inside


def save_mask(ctx, inside):
    """Keep a fake quantization's straight-through mask for backward (None: the gradient passes
    whole, as where nothing was clipped)."""
    ctx.masked = inside is not None
    if ctx.masked:
        ctx.save_for_backward(inside)


def pass_inside_backward(ctx, grad: torch.Tensor) -> torch.Tensor:
    """The straight-through gradient of a fake quantization that kept its mask by ``save_mask``."""
    if not ctx.masked:
        return grad
    (inside,) = ctx.saved_tensors
    return fused.pass_inside(grad, inside)
