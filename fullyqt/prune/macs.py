"""Multiply-adds of decoding, per layer shape: the speed-up bound that pruning allows.

Pruning leaves the embeddings and the output projection (vocabulary x width) as they are, so a
compact model cannot be faster than dense MACs / compact MACs; the benchmark reports that bound
per decoding step and per sentence beside the measured speed.
"""
from typing import Dict, List, NamedTuple

from .structure import attentions


class Dims(NamedTuple):
    width: int
    head_dim: int
    vocab: int
    encoder: List[tuple]  # (heads, ffn) per layer
    decoder: List[tuple]  # (self heads, cross heads or 0, ffn) per layer


def dims_of(model) -> Dims:
    """The shapes of a fullyqt (masked: counting only what is alive) or compact model."""
    from .structure import heads_alive, units_alive

    def heads(attn):
        return int(heads_alive(attn).sum())

    enc = [(heads(layer.self_attn), int(units_alive(layer).sum()))
           for layer in model.encoder.layers]
    dec = []
    for layer in model.decoder.layers:
        att = dict(attentions(layer))
        dec.append((heads(att["self"]), heads(att["cross"]) if "cross" in att else 0,
                    int(units_alive(layer).sum())))
    attn = model.encoder.layers[0].self_attn
    vocab = model.decoder.output_projection.out_features
    return Dims(model.decoder.embed_dim, attn.head_dim, vocab, enc, dec)


def ct2_padded(d: Dims) -> Dims:
    """``d`` as CTranslate2 runs it: one head count per stack (the decoder's self- and
    cross-attention share it), so every attention is padded to its stack's largest count, and
    padded heads cost their multiply-adds."""
    enc = max(h for h, _ in d.encoder)
    dec = max(max(s, c) for s, c, _ in d.decoder)
    return d._replace(encoder=[(enc, f) for _, f in d.encoder],
                      decoder=[(dec, dec if c else 0, f) for _, c, f in d.decoder])


def step_macs(d: Dims, position: int, src_len: int) -> Dict[str, int]:
    """One decoder step of one hypothesis at target ``position`` (1-based): the decoder layers
    (projections, attention over ``position`` keys and ``src_len`` encoder keys, FFN) and the
    output projection."""
    w, hd = d.width, d.head_dim
    layers = 0
    for hs, hc, ffn in d.decoder:
        layers += 4 * w * hs * hd + 2 * position * hs * hd  # self: q, k, v, out; scores, sum
        layers += 2 * w * hc * hd + 2 * src_len * hc * hd  # cross: q, out; scores, sum
        layers += 2 * w * ffn
    return {"decoder_layers": layers, "output_projection": w * d.vocab}


def sentence_macs(d: Dims, src_len: int, tgt_len: int) -> int:
    """Encoding ``src_len`` tokens, the cross-attention keys and values, and ``tgt_len``
    decoder steps."""
    w, hd = d.width, d.head_dim
    total = sum(src_len * (4 * w * h * hd + 2 * src_len * h * hd + 2 * w * ffn)
                for h, ffn in d.encoder)
    total += sum(2 * src_len * w * hc * hd for _, hc, _ in d.decoder)
    total += sum(sum(step_macs(d, t, src_len).values()) for t in range(1, tgt_len + 1))
    return total
