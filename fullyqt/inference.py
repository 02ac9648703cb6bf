"""One explicit call that readies a trained model for decoding (nothing happens on ``eval()``).

``prepare_for_inference(model, kernels)``: eval mode; ``exact`` / ``fake`` / ``fake64`` set the
arithmetic of every quantized linear; ``int8`` also replaces each linear whose input grid is
known by an ``Int8Linear`` holding only integer codes.  The fullyqt model calls it from fairseq's
``prepare_for_inference_`` (fairseq-generate, fairseq-interactive, ``from_pretrained``).
"""
from torch import nn

from .quant.config import KERNELS
from .quant.linear import QuantLinear


def prepare_for_inference(model: nn.Module, kernels: str = "exact") -> nn.Module:
    if kernels not in KERNELS:
        raise ValueError(f"kernels {kernels!r}: allowed {', '.join(KERNELS)}")
    model.eval()
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m.set_kernels("exact" if kernels == "int8" else kernels)
    if kernels == "int8":
        from .native import to_native_int8

        to_native_int8(model)
    return model
