"""The float model a recipe starts from: checked, and read for what the stages inherit (its
architecture options, its update count, its batch size and languages)."""
import argparse
import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..checkpoint import arch_of, model_args, read_checkpoint
from ..errors import UserError
from ..quant.packed_state import FORMAT_KEY

# Options of fairseq's transformer that say how it trains or is stored, not what it computes.
_NOT_ARCHITECTURE = {"checkpoint_activations", "offload_activations", "min_params_to_wrap",
                     "encoder_embed_path", "decoder_embed_path", "export", "char_inputs",
                     "relu_dropout", "decoder_output_dim", "decoder_input_dim"}


class InputError(UserError):
    """The input model or data cannot start a recipe."""


@dataclass
class Source:
    path: str
    num_updates: int
    architecture: Dict[str, object]  # fairseq-train options (no --) the stages must repeat
    languages: Tuple[Optional[str], Optional[str]]
    max_tokens: Optional[int]
    embedding_rows: Tuple[int, int]  # source, target


def _architecture(args) -> Dict[str, object]:
    """The input's transformer options that differ from ``fullyqt_transformer``'s defaults."""
    from fairseq.models import ARCH_CONFIG_REGISTRY
    from fairseq.models.transformer import TransformerModel

    parser = argparse.ArgumentParser(add_help=False)
    TransformerModel.add_args(parser)
    defaults = argparse.Namespace()
    ARCH_CONFIG_REGISTRY["fullyqt_transformer"](defaults)
    out = {}
    for action in parser._actions:
        name = action.dest
        if name in _NOT_ARCHITECTURE or not hasattr(args, name):
            continue
        value = getattr(args, name)
        implied = (name.startswith("max_") and value == 1024  # fairseq's when none is given
                   or name == "share_decoder_input_output_embed" and args.share_all_embeddings)
        if value is not None and value != getattr(defaults, name, None) and not implied:
            out[name.replace("_", "-")] = value
    return out


def _rows(weights, key) -> int:
    tensor = weights.get(key)
    return int(tensor.shape[0]) if tensor is not None and tensor.dim() == 2 else -1


def read_source(path: str) -> Source:
    """The input checkpoint if it is a float translation Transformer, else an InputError that
    names what it is."""
    from ..checkpoint import CheckpointError

    try:
        state = read_checkpoint(path)
    except CheckpointError as e:
        raise InputError(str(e)) from None
    arch = arch_of(state) or "unknown"
    if FORMAT_KEY in state:
        raise InputError(f"{path}: an export ({state[FORMAT_KEY]['format']}), not a training "
                         "checkpoint; give the float model's checkpoint")
    if not (arch.startswith("transformer") or arch.startswith("fullyqt_transformer")):
        raise InputError(f"{path}: architecture {arch!r} is not a translation Transformer; "
                         "allowed: fairseq's transformer* or fullyqt_transformer* (float)")
    args = model_args(state)
    if arch.startswith("fullyqt_transformer"):
        done = [what for what, on in (
            (f"quantized ({getattr(args, 'quant_bits', '?')} bits)",
             not getattr(args, "no_quant", False)),
            (f"pruned (--prune-method {getattr(args, 'prune_method', None)})",
             getattr(args, "prune_method", None) or getattr(args, "prune_compact_shapes", None)),
            (f"Kronecker-factorized (--kron-layers {getattr(args, 'kron_layers', None)})",
             getattr(args, "kron_layers", None))) if on]
        if done:
            raise InputError(f"{path}: already {' and '.join(done)}; a recipe starts from a "
                             "float model (a stock transformer or fullyqt_transformer "
                             "--no-quant)")
    from ..models.fullyqt_transformer import check_supported

    try:
        check_supported(args)
    except UserError as e:
        raise InputError(f"{path}: {e}") from None
    history = state.get("optimizer_history") or [{}]
    weights = state["model"]
    return Source(os.path.abspath(path), int(history[-1].get("num_updates", 0) or 0),
                  _architecture(args),
                  (getattr(args, "source_lang", None), getattr(args, "target_lang", None)),
                  getattr(args, "max_tokens", None),
                  (_rows(weights, "encoder.embed_tokens.weight"),
                   _rows(weights, "decoder.embed_tokens.weight")))
