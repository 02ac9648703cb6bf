"""``fullyqt_transformer``: fairseq's transformer with every weight and matmul input fake-quantized.

Built through fairseq's hooks (``build_embedding``/``build_encoder``/``build_decoder``,
``build_*_layer``, ``build_fc1``/``build_fc2``, ``build_*_attention``,
``build_output_projection``); LayerNorms, the FFN activation, the position table and the
embedding-sum quantizer are swapped in after the parent constructor.  Parameter names stay those
of the stock transformer, so float checkpoints load and the export writes stock ones.

Once built, every linear layer is handed the quantizer whose output it receives
(``feed_from``), following the data flow of fairseq's encoder and decoder layers (post- or
pre-norm); ``tests/test_wiring.py`` checks each wire against what the layer really receives.
"""
import copy
import logging

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

from ..quant.activation import QuantActivation
from ..quant.attention import QuantMultiheadAttention
from ..quant.config import QuantConfig, QuantOptionError
from ..quant.embedding import QuantEmbedding, QuantSinusoidalPositionalEmbedding
from ..quant.layer_norm import QuantLayerNorm
from ..quant.linear import QuantLinear
from ..quant.padding import PaddingContext
from ..quant.quantizer import ActivationQuantizer
from ..feature import building, current_build, features, set_feature_defaults
from . import epoch_batches

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
            raise QuantOptionError(f"fullyqt_transformer does not support "
                                   f"--{name.replace('_', '-')} (got {value!r})")


class EmbeddingSumQuantizer(ActivationQuantizer):
    """Quantizes token embedding + position (batch-major) after the stack's dropout, sitting in
    fairseq's ``layernorm_embedding`` slot, the one hook applied right after that sum."""

    def __init__(self, qcfg: QuantConfig, pad: PaddingContext, dropout: nn.Module):
        super().__init__(qcfg.act_bits, qcfg.momentum, False, qcfg.start_update,
                         observer=qcfg.act_range)
        self.pad = pad
        self.dropout = dropout

    def forward(self, x, valid=None):
        if valid is None and self.training:
            valid = self.pad.valid_for(x, time_major=False)
        return super().forward(self.dropout(x), valid)


def _embedding_sum_quantizer(stack, cfg, qcfg, pad, dim):
    """The quantizer of the embedding sum; it takes over the stack's dropout (fairseq applies
    it after this slot) so that the first layer's linears receive quantized values."""
    dropout, stack.dropout_module = stack.dropout_module, nn.Identity()
    if cfg.layernorm_embedding:
        return QuantLayerNorm(dim, qcfg=qcfg, pad=pad, time_major=False, dropout=dropout)
    return EmbeddingSumQuantizer(qcfg, pad, dropout)


def _output_quantizer(module):
    """The quantizer of a module's output: itself, a LayerNorm's output quantizer, or None."""
    if module is None or isinstance(module, ActivationQuantizer):
        return module
    return module.output_quant


def _quant_positions(module, qcfg):
    if module is None:
        return None
    return QuantSinusoidalPositionalEmbedding(
        module.weights.size(0) - module.padding_idx - 1, module.embedding_dim,
        module.padding_idx, qcfg=qcfg)


def _layer_config(cfg, stack: str, ffn: int):
    """A copy of ``cfg`` with one layer's FFN size (a compacted model's layers differ)."""
    cfg = copy.deepcopy(cfg)
    getattr(cfg, stack).ffn_embed_dim = ffn
    return cfg


class FullyQTEncoderLayer(TransformerEncoderLayerBase):
    def __init__(self, cfg, qcfg: QuantConfig, pad: PaddingContext, heads=None):
        self.qcfg, self.pad, self.heads = qcfg, pad, heads
        super().__init__(cfg)
        dim = self.embed_dim
        self.self_attn_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.final_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.activation_fn = QuantActivation(cfg.activation_fn, qcfg=qcfg, pad=pad,
                                             dropout=self.activation_dropout_module)
        self.activation_dropout_module = nn.Identity()  # inside activation_fn now

    def build_fc1(self, input_dim, output_dim, q_noise, qn_block_size):
        return QuantLinear(input_dim, output_dim, qcfg=self.qcfg, pad=self.pad)

    def build_fc2(self, input_dim, output_dim, q_noise, qn_block_size):
        return QuantLinear(input_dim, output_dim, qcfg=self.qcfg, pad=self.pad,
                           quantize_output=True)

    def build_self_attention(self, embed_dim, cfg):
        return QuantMultiheadAttention(
            embed_dim, cfg.encoder.attention_heads, qcfg=self.qcfg, pad=self.pad,
            heads=self.heads, dropout=cfg.attention_dropout, self_attention=True)

    def feed_from(self, x_quant):
        """Wire the linears given the quantizer of the layer input; returns the quantizer of
        the layer output (None in pre-norm, where it is a float residual sum)."""
        pre = self.normalize_before
        self_ln = self.self_attn_layer_norm.output_quant
        self.self_attn.feed_from(*[self_ln if pre else x_quant] * 2)
        self.fc1.feed_from(self.final_layer_norm.output_quant if pre else self_ln)
        self.fc2.feed_from(self.activation_fn.quant)
        return None if pre else self.final_layer_norm.output_quant


class FullyQTDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, qcfg: QuantConfig, pad: PaddingContext, no_encoder_attn=False,
                 heads=None, cross_heads=None):
        self.qcfg, self.pad, self.heads, self.cross_heads = qcfg, pad, heads, cross_heads
        super().__init__(cfg, no_encoder_attn)
        dim = self.embed_dim
        self.self_attn_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        if self.encoder_attn_layer_norm is not None:
            self.encoder_attn_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.final_layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=pad)
        self.activation_fn = QuantActivation(cfg.activation_fn, qcfg=qcfg, pad=pad,
                                             dropout=self.activation_dropout_module)
        self.activation_dropout_module = nn.Identity()  # inside activation_fn now

    build_fc1 = FullyQTEncoderLayer.build_fc1
    build_fc2 = FullyQTEncoderLayer.build_fc2

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return QuantMultiheadAttention(
            embed_dim, cfg.decoder.attention_heads, qcfg=self.qcfg, pad=self.pad,
            heads=self.heads, dropout=cfg.attention_dropout, self_attention=True)

    def build_encoder_attention(self, embed_dim, cfg):
        return QuantMultiheadAttention(
            embed_dim, cfg.decoder.attention_heads, qcfg=self.qcfg, pad=self.pad,
            heads=self.cross_heads, kdim=cfg.encoder.embed_dim, vdim=cfg.encoder.embed_dim,
            dropout=cfg.attention_dropout, encoder_decoder_attention=True)

    def feed_from(self, x_quant, encoder_out_quant):
        """As ``FullyQTEncoderLayer.feed_from``, with the encoder output's quantizer for the
        encoder-decoder attention's keys and values."""
        pre = self.normalize_before
        after = self.self_attn_layer_norm.output_quant
        self.self_attn.feed_from(*[after if pre else x_quant] * 2)
        if self.encoder_attn is not None:
            query = self.encoder_attn_layer_norm.output_quant if pre else after
            self.encoder_attn.feed_from(query, encoder_out_quant)
            after = self.encoder_attn_layer_norm.output_quant
        self.fc1.feed_from(self.final_layer_norm.output_quant if pre else after)
        self.fc2.feed_from(self.activation_fn.quant)
        return None if pre else self.final_layer_norm.output_quant


class FullyQTEncoder(TransformerEncoderBase):
    def __init__(self, cfg, qcfg: QuantConfig, dictionary, embed_tokens, shapes=None):
        self.qcfg, self.pad, self.shapes = qcfg, PaddingContext(), shapes
        super().__init__(cfg, dictionary, embed_tokens)
        dim = embed_tokens.embedding_dim
        self.embed_positions = _quant_positions(self.embed_positions, qcfg)
        self.layernorm_embedding = _embedding_sum_quantizer(self, cfg, qcfg, self.pad, dim)
        if self.layer_norm is not None:
            self.layer_norm = QuantLayerNorm(dim, qcfg=qcfg, pad=self.pad)

    def build_encoder_layer(self, cfg):
        if self.shapes is None:
            return FullyQTEncoderLayer(cfg, self.qcfg, self.pad)
        shape = self.shapes.pop(0)  # fairseq builds the layers in order
        return FullyQTEncoderLayer(_layer_config(cfg, "encoder", shape.ffn), self.qcfg,
                                   self.pad, heads=shape.heads)

    def wire(self):
        """Wire every layer; returns the quantizer of the encoder output (or None)."""
        q = _output_quantizer(self.layernorm_embedding)
        for layer in self.layers:
            q = layer.feed_from(q)
        return _output_quantizer(self.layer_norm) if self.layer_norm is not None else q

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens=False,
                token_embeddings=None):
        valid = src_tokens.ne(self.padding_idx) if self.training else None
        with self.pad.tokens(valid):
            return super().forward(src_tokens, src_lengths, return_all_hiddens, token_embeddings)


class FullyQTDecoder(TransformerDecoderBase):
    def __init__(self, cfg, qcfg: QuantConfig, dictionary, embed_tokens, no_encoder_attn=False,
                 shapes=None):
        self.qcfg, self.pad, self.shapes = qcfg, PaddingContext(), shapes
        super().__init__(cfg, dictionary, embed_tokens, no_encoder_attn=no_encoder_attn)
        dim = self.embed_dim
        self.embed_positions = _quant_positions(self.embed_positions, qcfg)
        self.layernorm_embedding = _embedding_sum_quantizer(self, cfg, qcfg, self.pad, dim)
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
        if self.shapes is None:
            return FullyQTDecoderLayer(cfg, self.qcfg, self.pad, no_encoder_attn)
        shape = self.shapes.pop(0)
        return FullyQTDecoderLayer(_layer_config(cfg, "decoder", shape.ffn), self.qcfg, self.pad,
                                   no_encoder_attn, heads=shape.heads,
                                   cross_heads=shape.cross_heads)

    def wire(self, encoder_out_quant):
        """Wire every layer and the output projection (``project_in_dim`` stays unwired: it reads
        the scaled embedding, which no activation quantizer produced)."""
        q = _output_quantizer(self.layernorm_embedding)
        for layer in self.layers:
            q = layer.feed_from(q, encoder_out_quant)
        if self.layer_norm is not None:
            q = _output_quantizer(self.layer_norm)
        for proj in (self.project_out_dim, self.output_projection):
            if proj is not None:
                proj.feed_from(proj.input_quant or q)
                q = None  # a projection's output is float

    def stateful_modules(self):
        """The modules that keep decoding state: the layers' attentions (``reorder_incremental_
        state`` of the decoder itself is fairseq's no-op)."""
        for layer in self.layers:
            for attn in (layer.self_attn, layer.encoder_attn):
                if attn is not None:
                    yield attn

    def reorder_incremental_state_scripting(self, incremental_state, new_order):
        """Reorders what ``stateful_modules`` keep.  fairseq's version asks every module of the
        tree (hundreds of quantizers here) whether it keeps state, at every decoding step."""
        for module in self.stateful_modules():
            result = module.reorder_incremental_state(incremental_state, new_order)
            if result is not None:
                incremental_state = result

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
        for feature in features():
            feature.add_args(parser)

    @classmethod
    def build_model(cls, args, task):
        """fairseq's build, with every registered feature's config read once, before anything
        is built (a bad option fails here, in one line); the task's training batches are made
        per epoch (``epoch_batches.py``: an exact resume)."""
        base_architecture(args)
        check_supported(args)
        epoch_batches.rebuild_each_epoch(task)
        with building(args):
            return super().build_model(args, task)

    @classmethod
    def build_embedding(cls, args, dictionary, embed_dim, path=None):
        emb = QuantEmbedding(len(dictionary), embed_dim, dictionary.pad(),
                             qcfg=current_build(args)["quant"])
        nn.init.normal_(emb.weight, mean=0, std=embed_dim**-0.5)
        nn.init.constant_(emb.weight[dictionary.pad()], 0)
        return emb

    @classmethod
    def build_encoder(cls, args, src_dict, embed_tokens):
        build = current_build(args)
        shapes = build.layer_shapes()
        return FullyQTEncoder(TransformerConfig.from_namespace(args), build["quant"],
                              src_dict, embed_tokens,
                              shapes=None if shapes is None else list(shapes.encoder))

    @classmethod
    def build_decoder(cls, args, tgt_dict, embed_tokens):
        build = current_build(args)
        shapes = build.layer_shapes()
        return FullyQTDecoder(TransformerConfig.from_namespace(args), build["quant"],
                              tgt_dict, embed_tokens,
                              no_encoder_attn=getattr(args, "no_cross_attention", False),
                              shapes=None if shapes is None else list(shapes.decoder))

    def __init__(self, args, encoder, decoder):
        super().__init__(args, encoder, decoder)
        decoder.wire(encoder.wire())
        self.build = current_build(args)
        for feature, cfg in self.build:
            feature.attach(self, cfg)

    def forward(self, src_tokens, src_lengths, prev_output_tokens, **kwargs):
        """The transformer's forward; in training, run through every feature's
        ``training_forward`` (a pruning penalty, byte-coded saved activations, range sync)."""
        parent = super().forward
        if not self.training:
            return parent(src_tokens, src_lengths, prev_output_tokens, **kwargs)
        return self.build.training_forward(
            self, lambda: parent(src_tokens, src_lengths, prev_output_tokens, **kwargs),
            prev_output_tokens)

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        for feature, cfg in self.build:
            feature.set_num_updates(self, cfg, num_updates)

    def prepare_for_inference_(self, cfg):
        """fairseq-generate, fairseq-interactive and ``from_pretrained`` call this once the model
        is loaded and on its device: eval mode, then each feature's preparation (the
        ``--quant-kernels`` arithmetic)."""
        super().prepare_for_inference_(cfg)
        for feature, fcfg in self.build:
            feature.prepare_for_inference(self, fcfg)

    def upgrade_state_dict_named(self, state_dict, name):
        """Each feature reads its saved forms (an integer export), fairseq upgrades older names,
        each feature converts or refuses what the checkpoint holds; the state a feature adds
        that the checkpoint lacks (a float model to quantize or prune) starts as built."""
        prefix = f"{name}." if name else ""
        for feature, cfg in self.build:
            feature.read_state(self, cfg, state_dict, prefix)
        super().upgrade_state_dict_named(state_dict, name)
        for feature, cfg in self.build:
            feature.upgrade_state(self, cfg, state_dict, prefix)
        own = self.state_dict()
        missing = [k for k in own if prefix + k not in state_dict and self._starts_fresh(k)]
        for k in missing:
            state_dict[prefix + k] = own[k].clone()
        if missing:  # a float model's idle quantizers are not news
            quantizes = self.encoder.qcfg.weight_bits is not None
            logger.log(logging.INFO if quantizes else logging.DEBUG,
                       "fullyqt: %d tensors of quantizer or pruning state are not in the "
                       "checkpoint (a model trained without them, now fine-tuned with them): "
                       "they start as built", len(missing))

    def _starts_fresh(self, key):
        try:
            module = self.get_submodule(key.rsplit(".", 1)[0])
        except AttributeError:
            return False
        return any(feature.starts_fresh(module) for feature, _ in self.build)


# ----- architectures -----

@register_model_architecture("fullyqt_transformer", "fullyqt_transformer")
def fullyqt_base_architecture(args):
    set_feature_defaults(args)
    base_architecture(args)


@register_model_architecture("fullyqt_transformer", "fullyqt_transformer_wmt_en_de")
def fullyqt_transformer_wmt_en_de(args):
    fullyqt_base_architecture(args)


@register_model_architecture("fullyqt_transformer", "fullyqt_transformer_wmt_en_de_big")
def fullyqt_transformer_wmt_en_de_big(args):
    set_feature_defaults(args)
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
