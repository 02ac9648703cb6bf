"""The b-bit grid: the one place that turns a range into a step, values into codes and back.

A grid is ``2^b`` evenly spaced points ``lo + k * step``, ``k = 0 .. 2^b - 1``, with
``step = (hi - lo) / (2^b - 1)`` (uniform, asymmetric min-max; zero is not nudged onto it), or
symmetric around an exact 0.0 (``Grid.spanning(..., symmetric=True)``: weights with pruned entries).
``lo``/``hi`` are tensors that broadcast against the values: one pair per bucket of a weight, or
one scalar pair for an activation (an unsigned activation's ``lo`` is 0).  Fake quantization,
the weight quantizers, the integer form of a linear layer, the integer export and the int8
kernels all take their steps and codes from here.
"""
from typing import NamedTuple, Tuple

import torch

from . import fused

EPS = 1e-8
BUCKETS = ("row", "tensor")


def bucket_range(w: torch.Tensor, buckets: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of ``w`` per bucket (a row, or the whole tensor), shaped to broadcast against it."""
    w = w.detach()
    if buckets == "tensor" or w.dim() < 2:
        return torch.aminmax(w)
    lo, hi = torch.aminmax(w.reshape(w.shape[0], -1), dim=1)
    shape = (w.shape[0],) + (1,) * (w.dim() - 1)
    return lo.view(shape), hi.view(shape)


class Grid(NamedTuple):
    lo: torch.Tensor
    hi: torch.Tensor
    bits: int

    @classmethod
    def spanning(cls, w: torch.Tensor, bits: int, buckets: str = "tensor",
                 symmetric: bool = False) -> "Grid":
        """The grid whose ends are the minimum and maximum of each bucket of ``w``; with
        ``symmetric``, the narrowest symmetric grid holding them (see ``symmetric_grid``)."""
        lo, hi = bucket_range(w, buckets)
        return symmetric_grid(lo, hi, bits) if symmetric else cls(lo, hi, bits)

    @property
    def top(self) -> int:
        """The largest code, ``2^b - 1``."""
        return 2**self.bits - 1

    @property
    def offset(self) -> int:
        """``2^(b-1)``: subtracting it centres the codes into the signed b-bit range."""
        return 2 ** (self.bits - 1)

    def to(self, dtype) -> "Grid":
        return Grid(self.lo.to(dtype), self.hi.to(dtype), self.bits)

    def step(self) -> torch.Tensor:
        """Guarded so that a constant tensor (hi == lo) gives no NaN or inf."""
        return (self.hi - self.lo).clamp_min(EPS) / self.top

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes in [0, 2^b - 1] of x, clamped to the range, rounded half to even (float).  A
        one-bucket grid works from its ends as Python numbers, the same float32 values: torch's
        elementwise ops broadcast a 0-dim tensor several times slower than a scalar."""
        if self.lo.numel() == 1 and self.hi.numel() == 1 and x.dtype == self.lo.dtype:
            lo, hi, step = self.scalars()
            if fused.applies(x):
                return fused.codes(x, lo, hi, step)
            return torch.clamp(x, lo, hi).sub_(lo).div_(step).round_()
        return torch.round((torch.clamp(x, self.lo, self.hi) - self.lo) / self.step())

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return codes * self.step() + self.lo

    def restore(self, codes: torch.Tensor) -> torch.Tensor:
        """Values whose bucket range is this grid again, bit for bit: ``dequantize`` with the top
        code written as ``hi`` itself (what an integer export loads back)."""
        return torch.where(codes == self.top, self.hi, self.dequantize(codes.float()))

    def scalars(self) -> Tuple[float, float, float]:
        """(lo, hi, step) of a one-bucket grid as Python floats, for ``fake_quantize_frozen``."""
        return self.lo.item(), self.hi.item(), self.step().item()

    def numbers(self) -> "GridNumbers":
        """A one-bucket grid's numbers as Python floats, read from its tensors once."""
        return GridNumbers(*self.scalars(), self.lo_step(), self.top)

    def lo_step(self) -> Tuple[float, float]:
        """(lo, step) of a one-bucket grid as Python floats, the step taken in float64."""
        lo = self.lo.double()
        return float(lo), float(Grid(lo, self.hi.double(), self.bits).step())

    def centred_code_affine(self) -> Tuple[float, float, float, float]:
        """(1/step, shift, min, max) with ``centred codes = clamp(round(x/step - shift), min,
        max)`` of a one-bucket grid: the codes minus ``offset``, step taken in float64."""
        lo = self.lo.double()
        s = Grid(lo, self.hi.double(), self.bits).step()
        return (float(1.0 / s), float(lo / s + self.offset), float(-self.offset),
                float(self.top - self.offset))


class GridNumbers(NamedTuple):
    """A one-bucket grid's (lo, hi, step) (float32 values), ``lo_step()`` and ``top``: what
    exact products and frozen quantization read at every call, without touching a tensor."""
    lo: float
    hi: float
    step: float
    lo_step64: Tuple[float, float]
    top: int

    def lo_step(self) -> Tuple[float, float]:
        return self.lo_step64


def symmetric_grid(lo: torch.Tensor, hi: torch.Tensor, bits: int) -> Grid:
    """The grid ``k * step``, ``k = -2^(b-1) .. 2^(b-1) - 1``, narrowest covering [lo, hi]: 0.0
    is its point ``offset``, exactly, so a pruned (zero) weight quantizes, dequantizes and
    exports as 0.0.

    The step is rounded up to ``24 - bits`` significant bits, so every point is an exact float32
    product, ``(hi - lo) / top`` gives the step back bit for bit, and the largest magnitude
    lands on an end of the grid: the grid of restored (dequantized) values is the same grid.
    """
    half = 2 ** (bits - 1)
    step = torch.maximum(-lo.float() / half, hi.float() / (half - 1)).clamp_min(EPS)
    mantissa, exponent = torch.frexp(step)
    scale = 2.0 ** (24 - bits)
    step = torch.ldexp(torch.ceil(mantissa * scale) / scale, exponent)
    return Grid((-half * step).to(lo.dtype), ((half - 1) * step).to(hi.dtype), bits)


def fake_quantize_frozen(x: torch.Tensor, lo, hi, step) -> torch.Tensor:
    """``fake_quant.fake_quantize``'s value, no gradient, in place on one new buffer (or in one pass
    of the fused kernel); ``lo``/``hi``/``step`` are tensors or, for a frozen scalar grid in
    inference, Python floats (float32 values)."""
    if not isinstance(lo, torch.Tensor):
        if fused.applies(x):
            return fused.fake_quantize_one(x, lo, hi, step)
    elif fused.applies(x, lo):
        return fused.fake_quantize(x, lo, hi, step, False)[0]
    return round_onto_grid_(torch.clamp(x, lo, hi), lo, step)


def round_onto_grid_(clamped: torch.Tensor, lo, step) -> torch.Tensor:
    """The nearest grid point of values already clamped to the range, in place."""
    return clamped.sub_(lo).div_(step).round_().mul_(step).add_(lo)


def centred_codes(x: torch.Tensor, affine: Tuple[float, float, float, float]) -> torch.Tensor:
    """Centred codes of ``x`` (float integers) from ``Grid.centred_code_affine``."""
    scale_inv, shift, cmin, cmax = affine
    return (x * scale_inv).sub_(shift).round_().clamp_(cmin, cmax)


def byte_codes(x: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, top: int):
    """uint8 codes ``k`` (laid out as ``x``) of values already on a grid of at most 256 points,
    ``x == k * step + lo`` (one range, or one per row of a matrix), in torch ops (the kernel
    writes them as it quantizes); None where the ranges do not broadcast."""
    if lo.numel() > 1 and lo.dim() != x.dim():
        return None
    return ((x.float() - lo.float()) / step.float()).round_().clamp_(0, top).to(torch.uint8)


def byte_code_values(codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor,
                     dtype) -> torch.Tensor:
    """``k * step + lo`` in ``dtype``: the values the codes came from, bit for bit (the fake
    quantization's last two operations)."""
    if (dtype == torch.float32 == lo.dtype == step.dtype and codes.device.type == "cpu"
            and lo.device.type == "cpu" and lo.numel() == 1 and fused.kernel() is not None):
        return fused.grid_values(codes, lo.item(), step.item())
    return codes.to(dtype).mul_(step).add_(lo)
