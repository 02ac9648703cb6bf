"""Block pruning as a feature of the fullyqt transformer: its options, the masks attached to the
built model and their penalty in training, per-layer shapes of a compacted model, and the
``compact`` export that removes what the masks dropped."""
import logging
from typing import NamedTuple, Optional

from ..errors import UserError
from ..feature import Feature, register_feature
from .attach import attach_pruning, symmetric_weights
from .options import PruneConfig, add_prune_args, set_prune_defaults
from .pruner import Pruner
from .scores import BlockScores
from .shapes import CompactShapes, compact_shapes
from .structure import cut_to_the_floor, describe

logger = logging.getLogger(__name__)


class PruneSettings(NamedTuple):
    method: Optional[PruneConfig]  # None: no masks are learned
    shapes: Optional[CompactShapes]  # per-layer shapes of a compacted model


class Pruning(Feature):
    name = "prune"
    order = 20

    def add_args(self, parser):
        add_prune_args(parser)

    def set_defaults(self, args):
        set_prune_defaults(args)

    def config(self, args) -> PruneSettings:
        return PruneSettings(PruneConfig.from_args(args), compact_shapes(args))

    def layer_shapes(self, cfg: PruneSettings):
        return cfg.shapes

    def attach(self, model, cfg: PruneSettings):
        model.pruner = attach_pruning(model, cfg.method) if cfg.method is not None else None
        if cfg.shapes is not None:
            symmetric_weights(model)

    def training_forward(self, model, cfg, forward, prev_output_tokens):
        """While pruning trains, the output also carries the L1 penalty's gradient (so it applies
        under any criterion), weighted by the sample size the criterion divides by."""
        if model.pruner is None or not model.training:
            return forward()
        model.pruner.start_scores()
        out = forward()
        count = prev_output_tokens.new_tensor(prev_output_tokens.size(0)) if getattr(
            model.args, "sentence_avg", False) else prev_output_tokens.ne(
            model.decoder.padding_idx).sum()
        return (model.pruner.add_penalty(out[0], count),) + tuple(out[1:])

    def set_num_updates(self, model, cfg, num_updates):
        interval = max(1, getattr(model.args, "log_interval", 100) or 100)
        if (model.pruner is not None and model.training and num_updates > 0
                and num_updates % interval == 0):
            logger.info("prune: update %d %s | %s", num_updates, model.pruner.summary(),
                        describe(model))
            floor = cut_to_the_floor(model)
            if floor:
                logger.warning("prune: cut to the floor: %s; a higher density keeps more",
                               ", ".join(floor))

    def upgrade_state(self, model, cfg, state_dict, prefix):
        if model.pruner is None and any(k.endswith(".source.scores.raw") for k in state_dict):
            raise UserError("the checkpoint holds pruning masks but the model is built without "
                            "--prune-method: export it with fullyqt-export --format compact, "
                            "or pass the --prune-* options it was trained with")
        if model.pruner is not None:
            model.pruner.upgrade_state(state_dict, f"{prefix}pruner.")

    def starts_fresh(self, module) -> bool:
        return isinstance(module, (BlockScores, Pruner))

    def export_formats(self):
        return {"compact": write_compact}

    def check_export(self, args, fmt, checkpoint):
        if getattr(args, "prune_compact_shapes", None) and fmt == "fairseq":
            raise UserError(f"--format fairseq: {checkpoint} is a compacted model with per-layer "
                            "head counts and FFN sizes, which a stock fairseq transformer cannot "
                            "hold; use --format int8/int6/int4 or ctranslate2")


def write_compact(checkpoint, state, args, out, data):
    """The masked model with its pruned heads and FFN units removed, as a checkpoint whose
    arguments carry the per-layer shapes."""
    from ..checkpoint import atomic_save, load_model, with_model_args
    from .compact import compact_state

    if not getattr(args, "prune_method", None):
        raise UserError(f"--format compact: {checkpoint} was not trained with --prune-method; "
                        "there is nothing to remove")
    if getattr(args, "quant_weight_buckets", "row") != "row":
        raise UserError("--format compact: needs one weight range per row (the model was "
                        f"trained with --quant-weight-buckets {args.quant_weight_buckets}): "
                        "removing heads would move a per-tensor range")
    model = load_model(checkpoint, data)
    compact, shapes = compact_state(model)
    full = [(getattr(args, f"{stack}_attention_heads"), getattr(args, f"{stack}_ffn_embed_dim"))
            for stack, layers in (("encoder", shapes.encoder), ("decoder", shapes.decoder))
            for _ in layers]
    kept = [(s.heads, s.ffn) for s in shapes.encoder + shapes.decoder]
    if kept == full and all(s.cross_heads in (None, args.decoder_attention_heads)
                            for s in shapes.decoder):
        logger.warning("fullyqt-export: --format compact: %s's masks removed no head and no "
                       "FFN unit: the compact model is as large as the dense one (did pruning "
                       "run? its log shows the density reached)", checkpoint)
    floor = cut_to_the_floor(model)
    if floor:
        logger.warning("fullyqt-export: --format compact: cut to the floor: %s (where nothing "
                       "survived, one head or unit whose output is zero is kept)",
                       ", ".join(floor))
    saved = {k: v for k, v in state.items() if k == "extra_state"}
    saved.update(with_model_args(state, prune_method=None,
                                 prune_compact_shapes=shapes.to_json()))
    saved.update(model=compact, last_optimizer_state=None, optimizer_history=[
        {**state["optimizer_history"][-1], "num_updates":
         state["optimizer_history"][-1].get("num_updates", 0)}])
    atomic_save(saved, out)


def shapes_options(shapes: CompactShapes) -> dict:
    """The options that build a model of these per-layer shapes."""
    return {"prune_compact_shapes": shapes.to_json()}


register_feature(Pruning())
