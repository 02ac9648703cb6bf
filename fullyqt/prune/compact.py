"""Compaction: a masked model becomes a smaller dense one with per-layer head counts and FFN sizes.

A head whose output-projection columns are all pruned, and an FFN unit whose fc2 column is
pruned, contribute exactly nothing: they are sliced out (Q, K, V rows and output columns; fc1
rows and fc2 columns).  What stays keeps its masked values, so partly pruned blocks stay zero
until a fine-tune fills them.  Weight grids are symmetric and per row: slicing zeros out of a row
leaves its grid, hence its codes, as they were, and the compact model computes what the masked
one did (bit for bit in ``exact`` mode).  A layer keeps at least one head and one unit, dead or
not (its output columns are zero), so that no matrix is empty.
"""
from typing import Dict, Tuple

import torch

from .attach import prunable
from .shapes import CompactShapes, LayerShape
from .structure import PROJECTIONS, attentions, heads_alive, units_alive


def _kept(alive: torch.Tensor) -> torch.Tensor:
    idx = alive.nonzero().flatten()
    return idx if idx.numel() else torch.zeros(1, dtype=torch.long)


def _weight(layer) -> torch.Tensor:
    source = layer.source
    return (source.masked(layer) if hasattr(source, "masked") else layer.weight).detach()


def _slice_attention(out: Dict[str, torch.Tensor], prefix: str, attn) -> int:
    if not all(prunable(getattr(attn, p)) for p in PROJECTIONS):
        return attn.num_heads  # factorized: pruning left it whole
    keep = _kept(heads_alive(attn))
    cols = (keep[:, None] * attn.head_dim + torch.arange(attn.head_dim)).flatten()
    for name in ("q_proj", "k_proj", "v_proj"):
        proj = getattr(attn, name)
        out[f"{prefix}.{name}.weight"] = _weight(proj)[cols].clone()
        out[f"{prefix}.{name}.bias"] = proj.bias.detach()[cols].clone()
    out[f"{prefix}.out_proj.weight"] = _weight(attn.out_proj)[:, cols].clone()
    return keep.numel()


def _slice_ffn(out, prefix, layer) -> int:
    if not (prunable(layer.fc1) and prunable(layer.fc2)):
        return layer.fc1.out_features
    keep = _kept(units_alive(layer))
    out[f"{prefix}.fc1.weight"] = _weight(layer.fc1)[keep].clone()
    out[f"{prefix}.fc1.bias"] = layer.fc1.bias.detach()[keep].clone()
    out[f"{prefix}.fc2.weight"] = _weight(layer.fc2)[:, keep].clone()
    return keep.numel()


def _is_pruning_state(name: str) -> bool:
    return name.startswith("pruner.") or ".source.scores." in name


@torch.no_grad()
def compact_state(model) -> Tuple[dict, CompactShapes]:
    """The compact model's state dict (no pruning state) and its shapes."""
    out = {k: v for k, v in model.state_dict().items() if not _is_pruning_state(k)}
    shapes = {}
    for stack in ("encoder", "decoder"):
        shapes[stack] = []
        for i, layer in enumerate(getattr(model, stack).layers):
            prefix = f"{stack}.layers.{i}"
            heads = {kind: _slice_attention(out, f"{prefix}.{name}", attn)
                     for kind, attn, name in ((k, a, "self_attn" if k == "self" else
                                               "encoder_attn") for k, a in attentions(layer))}
            ffn = _slice_ffn(out, prefix, layer)
            shapes[stack].append(LayerShape(heads["self"], heads.get("cross"), ffn))
    return out, CompactShapes(shapes["encoder"], shapes["decoder"])


def parameter_count(state: dict, prefixes=("encoder.layers.", "decoder.layers.")) -> int:
    """Float parameters of the encoder and decoder layers in a state dict (no buffers that
    quantizers keep: their names end in lo/hi/active/initialized)."""
    skip = (".lo", ".hi", ".active", ".initialized")
    return sum(t.numel() for k, t in state.items()
               if k.startswith(prefixes) and not k.endswith(skip) and t.dim() > 0)
