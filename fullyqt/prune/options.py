"""Pruning options: command-line flags, validation, and the config the pruner reads."""
import math
from dataclasses import dataclass
from typing import Optional

from ..errors import checked_action, integer, one_of, parse_number
from ..feature import option_group
from .blocks import BlockShape, PruneOptionError
from .schedule import Schedule

METHODS = ("sigmoid", "topk")
SCORE_INITS = ("zero", "magnitude")
TOPK_SCOPES = ("matrix", "stack", "ffn-stack")
_DEFAULTS = (("prune_method", None), ("prune_attn_block", "32x32"), ("prune_ffn_block", "row"),
             ("prune_threshold", 0.1), ("prune_lambda", 10.0), ("prune_density", None),
             ("prune_warmup_updates", None), ("prune_cooldown_updates", None),
             ("prune_score_lr", 1e-2), ("prune_score_init", "zero"),
             ("prune_topk_scope", "matrix"), ("prune_decoder_density", None))


_method, _score_init, _topk_scope = (one_of(allowed, PruneOptionError)
                                     for allowed in (METHODS, SCORE_INITS, TOPK_SCOPES))


def _open_fraction(option, value):
    return parse_number(option, value, float, lambda x: 0 < x < 1, "a number in (0, 1)",
                        PruneOptionError)


def _density(option, value):
    return parse_number(option, value, float, lambda x: 0 < x <= 1, "a number in (0, 1]",
                        PruneOptionError)


def _non_negative(option, value):
    return parse_number(option, value, float, lambda x: 0 <= x < math.inf, "a number >= 0",
                        PruneOptionError)


def _positive(option, value):
    return parse_number(option, value, float, lambda x: 0 < x < math.inf, "a number > 0",
                        PruneOptionError)


def _updates(option, value):
    return parse_number(option, value, integer, lambda n: n >= 0, "an integer >= 0",
                        PruneOptionError)


def _attn_block(option, value):
    return str(BlockShape.parse(option, value, allow_head=True))


def _ffn_block(option, value):
    return str(BlockShape.parse(option, value, allow_row=True))


def add_prune_args(parser):
    g = option_group(parser, "fullyqt block movement pruning")
    g.add_argument("--prune-method", action=checked_action(_method), metavar="{sigmoid,topk}",
                   help="learn block masks: sigmoid (mask = sigmoid(score) > threshold, an L1 "
                        "penalty sets the density) or topk (keep the top --prune-density of the "
                        "blocks of each matrix); default off")
    g.add_argument("--prune-attn-block", action=checked_action(_attn_block), metavar="RxC|head",
                   help="block of the Q, K, V and output projections of every attention "
                        "(default 32x32), or head: one score per head, shared by its Q, K, V rows "
                        "and output-projection columns, so whole heads go")
    g.add_argument("--prune-ffn-block", action=checked_action(_ffn_block), metavar="row|RxC",
                   help="row: one score per FFN unit, shared by its fc1 row and fc2 column (the "
                        "paper's hybrid; the default), or RxC blocks in fc1 and fc2")
    g.add_argument("--prune-threshold", action=checked_action(_open_fraction), metavar="TAU",
                   help="sigmoid: final threshold on sigmoid(score) (default 0.1)")
    g.add_argument("--prune-lambda", action=checked_action(_non_negative), metavar="L",
                   help="sigmoid: final weight of the L1 penalty on sigmoid(scores), ramped with "
                        "the threshold (default 10)")
    g.add_argument("--prune-density", action=checked_action(_density), metavar="D",
                   help="topk: share of the blocks kept at the end (required with topk)")
    g.add_argument("--prune-decoder-density", action=checked_action(_density), metavar="D",
                   help="topk: share of the decoder's blocks kept at the end, where "
                        "--prune-density then sets the encoder's: a decoder runs once per "
                        "output token, an encoder once per sentence, so a thinner decoder buys "
                        "more decoding speed per parameter removed (default: --prune-density)")
    g.add_argument("--prune-warmup-updates", action=checked_action(_updates), metavar="N",
                   help="updates before pruning starts (default: --warmup-updates)")
    g.add_argument("--prune-cooldown-updates", action=checked_action(_updates), metavar="N",
                   help="updates at the final threshold / density before --max-update "
                        "(default: a fifth of --max-update)")
    g.add_argument("--prune-score-lr", action=checked_action(_positive), metavar="LR",
                   help="learning rate of the block scores, which must move much faster than "
                        "the weights (default 1e-2, the paper's)")
    g.add_argument("--prune-score-init", action=checked_action(_score_init),
                   metavar="{zero,magnitude}",
                   help="zero: every score starts at 0 and the masks follow the weights' movement "
                        "alone (the paper, default); magnitude: each matrix's scores start at the "
                        "z-scores of its blocks' L2 norms (pooled as --prune-topk-scope "
                        "ranks them), for pruning a trained model that is also its "
                        "own teacher (no movement to read at first)")
    g.add_argument("--prune-topk-scope", action=checked_action(_topk_scope),
                   metavar="{matrix,stack,ffn-stack}",
                   help="topk: keep the top --prune-density of the blocks of each matrix "
                        "(default), or of all the attention blocks (FFN blocks) of the encoder, "
                        "and of the decoder, pooled: layers that matter keep more heads and units "
                        "(each attention keeps its best head and each FFN its best unit, the "
                        "rest of the share goes by rank); ffn-stack: FFN units pooled per stack, "
                        "attention per matrix, so that every attention keeps the same number of "
                        "heads, which CTranslate2 holds without padding")
    g.add_argument("--prune-compact-shapes", metavar="JSON",
                   help="per-layer head counts and FFN sizes of a compacted model (written by "
                        "fullyqt-export --format compact; read from the checkpoint that "
                        "--finetune-from-model names)")


def set_prune_defaults(args):
    for name, default in _DEFAULTS:
        if getattr(args, name, None) is None:
            setattr(args, name, default)


def _lr(args) -> float:
    lr = getattr(args, "lr", None)
    lr = lr[0] if isinstance(lr, (list, tuple)) else lr
    return float(lr) if lr else 0.0


@dataclass(frozen=True)
class PruneConfig:
    method: str
    attn_block: BlockShape
    ffn_block: BlockShape
    threshold: float
    penalty: float
    density: Optional[float]
    schedule: Schedule
    score_scale: float  # the scores' learning rate over the weights'
    score_init: str = "zero"
    topk_scope: str = "matrix"
    decoder_density: Optional[float] = None

    def final_density(self, stack: str) -> Optional[float]:
        """The density top-k reaches in ``stack`` (encoder or decoder)."""
        if stack == "decoder" and self.decoder_density is not None:
            return self.decoder_density
        return self.density

    @classmethod
    def from_args(cls, args) -> Optional["PruneConfig"]:
        """The validated config, or None when pruning is off (raises PruneOptionError)."""
        set_prune_defaults(args)
        if args.prune_method is None:
            given = [f"--{n.replace('_', '-')}" for n in ("prune_density",
                                                          "prune_decoder_density")
                     if getattr(args, n) is not None]
            if given and not getattr(args, "prune_compact_shapes", None):  # compact: pruned
                raise PruneOptionError(f"{given[0]} {getattr(args, given[0][2:].replace('-', '_'))}"
                                       " applies to --prune-method topk, which is not given")
            return None
        method = _method("--prune-method", args.prune_method)
        if method == "topk" and args.prune_density is None:
            raise PruneOptionError("--prune-method topk needs --prune-density D (the share of "
                                   "blocks kept at the end, in (0, 1])")
        if method == "sigmoid" and args.prune_density is not None:
            raise PruneOptionError(f"--prune-density {args.prune_density} applies to "
                                   "--prune-method topk; with sigmoid the L1 penalty "
                                   "(--prune-lambda) sets the density")
        if args.prune_decoder_density is not None and method != "topk":
            raise PruneOptionError(f"--prune-decoder-density {args.prune_decoder_density} "
                                   f"applies to --prune-method topk; got --prune-method {method}")
        scope = _topk_scope("--prune-topk-scope", args.prune_topk_scope)
        if scope != "matrix" and method != "topk":
            raise PruneOptionError(f"--prune-topk-scope {scope} applies to --prune-method topk; "
                                   f"got --prune-method {method}")
        scaled = [f"--{n.replace('_', '-')}" for n in ("fp16", "memory_efficient_fp16", "amp")
                  if getattr(args, n, False)]
        if method == "sigmoid" and scaled and (args.prune_lambda or 0) > 0:
            raise PruneOptionError(f"--prune-method sigmoid with {scaled[0]}: the loss scaling "
                                   "does not reach the L1 penalty (it is added in backward); "
                                   "use --bf16 or float32, or --prune-method topk")
        total = getattr(args, "max_update", 0) or 0
        if total <= 0:
            raise PruneOptionError("--prune-method needs --max-update N: the pruning schedule "
                                   "ends there")
        warmup = args.prune_warmup_updates
        warmup = (getattr(args, "warmup_updates", 0) or 0) if warmup is None else warmup
        cooldown = args.prune_cooldown_updates
        cooldown = total // 5 if cooldown is None else cooldown
        if warmup + cooldown >= total:
            raise PruneOptionError(f"--prune-warmup-updates {warmup} + --prune-cooldown-updates "
                                   f"{cooldown} leave no ramp before --max-update {total}; "
                                   "their sum must be smaller")
        lr = _lr(args)
        return cls(method,
                   BlockShape.parse("--prune-attn-block", args.prune_attn_block, allow_head=True),
                   BlockShape.parse("--prune-ffn-block", args.prune_ffn_block, allow_row=True),
                   _open_fraction("--prune-threshold", args.prune_threshold),
                   _non_negative("--prune-lambda", args.prune_lambda),
                   None if args.prune_density is None else _density("--prune-density",
                                                                     args.prune_density),
                   Schedule(warmup, cooldown, total),
                   _positive("--prune-score-lr", args.prune_score_lr) / lr if lr else 1.0,
                   _score_init("--prune-score-init", args.prune_score_init), scope,
                   None if args.prune_decoder_density is None
                   else _density("--prune-decoder-density", args.prune_decoder_density))
