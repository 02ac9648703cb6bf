"""``fullyqt_transformer``: fairseq's transformer with every weight and matmul input fake-quantized.

Built through fairseq's hooks (``build_embedding``/``build_encoder``/``build_decoder``,
``build_*_layer``, ``build_fc1``/``build_fc2``, ``build_*_attention``,
``build_output_projection``); LayerNorms, the FFN activation, the position table and the
embedding-sum quantizer are swapped in after the parent constructor.  Parameter names stay those
of the stock transformer, so float checkpoints load and the export writes stock ones.
"""
import logging

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.transformer import (
    TransformerConfig,
    TransformerDecoderBase,
    TransformerEncoderBase,
    TransformerModel,
)
from fairseq.models.transformer.transformer_legacy import (
    base_architecture,
    transformer_wmt_en_de_big,
)
from fairseq.modules.transformer_layer import (
    TransformerDecoderLayerBase,
    TransformerEncoderLayerBase,
)
from torch import nn

from ..export.integer import is_packed, unpack_state
from ..native import to_native_int8
from ..quant.activation import QuantActivation
from ..quant.attention import QuantMultiheadAttention
from ..quant.config import QuantConfig, add_quant_args, set_quant_defaults
from ..quant.embedding import QuantEmbedding, QuantSinusoidalPositionalEmbedding
from ..quant.input_grid import bind_input_grids, ready
from ..quant.layer_norm import QuantLayerNorm
from ..quant.linear import QuantLinear
from ..quant.padding import PaddingContext
from ..quant.quantizer import ActivationQuantizer, Quantizer

logger = logging.getLogger(__name__)

# Options of the stock transformer that this model does not implement (all off by default).
_UNSUPPORTED = (
    "encoder_learned_pos", "decoder_learned_pos", "adaptive_input", "adaptive_softmax_cutoff",
    "cross_self_attention", "checkpoint_activations", "quant_noise_pq", "quant_noise_scalar",
    "scale_attn", "scale_fc", "scale_heads", "scale_resids", "no_token_positional_embeddings",
    "merge_src_tgt_embed", "encoder_embed_path", "decoder_embed_path",
)


def check_supported(args):
    for name in _UNSUPPORTED:
        value = getattr(args, name, None)
        if value:
            raise ValueError(f"fullyqt_transformer does not support "
                             f"--{name.replace('_', '-')} (got {value!r})")


class EmbeddingSumQuantizer(ActivationQuantizer):
    """Quantizes token embedding + position (batch-major), sitting in fairseq's
    ``layernorm_embedding`` slot, the one hook applied right after that sum."""

    def __init__(self, qcfg: QuantConfig, pad: PaddingContext):
        super().__init__(qcfg.act_bits, qcfg.momentum, False, qcfg.start_update)
        self.pad = pad

    def forward(self, x, valid=None):
        if valid is None and self.training:
            valid = self.pad.valid_for(x, time_major=False)
        return super().forward(x, valid)


def _embedding_sum_quantizer(cfg, qcfg, pad, dim):
    if cfg.layernorm_embedding:
        return QuantLayerNorm(dim, qcfg=qcfg, pad=pad, time_major=False)
    return EmbeddingSumQuantizer(qcfg, pad)


def _quant_positions(module, qcfg):
    if module is None:
        return None
    return QuantSinusoidalPositionalEmbedding(
        module.weights.size(0) - module.padding_idx - 1, module.embedding_dim,
        module.padding_idx, qcfg=qcfg)


class FullyQTEncoderLayer(TransformerEncoderLayerBase):
    def __init__(self, cfg, qcfg: QuantConfig, pad: PaddingContext):
        self.qcfg, self.pad = qcfg, pad
        super().__init__(cfg)
        dim = self.embed_dim
        self.self_attn_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.final_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.activation_fn = QuantActivation(cfg.activation_fn, qcfg=qcfg, pad=pad)

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        return QuantLinear(input_dim, output_dim, qcfg=self.qcfg, pad=self.pad)

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return QuantLinear(input_dim, output_dim, qcfg=self.qcfg, pad=self.pad,
                           quantize_output=True)

    def build_self_attention(self, embed_dim, cfg):
        return QuantMultiheadAttention(
            embed_dim, cfg.encoder.attention_heads, qcfg=self.qcfg, pad=self.pad,
            dropout=cfg.attention_dropout, self_attention=True)


class FullyQTDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, qcfg: QuantConfig, pad: PaddingContext, no_encoder_attn=False):
        self.qcfg, self.pad = qcfg, pad
        super().__init__(cfg, no_encoder_attn)
        dim = self.embed_dim
        self.self_attn_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        if self.encoder_attn_layer_norm is not None:
            self.encoder_attn_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.final_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.activation_fn = QuantActivation(cfg.activation_fn, qcfg=qcfg, pad=pad)

    build_fc1 = FullyQTEncoderLayer.build_fc1
    build_fc2 = FullyQTEncoderLayer.build_fc2

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return QuantMultiheadAttention(
            embed_dim, cfg.decoder.attention_heads, qcfg=self.qcfg, pad=self.pad,
            dropout=cfg.attention_dropout, self_attention=True)

    def build_encoder_attention(self, embed_dim, cfg):
        return QuantMultiheadAttention(
            embed_dim, cfg.decoder.attention_heads, qcfg=self.qcfg, pad=self.pad,
            kdim=cfg.encoder.embed_dim, vdim=cfg.encoder.embed_dim,
            dropout=cfg.attention_dropout, encoder_decoder_attention=True)


class FullyQTEncoder(TransformerEncoderBase):
    def __init__(self, cfg, qcfg: QuantConfig, dictionary, embed_tokens):
        self.qcfg, self.pad = qcfg, PaddingContext()
        super().__init__(cfg, dictionary, embed_tokens)
        dim = embed_tokens.embedding_dim
        self.embed_positions = _quant_positions(self.embed_positions, qcfg)
        self.layernorm_embedding = _embedding_sum_quantizer(cfg, qcfg, self.pad, dim)
        if self.layer_norm is not None:
            self.layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=self.pad)

    def build_encoder_layer(self, cfg):
        return FullyQTEncoderLayer(cfg, self.qcfg, self.pad)

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens=False,
                token_embeddings=None):
        valid = src_tokens.ne(self.padding_idx) if self.training else None
        with self.pad.tokens(valid):
            return super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)


class FullyQTDecoder(TransformerDecoderBase):
    def __init__(self, cfg, qcfg: QuantConfig, dictionary, embed_tokens, no_encoder_attn=False):
        self.qcfg, self.pad = qcfg, PaddingContext()
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        dim = self.embed_dim
        self.embed_positions = _quant_positions(self.embed_positions, qcfg)
        self.layernorm_embedding = _embedding_sum_quantizer(cfg, qcfg, self.pad, dim)
        if self.layer_norm is not None:
            self.layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=self.pad)
        if self.project_in_dim is not None:
            self.project_in_dim = QuantLinear.wrap(self.project_in_dim, qcfg=qcfg)
        if self.project_out_dim is not None:
            self.project_out_dim = QuantLinear.wrap(self.project_out_dim, qcfg=qcfg,
                                                    quantize_input=self.layer_norm is None)
        # The features reach the output projection quantized only when a LayerNorm made them.
        features_quantized = self.project_out_dim is None and (
            self.layer_norm is not None or not cfg.decoder.normalize_before)
        self.output_projection = QuantLinear.wrap(
            self.output_projection, qcfg=qcfg, pad=self.pad, time_major=False,
            quantize_input=not features_quantized)

    def build_decoder_layer(self, cfg, no_encoder_attn=False):
        return FullyQTDecoderLayer(cfg, self.qcfg, self.pad, no_encoder_attn)

    def extract_features(self, prev_output_tokens, encoder_out=None, incremental_state=None,
                         full_context_alignment=False, alignment_layer=None,
                         alignment_heads=None):
        valid = prev_output_tokens.ne(self.padding_idx) if (
            self.training and incremental_state is None) else None
        with self.pad.tokens(valid):
            return super().extract_features(
                prev_output_tokens, encoder_out, incremental_state, full_context_alignment,
                alignment_layer, alignment_heads)


@register_model("fullyqt_transformer")
class FullyQTTransformerModel(TransformerModel):
    """Fully Quantized Transformer (Prato et al., 2020) trained quantization-aware."""

    @classmethod
    def hub_models(cls):
        return {}

    @staticmethod
    def add_args(parser):
        TransformerModel.add_args(parser)
        add_quant_args(parser)

    @classmethod
    def build_model(cls, args, task):
        base_architecture(args)
        set_quant_defaults(args)
        check_supported(args)
        QuantConfig.from_args(args)  # validate before building anything
        return super().build_model(args, task)

    @classmethod
    def build_embedding(cls, args, dictionary, embed_dim, path=None):
        emb = QuantEmbedding(len(dictionary), embed_dim, dictionary.pad(),
                             qcfg=QuantConfig.from_args(args))
        nn.init.normal_(emb.weight, mean=0, std=embed_dim**-0.5)
        nn.init.constant_(emb.weight[dictionary.pad()], 0)
        return emb

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        return FullyQTEncoder(TransformerConfig.from_namespace(args), QuantConfig.from_args(args),
                              src_dict, embed_tokens)

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        return FullyQTDecoder(TransformerConfig.from_namespace(args), QuantConfig.from_args(args),
                              tgt_dict, embed_tokens,
                              no_encoder_attn=getattr(args, "no_cross_attention", False))

    def __init__(self, args, encoder, decoder):
        super().__init__(args, encoder, decoder)
        self._grids_bound = False
        self._set_kernels()

    def _set_kernels(self):
        kernels = getattr(self.args, "quant_kernels", "exact")
        for m in self.modules():
            if isinstance(m, QuantLinear):
                m.kernels = "fake64" if kernels == "fake64" else (
                    "fake" if kernels == "fake" else "exact")
        return kernels

    def train(self, mode=True):
        """Switching to eval finds each linear's input grid once every quantizer has a range, so
        that ``exact`` evaluation (validation included) runs the integer arithmetic."""
        super().train(mode)
        if not mode and not getattr(self, "_grids_bound", True) and ready(self):
            bind_input_grids(self)
            self._grids_bound = True
        return self

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """Load the weights, then apply ``--quant-kernels``: int8 swaps in the integer linears,
        exact binds the linears to their input grids, fake64 accumulates in float64."""
        result = super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)
        kernels = self._set_kernels()
        was_training = self.training
        self._grids_bound = False
        self.eval()  # binds the input grids
        if kernels == "int8":
            to_native_int8(self)
        self.train(was_training)
        return result

    def upgrade_state_dict_named(self, state_dict, name):
        """Unpack an integer export; start quantizer state fresh when loading a float (stock
        transformer) checkpoint."""
        if is_packed(state_dict):
            unpack_state(state_dict, self.encoder.qcfg.weight_bits)
        super().upgrade_state_dict_named(state_dict, name)
        prefix = f"{name}." if name else ""
        own = self.state_dict()
        missing = [k for k in own if prefix + k not in state_dict and _is_quantizer_state(self, k)]
        for k in missing:
            state_dict[prefix + k] = own[k].clone()
        if missing:
            logger.info("fullyqt: %d quantizer buffers absent from the checkpoint start fresh",
                        len(missing))


def _is_quantizer_state(model, key):
    module_name = key.rsplit(".", 1)[0]
    try:
        return isinstance(model.get_submodule(module_name), Quantizer)
    except AttributeError:
        return False


# ----- architectures -----

@register_model_architecture("fullyqt_transformer", "fullyqt_transformer")
def fullyqt_base_architecture(args):
    set_quant_defaults(args)
    base_architecture(args)


@register_model_architecture("fullyqt_transformer", "fullyqt_transformer_wmt_en_de")
def fullyqt_transformer_wmt_en_de(args):
    fullyqt_base_architecture(args)


@register_model_architecture("fullyqt_transformer", "fullyqt_transformer_wmt_en_de_big")
def fullyqt_transformer_wmt_en_de_big(args):
    set_quant_defaults(args)
    transformer_wmt_en_de_big(args)


@register_model_architecture("fullyqt_transformer", "fullyqt_transformer_tiny")
def fullyqt_transformer_tiny(args):
    """3+3 layers, d=128, FFN 512, 4 heads: trains on a CPU in minutes."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 128)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 512)
    args.encoder_layers = getattr(args, "encoder_layers", 3)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 3)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    fullyqt_base_architecture(args)
