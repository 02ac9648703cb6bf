"""Command-line options of ``--criterion fullyqt_distill``, checked as they are parsed."""
import argparse
import math

from ..errors import checked_action, integer, parse_number
from ..feature import Feature, register_feature
from .layer_map import parse_layer_map

CRITERION = "fullyqt_distill"
KD_OPTIONS = ("--teacher-path", "--kd-weight", "--kd-temperature", "--kd-hidden-weight",
              "--kd-layer-map")


def _fraction(option, value):
    return parse_number(option, value, float, lambda x: 0 <= x <= 1, "a number in [0, 1]")


def _positive(option, value):
    return parse_number(option, value, float, lambda x: 0 < x < math.inf, "a number > 0")


def _non_negative(option, value):
    return parse_number(option, value, float, lambda x: 0 <= x < math.inf, "a number >= 0")


def _count(option, value):
    return parse_number(option, value, integer, lambda n: n >= 0, "an integer >= 0")


def add_distill_args(parser):
    """The criterion's options.  ``resolve`` replaces the guards a fullyqt model registered for
    the same names (see ``add_guards``)."""
    g = parser.add_argument_group("fullyqt distillation", conflict_handler="resolve")
    g.add_argument("--teacher-path", metavar="CKPT",
                   help="the teacher: any fairseq translation checkpoint (stock transformer or "
                        "fullyqt, float or quantized) trained with the task's dictionaries")
    g.add_argument("--kd-weight", action=checked_action(_fraction), default=0.5, metavar="A",
                   help="share of the soft-target loss; the rest is the label-smoothed cross "
                        "entropy (default 0.5)")
    g.add_argument("--kd-temperature", action=checked_action(_positive), default=1.0,
                   metavar="T", help="soft targets at temperature T, loss scaled by T² "
                                     "(default 1)")
    g.add_argument("--kd-hidden-weight", action=checked_action(_non_negative), default=0.0,
                   metavar="B", help="weight of the MSE between student and teacher hidden "
                                     "states: embedding output and each layer (default 0: off)")
    g.add_argument("--kd-layer-map", action=checked_action(parse_layer_map), default=None,
                   metavar="MAP", help="teacher layer per student layer, e.g. 2,4,6 (both "
                                       "stacks) or 2,4,6:3,6 (encoder:decoder); default evenly "
                                       "spaced")
    g.add_argument("--label-smoothing", action=checked_action(_fraction), default=0.0,
                   metavar="EPS", help="label smoothing of the cross-entropy part")
    g.add_argument("--ignore-prefix-size", action=checked_action(_count), default=0,
                   metavar="N", help="ignore the first N target tokens")
    g.add_argument("--report-accuracy", action="store_true", help="report accuracy")


class _NeedsCriterion(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        parser.exit(2, f"{parser.prog}: error: {option_string} applies to --criterion "
                       f"{CRITERION} only\n")


def add_guards(parser):
    """Register the ``--kd-*`` names so that, with another criterion, they fail in one line
    instead of argparse's 'unrecognized arguments' after the whole usage text."""
    for option in KD_OPTIONS:
        parser.add_argument(option, action=_NeedsCriterion, help=argparse.SUPPRESS)


class DistillGuards(Feature):
    """Puts the guards on the model's parser: a model's options are parsed whatever the
    criterion."""
    name = "distill_guards"
    order = 40

    def add_args(self, parser):
        add_guards(parser)


register_feature(DistillGuards())
