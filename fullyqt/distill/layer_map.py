"""Which teacher layer each student layer learns from (``--kd-layer-map``).

States are numbered as fairseq returns them: 0 is the embedding output, 1..N the outputs of the
N layers.  The embedding output always pairs with the teacher's embedding output.
"""
import math
from typing import List, Optional, Tuple

from ..errors import UserError

STACKS = ("encoder", "decoder")


def evenly_spaced(student_layers: int, teacher_layers: int) -> List[int]:
    """Teacher layer for student layers 1..S: round(i·T/S), the identity when depths agree, and
    always ending on the teacher's last layer; a deeper student (S > T) takes ceil(i·T/S), each
    teacher layer for as many student layers, never the embedding output."""
    at = [i * teacher_layers / student_layers for i in range(1, student_layers + 1)]
    return [math.ceil(x) if student_layers > teacher_layers else round(x) for x in at]


def parse_layer_map(option: str, value: str) -> Tuple[Optional[List[int]], Optional[List[int]]]:
    """``"2,4,6"`` (both stacks) or ``"2,4,6:1,3,6"`` (encoder:decoder); ``"auto"`` or an empty
    side means evenly spaced."""
    sides = str(value).split(":")
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2:
        raise UserError(f"{option}: got {value!r}; allowed: 'auto', a comma list of teacher "
                        "layers (one per student layer), or ENCODER:DECODER lists")
    maps = []
    for side in sides:
        side = side.strip()
        if side in ("", "auto"):
            maps.append(None)
            continue
        try:
            layers = [int(x, 10) for x in side.split(",")]
        except ValueError:
            layers = None
        if not layers or min(layers) < 1:
            raise UserError(f"{option}: got {value!r}; allowed: comma lists of teacher layer "
                            "numbers >= 1 (0, the embedding output, is always paired)")
        maps.append(layers)
    return maps[0], maps[1]


def pick_layers(stack: str, given: Optional[List[int]], student_layers: int,
                teacher_layers: int, option: str = "--kd-layer-map", student: str = "student",
                teacher: str = "teacher") -> List[int]:
    """The teacher layer (1-based) of each student layer of one stack: ``given``, checked, or
    evenly spaced; ``student`` and ``teacher`` are what the error line calls the two models."""
    layers = given if given is not None else evenly_spaced(student_layers, teacher_layers)
    if len(layers) != student_layers:
        raise UserError(f"{option}: the {stack} map has {len(layers)} entries for a "
                        f"{student} with {student_layers} {stack} layers; give one per layer")
    if max(layers) > teacher_layers:
        raise UserError(f"{option}: {stack} {teacher} layer {max(layers)} does not exist; "
                        f"the {teacher} has {teacher_layers} {stack} layers")
    return layers


def resolve(stack: str, given: Optional[List[int]], student_layers: int,
            teacher_layers: int) -> List[Tuple[int, int]]:
    """(student state, teacher state) pairs of one stack, embedding output included."""
    layers = pick_layers(stack, given, student_layers, teacher_layers)
    return [(0, 0)] + [(i + 1, t) for i, t in enumerate(layers)]
