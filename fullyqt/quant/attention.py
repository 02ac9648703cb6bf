"""Multi-head attention on one quantized path for training, encoding and incremental decoding.

fairseq's ``MultiheadAttention.forward`` hands non-incremental calls to
``F.multi_head_attention_forward``, which reads the projection weights directly and so skips
any fake quantization placed in them.  This subclass keeps fairseq's parameters, incremental
state layout and reordering, and replaces the forward with one explicit path:
Q, K, V, the softmax numerator / denominator / output and the attention output are quantized.
Attention dropout runs before the softmax output quantizer: P·V multiplies quantized values in
training too (the returned weights are those P).  In exact evaluation (``--quant-kernels exact``
or ``int8``) Q·Kᵀ, P·V and the softmax sum are computed from integer codes
(``integer_form.codes_matmul``), so incremental decoding gives the full pass's bits; the
incremental state then keeps the keys' and values' codes, each computed once.  On CPU float32
the two products and the masks run in C (``kernels/attention.c``), the same bits.

``heads`` (a compacted model) keeps the head size of ``num_heads`` heads but holds only
``heads`` of them: projections of ``heads * head_dim`` rows (Q, K, V) and columns (output).
"""
from typing import Dict, Optional

import torch
from fairseq.modules import MultiheadAttention
from torch import Tensor

from . import fused
from .config import QuantConfig
from .integer_form import FLOAT32_INTEGERS, codes_matmul, code_sum, product_terms
from .linear import LAYER_KERNELS, QuantLinear
from .padding import PaddingContext, valid_mask


class QuantMultiheadAttention(MultiheadAttention):
    def __init__(self, embed_dim, num_heads, *, qcfg: QuantConfig, pad: Optional[PaddingContext],
                 heads: Optional[int] = None, **kwargs):
        for unsupported in ("add_bias_kv", "add_zero_attn"):
            if kwargs.get(unsupported):
                raise ValueError(f"fullyqt attention does not support {unsupported}")
        super().__init__(embed_dim, num_heads, **kwargs)
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            setattr(self, name, QuantLinear.wrap(getattr(self, name), qcfg=qcfg))
        if heads is not None and heads != num_heads:
            if not 1 <= heads <= num_heads:
                raise ValueError(f"heads {heads}: allowed 1..{num_heads}")
            inner = heads * self.head_dim
            self.num_heads = heads
            self.q_proj = QuantLinear(embed_dim, inner, qcfg=qcfg)
            self.k_proj = QuantLinear(self.kdim, inner, qcfg=qcfg)
            self.v_proj = QuantLinear(self.vdim, inner, qcfg=qcfg)
            self.out_proj = QuantLinear(inner, embed_dim, qcfg=qcfg)
        self.q_quant = qcfg.act()
        self.k_quant = qcfg.act()
        self.v_quant = qcfg.act()
        self.softmax_numerator_quant = qcfg.act(unsigned=True)
        self.softmax_denominator_quant = qcfg.act(bits=qcfg.softmax_denominator_bits)
        self.softmax_output_quant = qcfg.act(unsigned=True)
        self.attn_output_quant = qcfg.act()
        self.out_proj.feed_from(self.attn_output_quant)
        self.pad = pad
        self.time_major = True
        self.kernels = "fake"

    def set_kernels(self, kernels: str):
        if kernels not in LAYER_KERNELS:
            raise ValueError(f"kernels {kernels!r}: allowed {', '.join(LAYER_KERNELS)}")
        self.kernels = kernels

    def _on_codes(self) -> bool:
        """Whether this pass multiplies integer codes: exact evaluation with every range known."""
        return self.kernels == "exact" and not self.training and not torch.is_grad_enabled() and all(
            q.has_range for q in (self.q_quant, self.k_quant, self.v_quant,
                                  self.softmax_numerator_quant, self.softmax_output_quant))

    def feed_from(self, query_quant, key_quant):
        """Wire the quantizers that produce the query and the key/value inputs."""
        self.q_proj.feed_from(query_quant)
        self.k_proj.feed_from(key_quant)
        self.v_proj.feed_from(key_quant)

    def set_beam_size(self, beam_size):
        """Keep one cached key/value row per hypothesis: no beam folding of the encoder keys."""

    def _heads(self, x: Tensor) -> Tensor:
        """(time, batch, embed) -> (batch, heads, time, head_dim), laid out so in memory: the
        products take its quantizer's output as it is (autograd keeps that, as codes), with no
        copy of their own."""
        t, b, _ = x.shape
        return x.reshape(t, b, self.num_heads, self.head_dim).permute(1, 2, 0, 3).contiguous()

    def _merge_heads(self, out: Tensor, query: Tensor) -> Tensor:
        """(batch, heads, time, head_dim) -> (time, batch, embed), laid out in memory as the
        query is (the quantized residual stream is a time-major view of batch-major memory; a
        float layer norm's output is time-major): the residual sum then runs in one order."""
        bsz, _, tgt_len, _ = out.shape
        if query.transpose(0, 1).is_contiguous() and not query.is_contiguous():
            return out.transpose(1, 2).reshape(bsz, tgt_len, -1).transpose(0, 1)
        return out.permute(2, 0, 1, 3).reshape(tgt_len, bsz, -1)

    def _heads_valid(self, valid: Optional[Tensor]) -> Optional[Tensor]:
        """A (time, batch) padding mask over the leading dims of ``_heads``' output."""
        if valid is None:
            return None
        t, b = valid.shape
        return valid.t()[:, None, :].expand(b, self.num_heads, t)

    def forward(self, query: Tensor, key: Optional[Tensor], value: Optional[Tensor],
                key_padding_mask: Optional[Tensor] = None,
                incremental_state: Optional[Dict[str, Dict[str, Optional[Tensor]]]] = None,
                need_weights: bool = True, static_kv: bool = False,
                attn_mask: Optional[Tensor] = None, before_softmax: bool = False,
                need_head_weights: bool = False):
        need_weights = need_weights or need_head_weights
        tgt_len, bsz, _ = query.shape
        saved = self._get_input_buffer(incremental_state) if incremental_state is not None else None
        if saved is not None and static_kv and "prev_key" in saved:
            key = value = None  # encoder keys/values were projected at the first step

        codes = self._on_codes()
        q_valid = valid_mask(self, query)
        q_in = self._heads(self.q_proj(query) * self.scaling)
        q = self.q_quant.frozen_codes(q_in) if codes else self.q_quant(
            q_in, self._heads_valid(q_valid))
        k = v = None
        if key is not None:
            value = key if value is None else value
            kv_valid = self._heads_valid((~key_padding_mask.bool()).t() if (
                self.training and key_padding_mask is not None) else None)
            k_in, v_in = self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
            if codes:  # the codes, made once: the incremental state keeps them
                k, v = self.k_quant.frozen_codes(k_in), self.v_quant.frozen_codes(v_in)
            else:
                k, v = self.k_quant(k_in, kv_valid), self.v_quant(v_in, kv_valid)

        if saved is not None:
            if "prev_key" in saved:
                k = saved["prev_key"] if static_kv else torch.cat([saved["prev_key"], k], dim=2)
                v = saved["prev_value"] if static_kv else torch.cat([saved["prev_value"], v], dim=2)
            key_padding_mask = MultiheadAttention._append_prev_key_padding_mask(
                key_padding_mask=key_padding_mask,
                prev_key_padding_mask=saved.get("prev_key_padding_mask"),
                batch_size=bsz, src_len=k.size(2), static_kv=static_kv)
            saved["prev_key"], saved["prev_value"] = k, v
            saved["prev_key_padding_mask"] = key_padding_mask
            self._set_input_buffer(incremental_state, saved)
        assert k is not None and v is not None

        fast = self._fused_products(q, k, v, attn_mask, key_padding_mask, need_weights) if (
            codes and not before_softmax) else None
        if fast is not None:
            probs, out = fast
        else:
            if codes:
                scores = codes_matmul(q, self.q_quant.frozen_numbers(), k.transpose(-1, -2),
                                      self.k_quant.frozen_numbers()).to(q_in.dtype)
            else:
                scores = torch.matmul(q, k.transpose(-1, -2))  # (batch, heads, tgt, src)
            if attn_mask is not None:
                scores = scores + attn_mask.to(scores.dtype)
            if key_padding_mask is not None:
                scores = scores.masked_fill(key_padding_mask.bool()[:, None, None, :],
                                            float("-inf"))
            if before_softmax:
                return scores, self.v_quant.grid.dequantize(v).to(q_in.dtype) if codes else v
            if codes:
                probs, p_codes = self._exact_softmax(scores, need_weights)
                out = codes_matmul(p_codes, self.softmax_output_quant.frozen_numbers(), v,
                                   self.v_quant.frozen_numbers()).to(q_in.dtype)
            else:
                probs = self._quantized_softmax(scores, q_valid)
                out = torch.matmul(probs, v)  # (batch, heads, tgt, head_dim)
        out = self.out_proj(self.attn_output_quant(self._merge_heads(out, query), q_valid))

        weights = None
        if need_weights:
            weights = probs.transpose(1, 0) if need_head_weights else probs.mean(dim=1)
        return out, weights

    def _quantized_softmax(self, scores: Tensor, q_valid: Optional[Tensor],
                           codes: bool = False) -> Tensor:
        """softmax = Q(dropout(Q(exp(s - max)) / Q(sum))); rows whose keys are all masked give
        zeros."""
        valid = None
        if q_valid is not None:  # (tgt, batch) -> (batch, heads, tgt)
            valid = q_valid.t()[:, None, :].expand(scores.shape[:3])
        num = self.softmax_numerator_quant(_exp(scores), valid)
        total = code_sum(num, self.softmax_numerator_quant.grid) if codes else num.sum(
            dim=-1, keepdim=True)
        den = self.softmax_denominator_quant(total, valid)
        return self.softmax_output_quant(self.dropout_module(num / den.clamp_min(1e-6)), valid)

    def _fused_products(self, q, k, v, attn_mask, key_padding_mask, want_probs: bool):
        """(probabilities or None, P·V) of exact evaluation on CPU float32 by the C kernels
        (``kernels/attention.c``): Q·Kᵀ with its masks and row max in one pass, torch's exp,
        the softmax kernel, P·V in one pass; the bits of ``codes_matmul`` and the torch ops,
        which run where the kernels do not apply (None)."""
        gq, gk = self.q_quant.frozen_numbers(), self.k_quant.frozen_numbers()
        gp, gv = self.softmax_output_quant.frozen_numbers(), self.v_quant.frozen_numbers()
        (bsz, _, tgt, dim), src = q.shape, k.shape[2]
        if not (fused.applies(q) and all(t.dtype == torch.float32 and t.is_contiguous()
                                         for t in (q, k, v))
                and dim * gq.top * gk.top <= FLOAT32_INTEGERS  # sums exact in float32
                and src * gp.top * gv.top <= FLOAT32_INTEGERS
                and (attn_mask is None or tuple(attn_mask.shape) == (tgt, src))
                and (key_padding_mask is None or tuple(key_padding_mask.shape) == (bsz, src))
                and self._softmax_kernel_applies(src)):
            return None
        values, value_flags = product_terms(gp, gv, src)
        if value_flags & 2:  # a probability grid that does not start at 0
            return None
        mask = None if attn_mask is None else attn_mask.to(torch.float32).contiguous()
        pad = None if key_padding_mask is None else key_padding_mask.bool().contiguous()
        shifted = fused.attention_scores(q, k, *product_terms(gq, gk, dim), mask, pad)
        probs, p_codes = self._exact_softmax(shifted, want_probs, exp=torch.exp(shifted))
        return probs, fused.attention_values(p_codes, v, values, value_flags)

    def _softmax_kernel_applies(self, src: int) -> bool:
        """Whether ``_exact_softmax`` runs its kernel on rows of ``src`` keys: int32 sums of the
        numerator's codes, no hooks watching a softmax quantizer."""
        quantizers = (self.softmax_numerator_quant, self.softmax_denominator_quant,
                      self.softmax_output_quant)
        return src * quantizers[0].frozen_numbers().top < 1 << 31 and not any(
            q.hooked for q in quantizers)

    def _exact_softmax(self, scores: Tensor, want_probs: bool, exp: Optional[Tensor] = None):
        """(probabilities, or None where not wanted; their codes) in exact evaluation: on CPU
        float32 one kernel pass after torch's exp (the chain's values bit for bit; ``exp``:
        ``_exp(scores)`` where the caller has it), unless hooks watch a softmax quantizer; else
        the chain and the codes of its output."""
        quantizers = (self.softmax_numerator_quant, self.softmax_denominator_quant,
                      self.softmax_output_quant)
        if not (fused.applies(scores) and scores.is_contiguous()
                and self._softmax_kernel_applies(scores.shape[-1])):
            probs = self._quantized_softmax(scores, None, codes=True)
            return probs, self.softmax_output_quant.grid.codes(probs.float())
        num, den, out = quantizers
        lo, step = num.frozen_numbers().lo_step()  # the sum: float(sum of codes) * step + n * lo
        grids = [*num.frozen_range(), *(den.frozen_range() if den.has_range else (0.0,) * 3),
                 *out.frozen_range()]
        e = _exp(scores) if exp is None else exp
        return fused.softmax_codes(e.contiguous(), grids, step, scores.shape[-1] * lo,
                                   den.has_range, want_probs)


def _exp(scores: Tensor) -> Tensor:
    """exp(scores - row max), a row whose keys are all masked (max -inf) giving zeros."""
    row_max = scores.detach().amax(dim=-1, keepdim=True).nan_to_num_(0.0, 0.0, 0.0)
    return torch.exp(scores - row_max)
