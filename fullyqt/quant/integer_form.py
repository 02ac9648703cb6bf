"""The integer form of a quantized matmul, shared by exact evaluation and the int8 kernels.

The input arrives on an activation quantizer's grid and weight row ``n`` on its own grid.  With
codes centred into int8, ``x = X0 + s_x * a`` and ``w[n] = W0[n] + s_n * b[n]``, the result is,
exactly,

    y[m, n] = s_x s_n (a @ b^T)[m, n] + s_x W0[n] * A[m] + (K X0 W0[n] + X0 s_n B[n] + bias[n])

with ``A[m] = sum_k a[m, k]`` and ``B[n] = sum_k b[n, k]``: one integer matmul and a per-column
affine whose coefficients depend on the frozen ranges and the weight only.  The fake-quant
model evaluates its linears this way (``--quant-kernels exact``) and the integer export's
``Int8Linear`` layers do too (``--quant-kernels int8``): the same float32 result bit for bit, so
the model that validation scored is the model that ships.
"""
import functools
from typing import Optional, Tuple

import torch
from torch import nn

from . import fused, int_engine
from .grid import Grid, GridNumbers, centred_codes

MAX_BITS = 8  # codes centred into int8
FLOAT32_INTEGERS = float(1 << 24)  # float32 holds every integer up to this one exactly


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 ``a @ b`` of integer-valued ``a`` (any dtype, values in int8) and int8 ``b``, by
    ``torch._int_mm`` or float32 products (``int_engine``), whichever is faster here."""
    return exact_sums(a, b).to(torch.int32)


def exact_sums(a: torch.Tensor, b: torch.Tensor, b_float: Optional[torch.Tensor] = None,
               b_packed: Optional[torch.Tensor] = None):
    """``a @ b`` as ``int_matmul`` computes it, left as the engine gives it: int32, or float32
    holding exact integers; ``b_float`` is ``b`` as float32, ``b_packed`` as ``pack_int16``
    lays it out, where the caller keeps them."""
    name = int_engine.engine(a.device) if a.shape[0] else "int8"
    if name == "float32":
        return int_engine.float_products(a.float(), b.float() if b_float is None else b_float)
    if name == "int16":
        return fused.int16_gemm(a, fused.pack_int16(b) if b_packed is None else b_packed,
                                b.shape[1])
    return int8_products(a, b)


def int8_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 ``a @ b`` by ``torch._int_mm``.  CUDA's wants more than 16 rows and sizes divisible
    by 8; other shapes there (and empty inputs) multiply in float64, exact for these sums."""
    m, k = a.shape
    if m == 0 or (a.is_cuda and (m <= 16 or k % 8 or b.shape[1] % 8)):
        return (a.double() @ b.double()).to(torch.int32)
    return torch._int_mm(row_major(a.to(torch.int8)), row_major(b))


def row_major(t: torch.Tensor) -> torch.Tensor:
    """``t`` with strides (columns, 1).  A matrix with a side of 1 counts as contiguous whatever
    its strides, and ``torch._int_mm`` on CPU misreads such strides (wrong sums, no error)."""
    if t.stride() == (t.shape[1], 1):
        return t
    return torch.empty(t.shape, dtype=t.dtype, device=t.device).copy_(t)


class IntegerMatmul(nn.Module):
    """``x @ w^T + bias`` from ``w``'s codes on ``weight_grid`` (one bucket per row or one for
    the tensor) and ``x``'s codes on ``input_grid`` (one bucket); inference only.  Its tensors are
    non-persistent buffers: they follow the model's device and are never saved."""

    def __init__(self, codes: torch.Tensor, weight_grid: Grid, input_grid: Grid,
                 bias: Optional[torch.Tensor] = None):
        super().__init__()
        if max(weight_grid.bits, input_grid.bits) > MAX_BITS:
            raise ValueError(f"an integer matmul needs <= {MAX_BITS} bits (weights {weight_grid.bits}, "
                             f"input {input_grid.bits})")
        n, k = codes.shape
        b = codes - weight_grid.offset
        lo_x = input_grid.lo.double()
        s_x = Grid(lo_x, input_grid.hi.double(), input_grid.bits).step()
        s_w = weight_grid.step().double().reshape(-1).expand(n)
        w0 = weight_grid.lo.double().reshape(-1).expand(n) + s_w * weight_grid.offset
        x0 = lo_x + s_x * input_grid.offset
        bias = bias.double() if bias is not None else 0.0
        c = k * x0 * w0 + x0 * s_w * b.double().sum(1) + bias
        # the int8 codes, stored (in, out) so that _int_mm reads them without a copy
        self.register_buffer("weight_t", row_major(b.to(torch.int8).t()), persistent=False)
        # the same codes as float32, or packed as int16, where those products are the faster
        # (int_engine.py)
        engine = int_engine.engine(self.weight_t.device)
        self.register_buffer("weight_f", self.weight_t.float() if engine == "float32" else None,
                             persistent=False)
        self.register_buffer("weight_p", fused.pack_int16(self.weight_t) if engine == "int16"
                             else None, persistent=False)
        self.register_buffer("alpha", (s_x * s_w).float(), persistent=False)
        self.register_buffer("beta", (s_x * w0).float(), persistent=False)
        self.register_buffer("c", c.float(), persistent=False)
        self.input_affine = input_grid.centred_code_affine()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        if (self.weight_p is not None and rows.is_contiguous() and self.alpha.dtype == torch.float32
                and int_engine.engine(rows.device) == "int16"):
            y = fused.int_linear(rows, self.input_affine, self.weight_p, self.alpha, self.beta,
                                 self.c)  # codes, sums and affine in one call
            return y.view(*x.shape[:-1], y.shape[-1]).to(x.dtype)
        got = fused.centred_codes(rows, self.input_affine)  # int8 codes in one pass, on CPU
        if got is None:
            a = centred_codes(rows, self.input_affine)
            got = a, a.sum(1)
        a, code_sums = got
        sums = exact_sums(a, self.weight_t, self.weight_f, self.weight_p)
        # the affine written over the sums where they lie: no second full-size tensor (the
        # 8k-vocabulary output projection's is the model's largest; allocating it costs more
        # than the conversion).  Each element is read before its own 4 bytes are written.
        y = fused.int_affine(sums, code_sums, self.alpha, self.beta, self.c)  # one pass on CPU
        if y is None:
            y = affine_over_sums(sums, code_sums, self.alpha, self.beta, self.c)
        return y.view(*x.shape[:-1], y.shape[-1]).to(x.dtype)

    def extra_repr(self):
        k, n = self.weight_t.shape
        return f"in_features={k}, out_features={n}"


def affine_over_sums(sums, code_sums, alpha, beta, c) -> torch.Tensor:
    """``(c + float(sums) * alpha) + code_sums ⊗ beta`` written over ``sums`` (int32, or float32
    exact integers)."""
    y = sums if sums.dtype == torch.float32 else sums.view(torch.float32).copy_(sums)
    torch.addcmul(c, y, alpha, out=y)
    return y.addr_(code_sums, beta)


def codes_matmul(c: torch.Tensor, x_grid: Grid, d: torch.Tensor, y_grid: Grid) -> torch.Tensor:
    """``x @ y`` (float32) of two activations on one-bucket grids given as their codes ``c``,
    ``d`` (0 .. 2^b - 1; attention's Q·Kᵀ and P·V in exact evaluation):

        x @ y = s_x s_y (c @ d) + s_x lo_y C + s_y lo_x D + K lo_x lo_y

    with ``C``, ``D`` the code sums of a row of x and a column of y.  The integer parts are
    exact and each result element is one fixed float32 expression of them, so it depends on its
    own row and column only: a query decoded incrementally gets the bits it gets in the full
    sequence.  A zero code on a grid with ``lo = 0`` (a masked or padded probability) adds
    nothing, so extra masked keys change nothing either."""
    k = c.shape[-1]
    exact32 = k * x_grid.top * y_grid.top <= FLOAT32_INTEGERS  # sums stay exact
    cd = torch.matmul(c, d) if exact32 else torch.matmul(c.double(), d.double()).float()
    (lo_x, s_x), (lo_y, s_y) = x_grid.lo_step(), y_grid.lo_step()
    # one rounding per operation (no fused multiply-add), whatever the kernel's vector width
    out = cd.mul_(s_x * s_y)
    if lo_y:
        out.add_(c.sum(-1, keepdim=True).mul_(s_x * lo_y))
    if lo_x:
        out.add_(d.sum(-2, keepdim=True).mul_(s_y * lo_x))
    if lo_x and lo_y:
        out.add_(k * lo_x * lo_y)
    return out


@functools.lru_cache(maxsize=1024)
def product_terms(x_grid: GridNumbers, y_grid: GridNumbers, k: int) -> Tuple[torch.Tensor, int]:
    """``codes_matmul``'s float32 terms for the C kernels (``kernels/attention.c``): (scale, row
    code sum's factor, column code sum's factor, constant), and flags (1: a row term, 2: a
    column term; the constant where both)."""
    (lo_x, s_x), (lo_y, s_y) = x_grid.lo_step(), y_grid.lo_step()
    terms = torch.tensor([s_x * s_y, s_x * lo_y, s_y * lo_x, k * lo_x * lo_y],
                         dtype=torch.float32)
    return terms, int(bool(lo_y)) | 2 * int(bool(lo_x))


def code_sum(x: torch.Tensor, grid: Grid, dim: int = -1) -> torch.Tensor:
    """``x.sum(dim, keepdim=True)`` of values on a one-bucket grid from their integer codes:
    exact, so independent of how many entries (and which zeros of a ``lo = 0`` grid) the row
    holds."""
    lo, s = grid.lo_step()
    c = grid.codes(x.float())
    n = x.shape[dim]
    total = c.sum(dim, keepdim=True) if n * grid.top <= FLOAT32_INTEGERS else c.double().sum(
        dim, keepdim=True).float()
    return total.mul_(s).add_(n * lo).to(x.dtype)

