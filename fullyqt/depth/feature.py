"""``--init-layer-map``: a model with other layer counts than its ``--finetune-from-model``
checkpoint starts each of its layers from a chosen layer of that checkpoint (evenly spaced by
default, ending on the last), instead of refusing the checkpoint."""
import logging
import re
from dataclasses import dataclass
from typing import List, Optional

from ..distill.layer_map import STACKS, parse_layer_map, pick_layers
from ..errors import UserError, checked_action
from ..feature import Feature, option_group, register_feature

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DepthConfig:
    encoder: Optional[List[int]]  # checkpoint layer (1-based) per model layer; None: evenly
    decoder: Optional[List[int]]


def _map(option, value):
    parse_layer_map(option, value)  # refuses a malformed map in one line
    return value


def saved_layers(state_dict: dict, prefix: str, stack: str) -> int:
    """How many layers of ``stack`` the state holds."""
    found = re.compile(re.escape(f"{prefix}{stack}.layers.") + r"(\d+)\.")
    numbers = [int(m.group(1)) for m in map(found.match, state_dict) if m]
    return max(numbers) + 1 if numbers else 0


def take_layers(state_dict: dict, prefix: str, stack: str, picks: List[int]):
    """Keep, as layers 0..len(picks)-1 of ``stack``, the saved layers ``picks`` (1-based; one
    saved layer may start several)."""
    head = f"{prefix}{stack}.layers."
    saved = {}
    for key in [k for k in state_dict if k.startswith(head)]:
        number, rest = key[len(head):].split(".", 1)
        saved.setdefault(int(number), {})[rest] = state_dict.pop(key)
    for i, pick in enumerate(picks):
        for rest, tensor in saved[pick - 1].items():
            state_dict[f"{head}{i}.{rest}"] = tensor.clone()


class Depth(Feature):
    name = "depth"
    order = -10  # the layers are renumbered before any feature converts what they hold

    def add_args(self, parser):
        group = option_group(parser, "fullyqt: a student of another depth")
        group.add_argument(
            "--init-layer-map", metavar="MAP", action=checked_action(_map),
            help="with --finetune-from-model of a checkpoint with other layer counts: which of "
                 "its layers (1-based) start this model's, 'auto' (evenly spaced, ending on its "
                 "last layer) or comma lists, ENCODER:DECODER (e.g. 'auto:3' keeps its top "
                 "decoder layer for a one-layer decoder); a stack whose count agrees is loaded "
                 "as it is")

    def set_defaults(self, args):
        if not hasattr(args, "init_layer_map"):
            args.init_layer_map = None

    def config(self, args):
        value = getattr(args, "init_layer_map", None)
        if value is None:
            return None
        if not getattr(args, "finetune_from_model", None):
            raise UserError("--init-layer-map applies to --finetune-from-model, which is not "
                            "given")
        return DepthConfig(*parse_layer_map("--init-layer-map", value))

    def upgrade_state(self, model, cfg, state_dict, prefix):
        if cfg is None:
            return
        for stack, given in zip(STACKS, (cfg.encoder, cfg.decoder)):
            have = len(getattr(model, stack).layers)
            saved = saved_layers(state_dict, prefix, stack)
            if saved in (0, have):  # the model's own depth: a resume, or nothing to change
                continue
            picks = pick_layers(stack, given, have, saved, "--init-layer-map", "model",
                                "checkpoint")
            take_layers(state_dict, prefix, stack, picks)
            logger.info("depth: %s layers %s of the checkpoint's %d start this model's %d",
                        stack, ",".join(map(str, picks)), saved, have)


register_feature(Depth())
