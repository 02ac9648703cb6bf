"""Kronecker factors as a feature of the fullyqt transformer: its options, the factorization of
the built model, dense checkpoints turned into their nearest factors on load."""
import logging

from ..errors import UserError
from ..feature import Feature, register_feature
from .attach import attach_kronecker, convert_dense_state, holds_factors
from .options import KronConfig, add_kron_args, set_kron_defaults

logger = logging.getLogger(__name__)


OPTIONS = ("kron_layers", "kron_rank", "kron_factor", "kron_shapes")


def inherit_factorization(args):
    """Fine-tuning a factorized checkpoint (Kronecker's second stage, or a later pruning or
    quantization step) with no ``--kron-*`` option: the checkpoint's factorization, recorded in
    ``args`` so that this run's checkpoints carry it too."""
    if getattr(args, "kron_layers", None) is not None or not getattr(
            args, "finetune_from_model", None):
        return
    from ..checkpoint import finetune_args

    saved = finetune_args(args)
    if getattr(saved, "kron_layers", None) is None:
        return
    for name in OPTIONS:
        setattr(args, name, getattr(saved, name, None))
    logger.info("kron: factorization of %s taken from it: %s", args.finetune_from_model,
                " ".join(f"--{n.replace('_', '-')} {getattr(saved, n)}" for n in OPTIONS
                         if getattr(saved, n, None) is not None))


class Kronecker(Feature):
    name = "kron"
    order = 10  # before pruning, which leaves factorized matrices as they are

    def add_args(self, parser):
        add_kron_args(parser)

    def set_defaults(self, args):
        set_kron_defaults(args)

    def config(self, args):
        inherit_factorization(args)
        return KronConfig.from_args(args)

    def attach(self, model, cfg):
        model.factorized = attach_kronecker(model, cfg, model.encoder.qcfg) if cfg else []

    def upgrade_state(self, model, cfg, state_dict, prefix):
        if cfg is None and holds_factors(state_dict):
            raise UserError("the checkpoint holds Kronecker factors but the model is built "
                            "without --kron-layers: pass the --kron-* options it was trained "
                            "with")
        convert_dense_state(model, state_dict, prefix)

    def check_export(self, args, fmt, checkpoint):
        if getattr(args, "kron_layers", None) and fmt in ("fairseq", "ctranslate2"):
            logger.warning("fullyqt-export: --format %s multiplies the Kronecker factors out "
                           "into dense matrices (as big as a dense model's); the int8/int6/int4 "
                           "export of a quantized model and the float16 one of a float model "
                           "keep them", fmt)

    def float_options(self, args) -> dict:
        # no factors, and none inherited again from the checkpoint the model was fine-tuned from
        return {"kron_layers": None, "kron_factor": None, "kron_shapes": None,
                "finetune_from_model": None}


register_feature(Kronecker())
