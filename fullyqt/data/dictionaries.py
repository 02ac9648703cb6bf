"""Whether a checkpoint was trained on the same dictionaries as a task: the sizes from its
embeddings, the symbols from the dictionary files of its recorded data directory where those are
still on disk (a dictionary of the same size in another order permutes the vocabulary)."""
import logging
import os
from typing import Optional

import torch

from ..checkpoint import model_args, recorded_data

logger = logging.getLogger(__name__)


def _embedding_rows(weights: dict, key: str):
    tensor = weights.get(key)
    return tensor.size(0) if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 else None


def own_dictionaries(state: dict):
    """``{side: dict file}`` of the data the checkpoint was trained on, where still on disk (the
    languages as fairseq infers them when the command line gave none)."""
    args = model_args(state)
    task = (state.get("cfg") or {}).get("task")
    data = str(recorded_data(state) or "").split(os.pathsep)[0]
    if not data or not os.path.isdir(data):
        return {}
    langs = [getattr(task, f"{side}_lang", None) if task is not None and not isinstance(task, dict)
             else (task or {}).get(f"{side}_lang") for side in ("source", "target")]
    langs = [lang or getattr(args, f"{side}_lang", None)
             for lang, side in zip(langs, ("source", "target"))]
    if None in langs:
        from fairseq.data.data_utils import infer_language_pair

        langs = list(infer_language_pair(data))
        if None in langs:
            return {}
    files = {side: os.path.join(data, f"dict.{lang}.txt")
             for side, lang in zip(("source", "target"), langs)}
    return {side: f for side, f in files.items() if os.path.isfile(f)}


def difference(state: dict, source_dictionary, target_dictionary) -> Optional[str]:
    """How the checkpoint's dictionaries differ from these (None: they do not, as far as can be
    told; a warning says when only the sizes could be compared)."""
    files = own_dictionaries(state)
    for side, key, dictionary in (
            ("source", "encoder.embed_tokens.weight", source_dictionary),
            ("target", "decoder.embed_tokens.weight", target_dictionary)):
        rows = _embedding_rows(state["model"], key)
        if rows is not None and rows != len(dictionary):
            return f"its {side} dictionary has {rows} entries, the data's has {len(dictionary)}"
        own = files.get(side)
        if own is None:
            logger.warning("the %s dictionary the checkpoint was trained with cannot be found "
                           "(its data directory is gone): only its size is checked", side)
            continue
        with open(own, encoding="utf-8") as f:
            symbols = [line.split(" ", 1)[0] for line in f if line.strip()]
        data_symbols = dictionary.symbols[dictionary.nspecial:]
        for i, (a, b) in enumerate(zip(symbols, data_symbols)):
            if a != b:
                return (f"its {side} dictionary ({own}) differs from the data's at entry "
                        f"{i + dictionary.nspecial}: {a!r} against {b!r}")
        if len(symbols) != len(data_symbols):
            return (f"its {side} dictionary ({own}, {len(symbols)} symbols) differs from the "
                    f"data's ({len(data_symbols)} symbols)")
    return None
