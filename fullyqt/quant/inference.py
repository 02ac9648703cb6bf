"""One explicit call that readies a trained model for decoding (nothing happens on ``eval()``).

``prepare_for_inference(model, kernels)``: eval mode; ``exact`` / ``fake`` / ``fake64`` set the
arithmetic of every quantized linear; ``int8`` also replaces each linear whose input grid is
known by an ``Int8Linear`` holding only integer codes.  The fullyqt model calls it from fairseq's
``prepare_for_inference_`` (fairseq-generate, fairseq-interactive, ``from_pretrained``).
"""
from torch import nn

from .attention import QuantMultiheadAttention
from .config import KERNELS
from .linear import QuantLinear


def set_kernels(model: nn.Module, kernels: str):
    """The arithmetic of every quantized linear and attention product; ``int8`` evaluates
    exactly (the same numbers) until ``prepare_for_inference`` swaps the linears."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels {kernels!r}: allowed {', '.join(KERNELS)}")
    for m in model.modules():
        if isinstance(m, (QuantLinear, QuantMultiheadAttention)):
            m.set_kernels("exact" if kernels == "int8" else kernels)


def prepare_for_inference(model: nn.Module, kernels: str = "exact") -> nn.Module:
    model.eval()
    set_kernels(model, kernels)
    if kernels == "int8":
        from .native import to_native_int8

        to_native_int8(model)
    return model
