"""Put block-masked weights into every attention projection and FFN matrix of a transformer
(but those held in another form, Kronecker factors: pruning leaves them as they are)."""
import logging

from ..quant.weight_source import DenseWeight
from .blocks import BlockShape
from .masked_weight import BlockMaskedWeight
from .options import PruneConfig
from .pruner import Pruner
from .scores import BlockScores
from .structure import MODULE, PROJECTIONS, attentions, matrices

logger = logging.getLogger(__name__)


def prunable(layer) -> bool:
    """A matrix pruning applies to: one held as a dense weight (masked or not yet)."""
    return isinstance(layer.source, (DenseWeight, BlockMaskedWeight))


def _tiling(block: BlockShape, layer, label):
    rows, cols = block.tiles((layer.out_features, layer.in_features), label)
    return (rows, cols), (layer.out_features // rows, layer.in_features // cols)


def _mask(pruner, group, label, layer, block, gate_from=None):
    if not prunable(layer):
        return
    if gate_from is not None and not prunable(gate_from):
        gate_from = None
    tiles, size = _tiling(block, layer, label)
    scores = BlockScores(tiles, pruner.pcfg.score_scale)
    layer.source = BlockMaskedWeight(scores, size, pruner, gate_from=gate_from)
    pruner.register(group, label, layer, scores)


def _mask_ffn(pruner, label, layer, block: BlockShape):
    fc1, fc2 = layer.fc1, layer.fc2
    if not (prunable(fc1) and prunable(fc2)):
        return
    if block.cols is not None:
        _mask(pruner, "ffn", f"{label}.fc1", fc1, block)
        _mask(pruner, "ffn", f"{label}.fc2", fc2, block, gate_from=fc1)
        return
    scores = BlockScores((fc1.out_features, 1), pruner.pcfg.score_scale)  # one per unit
    fc1.source = BlockMaskedWeight(scores, (1, fc1.in_features), pruner)
    fc2.source = BlockMaskedWeight(scores, (fc2.out_features, 1), pruner, owns_scores=False,
                                   transpose=True)
    pruner.register("ffn", f"{label}.fc1", fc1, scores)
    pruner.register("ffn", f"{label}.fc2", fc2)


def _mask_heads(pruner, label, attn):
    """One score per head: its Q, K, V rows and its output-projection columns (V owns it)."""
    projections = [getattr(attn, name) for name in PROJECTIONS]
    if not all(prunable(p) for p in projections):
        return
    scores = BlockScores((attn.num_heads, 1), pruner.pcfg.score_scale)
    for name, proj in zip(PROJECTIONS, projections):
        owner = name == "v_proj"
        if name == "out_proj":
            proj.source = BlockMaskedWeight(scores, (proj.out_features, attn.head_dim), pruner,
                                            owns_scores=False, transpose=True)
        else:
            proj.source = BlockMaskedWeight(scores, (attn.head_dim, proj.in_features), pruner,
                                            owns_scores=owner)
        pruner.register("attn", f"{label}.{name}", proj, scores if owner else None)


def symmetric_weights(model):
    """Symmetric weight grids (0.0 exact) on every matrix pruning applies to: a masked model and
    the compact model made from it quantize alike."""
    for _, _, matrix in matrices(model):
        matrix.weight_quant.symmetric = prunable(matrix)


def attach_pruning(model, pcfg: PruneConfig) -> Pruner:
    """A ``Pruner`` for ``model`` (to be set as its child); raises PruneOptionError for a block
    shape that does not divide a matrix."""
    pruner = Pruner(pcfg)
    for stack, layers in (("encoder", model.encoder.layers), ("decoder", model.decoder.layers)):
        for i, layer in enumerate(layers):
            for kind, attn in attentions(layer):
                if pcfg.attn_block.head:
                    _mask_heads(pruner, f"{stack}.layers.{i}.{MODULE[kind]}", attn)
                    continue
                for name in PROJECTIONS:
                    label = f"{stack}.layers.{i}.{MODULE[kind]}.{name}"
                    _mask(pruner, "attn", label, getattr(attn, name), pcfg.attn_block,
                          gate_from=attn.v_proj if name == "out_proj" else None)
            _mask_ffn(pruner, f"{stack}.layers.{i}", layer, pcfg.ffn_block)
    skipped = sum(not prunable(m) for _, _, m in matrices(model))
    if skipped:
        logger.info("prune: %d matrices held as Kronecker factors are not pruned", skipped)
    symmetric_weights(model)
    return pruner
