"""How big a model is: parameters and deployable bytes of a checkpoint, bytes of a file or
folder on disk."""
import math
import os
import re
from typing import Optional

import torch

from ..quant.weights import storage_key


def tree_bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


_MATRIX = re.compile(r"layers\.\d+\.(self_attn|encoder_attn|fc1|fc2)\b.*"
                     r"\.(weight|source\.a|source\.b)$")
_EMBED = re.compile(r"(embed_tokens|output_projection)\.(weight|a|b|source\.a|source\.b)$")


def model_size(checkpoint: str, bits: Optional[int]) -> dict:
    """Parameters and deployable bytes: b-bit weights plus an fp32 (scale, min) per row bucket,
    fp32 biases; float models at 4 bytes a parameter.  Also the numbers held by the FFN and
    attention matrices and by the embeddings and output projection (dense weights or Kronecker
    factors).  Tied tensors count once."""
    state = torch.load(checkpoint, map_location="cpu")["model"]
    seen, params, nbytes = set(), 0, 0.0
    groups = {"ffn_attn_params": 0, "embed_params": 0}
    for name, t in state.items():
        if not t.is_floating_point() or t.dim() == 0 or "_quant" in name \
                or name.endswith((".lo", ".hi", "_float_tensor", ".version")) \
                or ".source.scores." in name or name.startswith("pruner."):
            continue
        key = storage_key(t)
        if key in seen:
            continue
        seen.add(key)
        params += t.numel()
        group = ("ffn_attn_params" if _MATRIX.search(name) else
                 "embed_params" if _EMBED.search(name) else None)
        if group is not None:
            groups[group] += t.numel()
        if bits is None or name.endswith(".bias"):
            nbytes += 4 * t.numel()
        else:
            rows = t.shape[0] if t.dim() > 1 else 1
            nbytes += t.numel() * bits / 8 + 8 * rows
    return {"params": params, "model_bytes": int(math.ceil(nbytes)), **groups}
