"""Which attention heads and FFN units a masked model still uses, read from its masks.

A head is gone when all its output-projection columns are pruned (a pruned V row switches its
column off, see ``masked_weight.py``); a head whose Q or K slice is pruned whole but whose output
is not attends uniformly and still contributes: it is kept and counted as ``uniform``.  An FFN
unit is gone when its fc2 column is pruned.
"""
from typing import Iterator, List, Tuple

import torch

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")
MODULE = {"self": "self_attn", "cross": "encoder_attn"}


def _columns_alive(layer) -> torch.Tensor:
    """(A stock ``nn.Linear`` or a Kronecker-factorized one has no mask: all alive.)"""
    if hasattr(getattr(layer, "source", None), "element_mask"):
        return layer.source.element_mask(layer).sum(0) > 0
    return torch.ones(layer.in_features, dtype=torch.bool, device=_device(layer))


def _rows_dead(layer) -> torch.Tensor:
    if hasattr(getattr(layer, "source", None), "dead_rows"):
        return layer.source.dead_rows(layer)
    return torch.zeros(layer.out_features, dtype=torch.bool, device=_device(layer))


def _device(layer) -> torch.device:
    return next(layer.parameters()).device


def heads_alive(attn) -> torch.Tensor:
    """One bool per head: some output-projection column of the head survives."""
    return _columns_alive(attn.out_proj).view(attn.num_heads, attn.head_dim).any(1)


def heads_uniform(attn) -> torch.Tensor:
    """Heads alive whose Q or K slice is pruned whole (uniform attention over the keys)."""
    def whole(proj):
        return _rows_dead(proj).view(attn.num_heads, attn.head_dim).all(1)

    return heads_alive(attn) & (whole(attn.q_proj) | whole(attn.k_proj))


def units_alive(layer) -> torch.Tensor:
    """One bool per FFN unit of a transformer layer: its fc2 column survives."""
    return _columns_alive(layer.fc2)


def attentions(layer):
    """(kind, attention) of a fairseq encoder or decoder layer."""
    out = [("self", layer.self_attn)]
    if getattr(layer, "encoder_attn", None) is not None:
        out.append(("cross", layer.encoder_attn))
    return out


def matrices(model) -> Iterator[Tuple[str, str, object]]:
    """(kind ``attn``/``fc1``/``fc2``, state-dict label, layer) of every attention projection and
    FFN matrix of a transformer."""
    for stack in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, stack).layers):
            for kind, attn in attentions(layer):
                for name in PROJECTIONS:
                    yield "attn", f"{stack}.layers.{i}.{MODULE[kind]}.{name}", getattr(attn, name)
            for fc in ("fc1", "fc2"):
                yield fc, f"{stack}.layers.{i}.{fc}", getattr(layer, fc)


def cut_to_the_floor(model) -> List[str]:
    """The attentions where no head survives and the FFNs left with one unit or none (top-k
    keeps one block per matrix; compaction keeps one unit, dead if none survived), each named
    with what is left."""
    out = []
    for stack in ("encoder", "decoder"):
        for i, layer in enumerate(getattr(model, stack).layers):
            for kind, attn in attentions(layer):
                if not bool(heads_alive(attn).any()):
                    out.append(f"{stack}.layers.{i}.{MODULE[kind]} (no head)")
            units = int(units_alive(layer).sum())
            if units <= 1:
                out.append(f"{stack}.layers.{i} FFN ({units} unit{'' if units == 1 else 's'})")
    return out


def describe(model) -> str:
    """``heads enc 4,3 dec-self 4,4 dec-cross 2,4 (uniform 1) | ffn enc 512,301 dec 498,77``."""
    heads, ffn, uniform = {}, {}, 0
    for stack, layers in (("enc", model.encoder.layers), ("dec", model.decoder.layers)):
        for layer in layers:
            for kind, attn in attentions(layer):
                key = stack if stack == "enc" else f"dec-{kind}"
                heads.setdefault(key, []).append(int(heads_alive(attn).sum()))
                uniform += int(heads_uniform(attn).sum())
            ffn.setdefault(stack, []).append(int(units_alive(layer).sum()))

    def fmt(d) -> List[str]:
        return [f"{k} {','.join(map(str, v))}" for k, v in d.items()]

    return (f"heads {' '.join(fmt(heads))} (uniform {uniform}) | "
            f"ffn {' '.join(fmt(ffn))}")
