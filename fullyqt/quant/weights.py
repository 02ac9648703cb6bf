"""The quantized tensors of a model, found by asking each module (``quantized_parameters`` and
``dequantized_weights``): what the integer export packs, the stock export writes and the
coverage listing reads ranges from.  A module with a new kind of weight answers for itself."""
from typing import Dict, Tuple

import torch
from torch import nn


def storage_key(t: torch.Tensor) -> tuple:
    """Equal for the names of one tied tensor (shared storage and shape)."""
    return t.untyped_storage().data_ptr(), tuple(t.shape)


def _modules(model: nn.Module):
    for name, module in model.named_modules(remove_duplicate=False):
        if hasattr(module, "quantized_parameters"):
            yield (f"{name}." if name else ""), module


def quantized_parameters(model: nn.Module) -> Dict[str, Tuple[torch.Tensor, nn.Module]]:
    """``{full name: (tensor, its weight quantizer)}``; tied tensors appear under every name."""
    return {prefix + k: v for prefix, m in _modules(model)
            for k, v in m.quantized_parameters().items()}


@torch.no_grad()
def dequantized_weights(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{full name: float tensor}``: the weights an unquantized model of the same shape holds."""
    return {prefix + k: v for prefix, m in _modules(model)
            for k, v in m.dequantized_weights().items()}
