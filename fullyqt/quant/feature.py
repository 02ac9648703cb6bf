"""Quantization as a feature of the fullyqt transformer: its options, the inference arithmetic,
byte-coded saved activations in training, integer exports read back on load."""
import logging

import torch

from ..feature import Feature, register_feature
from ..errors import UserError
from .inference import prepare_for_inference, set_kernels
from .config import QuantConfig, add_quant_args, set_quant_defaults
from .packed_state import is_bundled, is_packed, unbundle, unpack_state
from .quantizer import Quantizer
from .saved_codes import packing

logger = logging.getLogger(__name__)

INTEGER_FORMATS = ("int8", "int6", "int4")
# What a float model of the same architecture is built with (its weights arrive dequantized).
_FLOAT = {"no_quant": True, "quant_kernels": "fake", "quant_bits": None,
          "quant_weight_bits": None, "quant_act_bits": None,
          "quant_softmax_denominator_bits": None}


class Quantization(Feature):
    name = "quant"
    order = 0

    def add_args(self, parser):
        add_quant_args(parser)

    def set_defaults(self, args):
        set_quant_defaults(args)

    def config(self, args) -> QuantConfig:
        return QuantConfig.from_args(args)

    def attach(self, model, cfg: QuantConfig):
        set_kernels(model, cfg.kernels)
        model.saved_codes = cfg.saved_codes  # a switch: set False to keep floats for backward

    def training_forward(self, model, cfg: QuantConfig, forward, prev_output_tokens):
        with packing(model.saved_codes and model.training and torch.is_grad_enabled()):
            return forward()

    def prepare_for_inference(self, model, cfg: QuantConfig):
        prepare_for_inference(model, cfg.kernels)

    def read_state(self, model, cfg: QuantConfig, state_dict, prefix):
        if is_bundled(state_dict):  # an export's tensors, stored as one flat tensor per dtype
            unbundle(state_dict)
        if is_packed(state_dict):
            unpack_state(state_dict, cfg.weight_bits)

    def starts_fresh(self, module) -> bool:
        return isinstance(module, Quantizer)

    def check_export(self, args, fmt, checkpoint):
        if fmt != "float16" and fmt not in INTEGER_FORMATS:
            return
        bits = QuantConfig.from_args(args).weight_bits
        if fmt == "float16" and bits:
            raise UserError(f"--format float16: the model was trained quantization-aware "
                            f"({bits}-bit weights); ship it as --format int8/int6/int4, which "
                            "keeps its trained grids")
        if fmt in INTEGER_FORMATS and bits != int(fmt[3:]):
            raise UserError(f"--format {fmt}: the model was trained with {bits or 'no'}-bit "
                            "weights; use " + (f"--format int{bits}" if bits in (4, 6, 8)
                                               else "--format fairseq"))

    def export_options(self, args, fmt) -> dict:
        # an integer export decodes with integer kernels unless --model-overrides says otherwise
        return {"quant_kernels": "int8"} if fmt in INTEGER_FORMATS else {}

    def float_options(self, args) -> dict:
        return dict(_FLOAT)


register_feature(Quantization())
