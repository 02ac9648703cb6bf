"""The integer form of a quantized linear layer, shared by exact evaluation and the int8 kernels.

The input arrives on an activation quantizer's grid and weight row ``n`` on its own grid.  With
codes centred into int8, ``x = X0 + s_x * a`` and ``w[n] = W0[n] + s_n * b[n]``, the layer's
result is, exactly,

    y[m, n] = s_x s_n (a @ b^T)[m, n] + s_x W0[n] * A[m] + (K X0 W0[n] + X0 s_n B[n] + bias[n])

with ``A[m] = sum_k a[m, k]`` and ``B[n] = sum_k b[n, k]``: one integer matmul and a per-column
affine whose coefficients depend on the frozen ranges and the weight only.  The fake-quant
model evaluates its linears this way (``--quant-kernels exact``) and the integer export's
``Int8Linear`` layers do too (``--quant-kernels int8``): the same float32 result bit for bit, so
the model that validation scored is the model that ships.
"""
from typing import NamedTuple

import torch

from .fake_quant import step_size

class IntegerForm(NamedTuple):
    weight_t: torch.Tensor  # int8 weight codes, centred, stored (in, out)
    alpha: torch.Tensor  # s_x * s_n, float32 (out,)
    beta: torch.Tensor  # s_x * W0[n]
    c: torch.Tensor  # K X0 W0[n] + X0 s_n B[n] + bias[n]
    x_scale_inv: float
    x_shift: float
    x_min: float
    x_max: float


@torch.no_grad()
def integer_form(linear, input_quant) -> IntegerForm:
    """The integer form of a ``QuantLinear`` whose inputs lie on ``input_quant``'s grid."""
    wq, aq = linear.weight_quant, input_quant
    if not (wq.enabled and aq.enabled and aq._initialized):
        raise ValueError("the integer form needs an active weight quantizer and a calibrated "
                         "input quantizer")
    if wq.bits > 8 or aq.bits > 8:
        raise ValueError(f"the integer form needs <= 8 bits (weights {wq.bits}, input {aq.bits})")
    n, k = linear.out_features, linear.in_features
    qw, s_w, lo_w = wq.codes(linear.weight.detach())
    w_off, x_off = 2 ** (wq.bits - 1), 2 ** (aq.bits - 1)  # centre the codes on 0
    b = qw - w_off
    lo_x = aq.lo.double()
    s_x = step_size(lo_x, aq.hi.double(), aq.bits)
    s_w = s_w.double().reshape(-1).expand(n)  # one per row, also for a tensor bucket
    w0 = lo_w.double().reshape(-1).expand(n) + s_w * w_off
    x0 = lo_x + s_x * x_off
    bias = linear.bias.detach().double() if linear.bias is not None else 0.0
    c = k * x0 * w0 + x0 * s_w * b.double().sum(1) + bias
    return IntegerForm(b.to(torch.int8).t().contiguous(), (s_x * s_w).float(),
                       (s_x * w0).float(), c.float(), float(1.0 / s_x),
                       float(lo_x / s_x + x_off), float(-x_off), float(2**aq.bits - 1 - x_off))


def input_codes(form: IntegerForm, x: torch.Tensor) -> torch.Tensor:
    """Centred codes ``round((clamp(x, lo, hi) - lo) / s) - 2^(b-1)`` of a 2-D float input, as
    float32 integers."""
    a = (x * form.x_scale_inv).sub_(form.x_shift)
    return a.round_().clamp_(form.x_min, form.x_max)


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 ``a @ b`` of integer-valued ``a`` (any dtype, values in int8) and int8 ``b``, by
    ``torch._int_mm``.  CUDA's wants more than 16 rows and sizes divisible by 8; other shapes
    there (and empty inputs) multiply in float64, exact for these sums."""
    m, k = a.shape
    if m == 0 or (a.is_cuda and (m <= 16 or k % 8 or b.shape[1] % 8)):
        return (a.double() @ b.double()).to(torch.int32)
    return torch._int_mm(a.to(torch.int8), b)


def apply_integer_form(form: IntegerForm, x: torch.Tensor) -> torch.Tensor:
    """``linear(x)`` from integer codes."""
    shape = x.shape[:-1]
    a = input_codes(form, x.reshape(-1, x.shape[-1]).float())
    y = torch.addcmul(form.c, int_matmul(a, form.weight_t), form.alpha)
    y.addr_(a.sum(1), form.beta)
    return y.reshape(*shape, y.shape[-1]).to(x.dtype)
