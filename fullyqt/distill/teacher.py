"""The teacher: a fairseq translation checkpoint rebuilt on the student's task, frozen.

It is built with the student's dictionaries (so a dictionary that differs is caught before
training starts), kept in eval mode without gradients, and never registered as a submodule of
anything: it is not in the optimizer, not in the student's checkpoint, and it follows the
student's device and dtype when it is first used.
"""
import logging
import os

import torch
from fairseq.models import ARCH_MODEL_REGISTRY, FairseqEncoderDecoderModel

from ..checkpoint import arch_of, model_args, read_checkpoint, recorded_data
from ..errors import UserError
from .states import forward_with_states


logger = logging.getLogger(__name__)


class DistillError(UserError):
    """A teacher, student or option that cannot be distilled."""


def _embedding_rows(weights: dict, key: str):
    tensor = weights.get(key)
    return tensor.size(0) if isinstance(tensor, torch.Tensor) and tensor.dim() == 2 else None


def _teacher_dictionaries(state: dict):
    """``{side: dict file}`` of the data the teacher was trained on, where still on disk (the
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


def _check_dictionaries(path: str, state: dict, task):
    """Same sizes as the task's dictionaries, and the same symbols in the same order where the
    teacher's own dictionary files are still on disk (a dictionary of the same size in another
    order would train the student against a permuted vocabulary)."""
    weights = state["model"]
    files = _teacher_dictionaries(state)
    for side, key, dictionary in (
            ("source", "encoder.embed_tokens.weight", task.source_dictionary),
            ("target", "decoder.embed_tokens.weight", task.target_dictionary)):
        rows = _embedding_rows(weights, key)
        if rows is not None and rows != len(dictionary):
            raise DistillError(f"{path}: the teacher's {side} dictionary has {rows} entries, the "
                               f"task's has {len(dictionary)}; train the student on the "
                               "teacher's binarized data (same dictionaries)")
        own = files.get(side)
        if own is None:
            logger.warning("distill: the teacher's %s dictionary cannot be found (its data "
                           "directory is gone): only its size is checked", side)
            continue
        with open(own, encoding="utf-8") as f:
            symbols = [line.split(" ", 1)[0] for line in f if line.strip()]
        task_symbols = dictionary.symbols[dictionary.nspecial:]
        for i, (a, b) in enumerate(zip(symbols, task_symbols)):
            if a != b:
                raise DistillError(f"{path}: the teacher's {side} dictionary ({own}) differs "
                                   f"from the task's at entry {i + dictionary.nspecial}: {a!r} "
                                   f"against {b!r}; train the student on the teacher's "
                                   "binarized data")
        if len(symbols) != len(task_symbols):
            raise DistillError(f"{path}: the teacher's {side} dictionary ({own}, "
                               f"{len(symbols)} symbols) differs from the task's "
                               f"({len(task_symbols)} symbols); train the student on the "
                               "teacher's binarized data")


def read_teacher(path: str):
    """(the checkpoint as saved, as fairseq upgrades it), after the checks that name a missing,
    unreadable or non-translation teacher."""
    state = read_checkpoint(path)
    arch = arch_of(state)
    cls = ARCH_MODEL_REGISTRY.get(arch)
    if cls is None:
        raise DistillError(f"{path}: unknown teacher architecture {arch!r}")
    if not issubclass(cls, FairseqEncoderDecoderModel):
        raise DistillError(f"{path}: architecture {arch!r} is not a translation "
                           "(encoder-decoder) model")
    from fairseq import checkpoint_utils

    return state, checkpoint_utils.load_checkpoint_to_cpu(path)


def load_teacher(path: str, task, states=None) -> FairseqEncoderDecoderModel:
    """The frozen teacher model in eval mode, on CPU (``Teacher`` moves it on first use);
    ``states``: what ``read_teacher(path)`` returned, if the caller has it already."""
    state, upgraded = states or read_teacher(path)
    _check_dictionaries(path, state, task)
    cfg = upgraded["cfg"]
    model = task.build_model(cfg.model)
    model.load_state_dict(upgraded["model"], strict=True, model_cfg=cfg.model)
    model.eval()
    model.requires_grad_(False)
    return model


class Teacher:
    """Holds the frozen teacher (a plain object, not an ``nn.Module``, so that nothing of it
    reaches the criterion's parameters or state dict)."""

    def __init__(self, model):
        self.model = model
        self.num_parameters = sum(p.numel() for p in model.parameters())

    def follow(self, reference: torch.Tensor):
        """Move to the device and floating dtype of ``reference`` (a student parameter)."""
        p = next(self.model.parameters())
        if p.device != reference.device or p.dtype != reference.dtype:
            self.model.to(device=reference.device, dtype=reference.dtype)

    @torch.no_grad()
    def __call__(self, net_input, with_states: bool):
        self.model.eval()
        return forward_with_states(self.model, net_input, with_states)
