"""CTranslate2 model of a compacted (pruned) fullyqt model, built with CTranslate2's Python API.

``ct2-fairseq-converter`` rebuilds a model from fairseq's global arguments, which cannot hold
per-layer head counts or FFN sizes.  This writes the ``TransformerSpec`` itself: FFN sizes are
the real per-layer ones; CTranslate2 holds one head count per stack (decoder self- and
cross-attention share it), so each attention is padded to its stack's largest surviving count
with zero Q/K/V rows and zero output-projection columns — exact, since a head whose output
columns are zero adds nothing — and ``head_dim`` is set to the real head size.
"""
import argparse
import copy

import torch

from ..errors import UserError
from ..feature import Build, features
from ..prune.feature import shapes_options
from ..prune.shapes import CompactShapes, LayerShape
from .stock import stock_state_dict


def check_supported(args):
    """What this converter (like CTranslate2's own) cannot express: one error line."""
    from ctranslate2.converters import fairseq as ct2_fairseq

    act = getattr(args, "activation_fn", "relu")
    if act not in ct2_fairseq._SUPPORTED_ACTIVATIONS:
        raise UserError(f"--format ctranslate2: activation {act!r} is not supported by "
                        f"CTranslate2 (allowed: {', '.join(ct2_fairseq._SUPPORTED_ACTIVATIONS)})")
    if args.encoder_normalize_before != args.decoder_normalize_before:
        raise UserError("--format ctranslate2: CTranslate2 needs the same "
                        "--encoder-normalize-before and --decoder-normalize-before")


def padded_shapes(shapes: CompactShapes) -> CompactShapes:
    enc = max(s.heads for s in shapes.encoder)
    dec = max(max(s.heads, s.cross_heads or 0) for s in shapes.decoder)
    return CompactShapes(
        [LayerShape(enc, None, s.ffn) for s in shapes.encoder],
        [LayerShape(dec, None if s.cross_heads is None else dec, s.ffn)
         for s in shapes.decoder])


def _pad_attention(state: dict, prefix: str, heads: int, head_dim: int):
    for name in ("q_proj", "k_proj", "v_proj"):
        for kind in ("weight", "bias"):
            t = state[f"{prefix}.{name}.{kind}"]
            pad = heads * head_dim - t.shape[0]
            state[f"{prefix}.{name}.{kind}"] = torch.cat([t, t.new_zeros((pad,) + t.shape[1:])])
    w = state[f"{prefix}.out_proj.weight"]
    state[f"{prefix}.out_proj.weight"] = torch.cat(
        [w, w.new_zeros(w.shape[0], heads * head_dim - w.shape[1])], dim=1)


def padded_float_model(model, args, task):
    """A float (``--no-quant``, dense) fullyqt model holding the compact model's dequantized
    weights, every attention padded to its stack's largest head count."""
    shapes = Build(argparse.Namespace(**vars(args))).layer_shapes()
    padded = padded_shapes(shapes)
    state = stock_state_dict(model)
    for stack, own, pad in (("encoder", shapes.encoder, padded.encoder),
                            ("decoder", shapes.decoder, padded.decoder)):
        head_dim = getattr(args, f"{stack}_embed_dim") // getattr(args, f"{stack}_attention_heads")
        for i, (s, p) in enumerate(zip(own, pad)):
            _pad_attention(state, f"{stack}.layers.{i}.self_attn", p.heads, head_dim)
            if s.cross_heads is not None:
                _pad_attention(state, f"{stack}.layers.{i}.encoder_attn", p.cross_heads,
                               head_dim)
    float_args = argparse.Namespace(**vars(copy.deepcopy(args)))
    for feature in features():  # dense float weights: factors arrive multiplied out
        vars(float_args).update(feature.float_options(args))
    vars(float_args).update(shapes_options(padded))
    float_model = task.build_model(float_args)
    float_model.load_state_dict(state, strict=False)  # quantizer state: none in a float model
    return float_model.eval(), padded


def compact_spec(model, args, task):
    """The ``TransformerSpec`` (weights set) of a compact fullyqt model."""
    from ctranslate2.converters import fairseq as ct2_fairseq
    from ctranslate2.specs import transformer_spec

    float_model, padded = padded_float_model(model, args, task)
    act = ct2_fairseq._SUPPORTED_ACTIVATIONS[getattr(args, "activation_fn", "relu")]
    common = dict(pre_norm=args.encoder_normalize_before, activation=act,
                  layernorm_embedding=getattr(args, "layernorm_embedding", False))
    spec = transformer_spec.TransformerSpec(
        transformer_spec.TransformerEncoderSpec(
            args.encoder_layers, padded.encoder[0].heads,
            head_dim=args.encoder_embed_dim // args.encoder_attention_heads, **common),
        transformer_spec.TransformerDecoderSpec(
            args.decoder_layers, padded.decoder[0].heads,
            head_dim=args.decoder_embed_dim // args.decoder_attention_heads, **common))
    if not common["layernorm_embedding"]:  # the slot holds the (here idle) embedding quantizer
        float_model.encoder.layernorm_embedding = float_model.decoder.layernorm_embedding = None
    with torch.no_grad():
        ct2_fairseq.set_transformer_encoder(spec.encoder, float_model.encoder)
        ct2_fairseq.set_transformer_decoder(spec.decoder, float_model.decoder)
    spec.register_source_vocabulary(ct2_fairseq._get_vocab(task.source_dictionary))
    spec.register_target_vocabulary(ct2_fairseq._get_vocab(task.target_dictionary))
    spec.config.decoder_start_token = spec.config.eos_token
    spec.config.add_source_eos = True
    return spec


def convert_compact(model, args, task, out_dir: str, quantization: str = "int8", vmap=None):
    """Write the CTranslate2 model directory ``out_dir`` (which must not exist); ``vmap``: a
    vocabulary map file to include."""
    from ctranslate2.converters.converter import Converter

    spec = compact_spec(model, args, task)

    class _Spec(Converter):
        def _load(self):
            return spec

    _Spec().convert(out_dir, vmap=vmap, quantization=quantization, force=True)
