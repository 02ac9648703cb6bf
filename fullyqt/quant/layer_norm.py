"""LayerNorm with its internals quantized: numerator, denominator, quotient, gain and output."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import fused
from .config import QuantConfig
from .layout import as_rows, from_rows
from .mode_caches import DropCachesOnModeSwitch
from .padding import PaddingContext, valid_mask
from .weight_source import tensor_version


class QuantLayerNorm(DropCachesOnModeSwitch, nn.LayerNorm):
    """y = Q(Q(Q(x - mean) / Q(sqrt(var + eps))) * Q(gain) + bias); the bias stays float.

    The variance is taken from the quantized numerator, so the integer path and this one see the
    same values.  Parameter names match ``nn.LayerNorm``.  ``dropout`` (the embedding LayerNorm
    only) runs before the output quantizer, so what follows receives quantized values.  A model
    without quantization (``--no-quant``) runs torch's fused layer norm instead of the chain.
    A training step on CPU float32 runs the same chain outside autograd and its backward as one
    kernel pass over the rows (``_QuantLayerNormTraining``); evaluation there, on frozen ranges,
    runs it as two kernel passes around torch's square root of one value per row, the means
    summed in the kernel in torch's order (the same values) or, where that order is not known,
    by torch.
    """

    def __init__(self, dim, *, qcfg: QuantConfig, pad: Optional[PaddingContext] = None,
                 time_major=True, eps=1e-5, dropout: Optional[nn.Module] = None):
        super().__init__(dim, eps=eps)
        if dropout is not None:
            self.dropout = dropout
        self.gain_quant = qcfg.weight()
        self.numerator_quant = qcfg.act()
        # Straight-through: the denominator drifts steadily in training, the running range lags
        # behind it, and a gradient cut there stalls learning (the paper's naive-scheme failure).
        self.denominator_quant = qcfg.act(clip_gradient=False)
        self.quotient_quant = qcfg.act()
        self.output_quant = qcfg.act()
        self.pad = pad
        self.time_major = time_major
        self.unquantized = qcfg.weight_bits is None and qcfg.act_bits is None
        self._gain = None

    def drop_caches(self):
        self._gain = None

    def _frozen_gain(self) -> torch.Tensor:
        """The quantized gain of evaluation, made again only when the weight changes (and at
        every call while hooks watch its quantizer)."""
        key = (tensor_version(self.weight), self.gain_quant.enabled)
        if self._gain is None or self._gain[0] != key or self.gain_quant.hooked:
            self._gain = (key, self.gain_quant(self.weight.float()).contiguous())
        return self._gain[1]

    def quantized_parameters(self):
        return {"weight": (self.weight, self.gain_quant)}

    def dequantized_weights(self):
        return {"weight": self.gain_quant(self.weight)}

    def forward(self, x):
        if self.unquantized:
            out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                               self.bias.float(), self.eps)
            if "dropout" in self._modules:
                out = self.dropout(out)
            return out.type_as(x)
        grids = self._frozen_grids(x)
        if grids is not None:
            return self._evaluate(x, grids)
        valid = valid_mask(self, x)
        if (self.training and torch.is_grad_enabled() and "dropout" not in self._modules
                and fused.applies(x) and (x.requires_grad or self.weight.requires_grad)):
            return _QuantLayerNormTraining.apply(x, self.weight, self.bias, self, valid)
        xf = x.float()
        num = self.numerator_quant(xf - xf.mean(-1, keepdim=True), valid)
        den = self.denominator_quant((num.pow(2).mean(-1, keepdim=True) + self.eps).sqrt(), valid)
        quot = self.quotient_quant(num / den, valid)
        out = quot * self.gain_quant(self.weight.float()) + self.bias.float()
        if "dropout" in self._modules:
            out = self.dropout(out)
        return self.output_quant(out, valid).type_as(x)

    def _frozen_grids(self, x):
        """The activation quantizers' (lo, hi, step) where evaluation may run in the kernel:
        CPU float32, no gradient wanted, every range known, no hooks watching; else None."""
        quantizers = (self.numerator_quant, self.denominator_quant, self.quotient_quant,
                      self.output_quant)
        if self.training or (torch.is_grad_enabled() and (
                x.requires_grad or self.weight.requires_grad)) or not fused.applies(x):
            return None
        if "dropout" in self._modules and self.dropout.training:
            return None
        if any(q.hooked or not q.has_range for q in quantizers):
            return None
        return [q.frozen_range() for q in quantizers]

    def _evaluate(self, x, grids):
        rows, perm = as_rows(x)
        rows = rows.contiguous()
        gain, bias = self._frozen_gain(), self.bias.float()
        out = fused.layer_norm_evaluate(rows, gain, bias, grids, self.eps)
        if out is None:
            num = fused.layer_norm_numerator(rows, rows.mean(-1, keepdim=True), grids[0])
            root = (num.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()
            out = fused.layer_norm_output(num, root, gain, bias, grids[1:])
        return from_rows(out, x, perm)


class _QuantLayerNormTraining(torch.autograd.Function):
    """``QuantLayerNorm``'s training chain on CPU float32, the same values, with autograd's ~15
    full-size backward ops (the quantizers' masks, the quotient's, the mean's and the root's
    gradients, the gain's and bias's sums) in one kernel pass over the rows, and only the
    numerator, the quotient, their masks and one root and denominator per row kept for it."""

    @staticmethod
    def forward(ctx, x, weight, bias, ln, valid):
        masks = []  # each quantizer's straight-through mask (hooks see the quantizers run)
        num = ln.numerator_quant(x - x.mean(-1, keepdim=True), valid, masks)
        root = (num.pow(2).mean(-1, keepdim=True) + ln.eps).sqrt()
        den = ln.denominator_quant(root, valid, masks)  # straight through: no mask
        quot = ln.quotient_quant(num / den, valid, masks)
        gain = ln.gain_quant(weight.float())  # its range is its own: nothing clipped
        out = ln.output_quant(quot * gain + bias.float(), valid, masks)
        in_num, _, in_quot, in_out = masks
        ctx.save_for_backward(num, quot, den, root, gain, in_out, in_quot, in_num)
        return out

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        rows, perm = as_rows(grad)
        num, quot, den, root, in_out, in_quot, in_num = (
            None if t is None else _rows_like(t, perm) for t in saved[:4] + saved[5:])
        grad_x, grad_gain, grad_bias = fused.layer_norm_backward(
            rows.contiguous(), num, quot, den, root, saved[4].contiguous(), in_out, in_quot,
            in_num)
        return from_rows(grad_x, grad, perm), grad_gain, grad_bias, None, None


def _rows_like(t, perm):
    """``t``'s last-dim vectors as contiguous rows, its leading dims taken in the order ``perm``
    (None: as they are): the rows of ``as_rows`` of a tensor laid out so."""
    return (t.permute(*perm, t.dim() - 1) if perm else t).reshape(-1, t.shape[-1]).contiguous()
