"""Factorize a built transformer's weights, and convert a dense checkpoint's weights on load.

``attach_kronecker`` runs once the model is built (fairseq has made, initialised and tied the
dense weights): each chosen linear gets a ``KroneckerWeight`` source and loses its ``weight``;
the embeddings become ``KroneckerEmbedding`` and a tied output projection shares their factors.
``convert_dense_state`` turns a dense checkpoint's weights into their nearest factors (the
initialization from a dense teacher, ``--finetune-from-model``).
"""
import logging
from collections import OrderedDict
from typing import Dict, List, Tuple

from ..errors import UserError
from ..prune.structure import matrices
from ..quant.config import QuantConfig
from ..quant.linear import QuantLinear
from .embedding import KroneckerEmbedding
from .factors import KronShape
from .kron_weight import KroneckerWeight, init_factors
from .nearest import nearest
from .options import KronConfig

logger = logging.getLogger(__name__)


def _factorize(layer: QuantLinear, ks: KronShape, qcfg: QuantConfig):
    source = KroneckerWeight(ks, qcfg)
    init_factors(source.a, source.b, float(layer.weight.detach().std()), ks.rank)
    layer.source = source
    del layer.weight


def _factorize_embeddings(model, kcfg: KronConfig, qcfg: QuantConfig, made: list):
    new = {}
    for stack in ("encoder", "decoder"):
        coder = getattr(model, stack)
        emb = coder.embed_tokens
        if id(emb) not in new:
            label = f"{stack}.embed_tokens"
            ks = kcfg.shape_for("embed", tuple(emb.weight.shape), label)
            k = KroneckerEmbedding(ks, emb.padding_idx, qcfg)
            init_factors(k.a, k.b, float(emb.weight.detach().std()), ks.rank)
            if emb.padding_idx is not None:
                k.a.data[emb.padding_idx] = 0.0
            new[id(emb)] = (emb, k)
            made.append((label, ks))
        coder.embed_tokens = new[id(emb)][1]
    out = model.decoder.output_projection
    tied = [k for emb, k in new.values() if out.weight is emb.weight]
    if tied:
        out.source = KroneckerWeight(tied[0].ks, qcfg, a=tied[0].a, b=tied[0].b)
        del out.weight
    else:
        label = "decoder.output_projection"
        ks = kcfg.shape_for("embed", (out.out_features, out.in_features), label)
        _factorize(out, ks, qcfg)
        made.append((label, ks))


def attach_kronecker(model, kcfg: KronConfig, qcfg: QuantConfig) -> List[Tuple[str, KronShape]]:
    """Factorize what ``kcfg.layers`` names, in place; returns (label, shape) of each factorized
    matrix (a tied projection is its embedding's) and logs the shapes chosen."""
    made = []
    for key, label, layer in matrices(model):
        if ("ffn" if key in ("fc1", "fc2") else key) not in kcfg.layers:
            continue
        ks = kcfg.shape_for(key, (layer.out_features, layer.in_features), label)
        _factorize(layer, ks, qcfg)
        made.append((label, ks))
    if "embed" in kcfg.layers:
        _factorize_embeddings(model, kcfg, qcfg, made)
    log_shapes(made)
    for ks in dict.fromkeys(ks for _, ks in made):
        if kcfg.far_from_factor(ks):
            m, n = ks.shape
            logger.warning("kron: --kron-factor %g is far from what a %dx%d matrix allows: the "
                           "nearest factorization, %s, holds %.1fx fewer numbers; --kron-shapes "
                           "chooses the factors directly", kcfg.factor, m, n, ks, ks.compression)
    return made


def log_shapes(made: List[Tuple[str, KronShape]]):
    groups: Dict[KronShape, List[str]] = OrderedDict()
    for label, ks in made:
        groups.setdefault(ks, []).append(label)
    dense = factored = 0
    for ks, labels in groups.items():
        m, n = ks.shape
        dense += m * n * len(labels)
        factored += ks.params * len(labels)
        logger.info("kron: %dx%d as %s: %d numbers, %.1fx fewer; %d matrices (%s%s)", m, n, ks,
                    ks.params, ks.compression, len(labels), ", ".join(labels[:3]),
                    ", ..." if len(labels) > 3 else "")
    if made:
        logger.info("kron: factorized matrices hold %d numbers instead of %d (%.1fx fewer)",
                    factored, dense, dense / factored)


def kronecker_modules(model):
    """``{name: (module, names of a and b)}`` of every factorized module (tied ones under
    every name)."""
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if isinstance(m, KroneckerEmbedding):
            out[name] = (m, "a", "b")
        elif isinstance(m, QuantLinear) and isinstance(m.source, KroneckerWeight):
            out[name] = (m.source, "source.a", "source.b")
    return out


def _dims(shape) -> str:
    return "x".join(map(str, shape))


def convert_dense_state(model, state_dict: dict, prefix: str = "") -> int:
    """In place: every dense ``weight`` of a matrix the model factorizes is replaced by its
    nearest factors (each layer's relative error logged); returns how many.  A factor saved
    with another shape is refused in one line (a checkpoint of other --kron-* options)."""
    converted = 0
    for name, (module, a_name, b_name) in kronecker_modules(model).items():
        base = f"{prefix}{name}."
        ks = module.ks
        for attr in (a_name, b_name):
            saved = state_dict.get(base + attr)
            own = getattr(module, attr.split(".")[-1])
            if saved is not None and tuple(saved.shape) != tuple(own.shape):
                raise UserError(f"{base}{attr}: the checkpoint's factor is {_dims(saved.shape)}, "
                                f"the model's is {_dims(own.shape)} ({ks}); pass the --kron-* "
                                "options it was trained with")
        w = state_dict.get(base + "weight")
        if w is None or base + a_name in state_dict:
            continue
        if tuple(w.shape) != ks.shape:
            raise UserError(f"{base}weight: the checkpoint's matrix is {_dims(w.shape)}, "
                            f"the model factorizes {_dims(ks.shape)}")
        a, b, rel = nearest(state_dict.pop(base + "weight"), ks)
        state_dict[base + a_name], state_dict[base + b_name] = a, b
        logger.info("kron: %s initialised from the dense weight as %s, relative error %.4f",
                    name, ks, rel)
        converted += 1
    return converted


def holds_factors(state_dict: dict) -> bool:
    return any(k.endswith((".source.a", "embed_tokens.a")) for k in state_dict)
