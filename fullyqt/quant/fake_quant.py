"""Uniform asymmetric min-max fake quantization with a clipped straight-through estimator."""
import torch

EPS = 1e-8


def step_size(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Grid step s = (hi - lo) / (2^b - 1); guarded so a constant tensor (hi == lo) gives no NaN/inf."""
    return (hi - lo).clamp_min(EPS) / (2**bits - 1)


def quantize_to_int(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes q in [0, 2^b - 1] of x on the grid [lo, hi] (round half to even)."""
    xc = torch.clamp(x, lo, hi)
    return torch.round((xc - lo) / step_size(lo, hi, bits))


def fake_quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int,
                  clip_gradient: bool = True) -> torch.Tensor:
    """x_hat = q * s + lo; gradient 1 where lo <= x <= hi and 0 where the clamp cut x off
    (with ``clip_gradient=False``, 1 everywhere: a plain straight-through estimator).

    ``lo``/``hi`` broadcast against ``x`` (one pair per bucket) and receive no gradient.
    """
    lo, hi = lo.detach(), hi.detach()
    xc = torch.clamp(x, lo, hi) if clip_gradient else x
    s = step_size(lo, hi, bits)
    xq = torch.round((torch.clamp(x.detach(), lo, hi) - lo) / s) * s + lo
    # xq + (xc - xc) keeps the value exactly on the grid and routes the gradient through xc.
    return xq + (xc - xc.detach())
