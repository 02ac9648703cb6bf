"""The teacher: a fairseq translation checkpoint rebuilt on the student's task, frozen.

It is built with the student's dictionaries (so a dictionary that differs is caught before
training starts), kept in eval mode without gradients, and never registered as a submodule of
anything: it is not in the optimizer, not in the student's checkpoint, and it follows the
student's device and dtype when it is first used.
"""
import logging

import torch
from fairseq.models import ARCH_MODEL_REGISTRY, FairseqEncoderDecoderModel

from ..checkpoint import arch_of, read_checkpoint
from ..data.dictionaries import difference
from ..errors import UserError
from .states import forward_with_states


logger = logging.getLogger(__name__)


class DistillError(UserError):
    """A teacher, student or option that cannot be distilled."""


def _check_dictionaries(path: str, state: dict, task):
    problem = difference(state, task.source_dictionary, task.target_dictionary)
    if problem:
        raise DistillError(f"{path}: the teacher's dictionaries are not the task's ({problem}); "
                           "train the student on the teacher's binarized data")


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
