"""A linear layer that multiplies integer codes: ``torch._int_mm`` (int8 x int8 -> int32).

The input arrives on an activation quantizer's grid and weight row ``n`` on its own grid.  With
codes centred into int8, ``x = X0 + s_x * a`` and ``w[n] = W0[n] + s_n * b[n]``, the float result
of the fake-quant layer is, exactly,

    y[m, n] = s_x s_n (a @ b^T)[m, n] + s_x W0[n] * A[m] + (K X0 W0[n] + X0 s_n B[n] + bias[n])

with ``A[m] = sum_k a[m, k]`` and ``B[n] = sum_k b[n, k]``: one integer matmul and a per-column
affine whose coefficients depend on the frozen ranges and the weight only.  Activation codes come
from the range of the quantizer that produced the input (or the layer's own input quantizer), so
no value is re-quantized.
"""
from typing import Optional

import torch
from torch import nn

from ..quant.fake_quant import step_size
from ..quant.quantizer import ActivationQuantizer


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int32 ``a @ b`` of int8 matrices.  CUDA's ``_int_mm`` wants more than 16 rows and sizes
    divisible by 8; other shapes there (and empty inputs) multiply the codes as float32, which is
    exact while the sums stay below 2^24."""
    m, k = a.shape
    if m == 0 or (a.is_cuda and (m <= 16 or k % 8 or b.shape[1] % 8)):
        return (a.float() @ b.float()).to(torch.int32)
    return torch._int_mm(a, b)


class Int8Linear(nn.Module):
    """Inference-only integer form of a trained ``QuantLinear`` (weights and input <= 8 bits)."""

    def __init__(self, linear, input_quant: ActivationQuantizer,
                 output_quant: Optional[ActivationQuantizer] = None):
        super().__init__()
        wq, aq = linear.weight_quant, input_quant
        if not (wq.enabled and aq.enabled and aq._initialized):
            raise ValueError("Int8Linear needs an active weight quantizer and a calibrated "
                             "input quantizer")
        if wq.bits > 8 or aq.bits > 8:
            raise ValueError(f"Int8Linear needs <= 8 bits (weights {wq.bits}, input {aq.bits})")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.output_quant = output_quant
        self.input_bits = aq.bits
        with torch.no_grad():
            n = linear.out_features
            qw, s_w, lo_w = wq.codes(linear.weight.detach())
            w_off, x_off = 2 ** (wq.bits - 1), 2 ** (aq.bits - 1)  # centre the codes on 0
            b = qw - w_off
            lo_x = aq.lo.double()
            s_x = step_size(lo_x, aq.hi.double(), aq.bits)
            s_w = s_w.double().reshape(-1).expand(n)  # one per row, also for a tensor bucket
            w0 = lo_w.double().reshape(-1).expand(n) + s_w * w_off
            x0 = lo_x + s_x * x_off
            bias = linear.bias.detach().double() if linear.bias is not None else 0.0
            k = linear.in_features
            c = k * x0 * w0 + x0 * s_w * b.double().sum(1) + bias
            # the int8 codes, stored (in, out) so that _int_mm reads them without a copy
            self.register_buffer("weight_t", b.to(torch.int8).t().contiguous(), persistent=False)
            self.register_buffer("alpha", (s_x * s_w).float(), persistent=False)
            self.register_buffer("beta", (s_x * w0).float(), persistent=False)
            self.register_buffer("c", c.float(), persistent=False)
            self.x_scale_inv = float(1.0 / s_x)
            self.x_shift = float(lo_x / s_x + x_off)
            self.x_min, self.x_max = float(-x_off), float(2**aq.bits - 1 - x_off)

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Centred int8 codes ``round((clamp(x, lo, hi) - lo) / s) - 2^(b-1)`` of the input."""
        a = (x * self.x_scale_inv).sub_(self.x_shift)
        return a.round_().clamp_(self.x_min, self.x_max).to(torch.int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("Int8Linear is inference-only; train the fake-quant checkpoint "
                               "(--quant-kernels fake)")
        shape = x.shape[:-1]
        a = self.codes(x.reshape(-1, self.in_features).float())
        y = torch.addcmul(self.c, int_matmul(a, self.weight_t), self.alpha)
        y.addr_(a.sum(1, dtype=torch.float32), self.beta)
        y = y.reshape(*shape, self.out_features).to(x.dtype)
        if self.output_quant is not None:
            y = self.output_quant(y)
        return y

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"input_bits={self.input_bits}")
