"""Kronecker options: command-line flags, validation, and the config the layers are built from."""
import math
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Optional, Tuple

from ..errors import checked_action, integer, parse_number
from ..feature import option_group
from .factors import KronOptionError, KronShape, choose, from_second, parse_pair

KINDS = ("ffn", "attn", "embed")
SHAPE_KEYS = ("ffn", "fc1", "fc2", "attn", "embed")
DEFAULT_FACTOR = 4.0
_DEFAULTS = (("kron_layers", None), ("kron_rank", 1), ("kron_factor", None),
             ("kron_shapes", None))


def _layers(option, value) -> str:
    kinds = [k.strip() for k in str(value).split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise KronOptionError(f"{option}: got {value!r}; allowed: a comma list of "
                              f"{', '.join(KINDS)}")
    return ",".join(k for k in KINDS if k in kinds)


def _rank(option, value) -> int:
    return parse_number(option, value, integer, lambda r: r >= 1, "an integer >= 1",
                        KronOptionError)


def _factor(option, value) -> float:
    return parse_number(option, value, float, lambda f: 1 < f < math.inf, "a number > 1",
                        KronOptionError)


def parse_shapes(option, value) -> Dict[str, Tuple[int, int]]:
    """``KEY=RxC,...``: the second factor's shape per kind of matrix."""
    out = {}
    for item in str(value).split(","):
        key, sep, pair = item.strip().partition("=")
        if not sep or key not in SHAPE_KEYS:
            raise KronOptionError(f"{option}: got {item.strip()!r}; allowed: KEY=RxC with KEY "
                                  f"one of {', '.join(SHAPE_KEYS)} (e.g. ffn=2x2,embed=1x4)")
        out[key] = parse_pair(f"{option} {key}", pair)
    if "embed" in out and out["embed"][0] != 1:
        raise KronOptionError(f"{option} embed={out['embed'][0]}x{out['embed'][1]}: an "
                              "embedding's second factor has one row (1xN), so that a token "
                              "reads one row of the first")
    return out


def _shapes_text(option, value) -> str:
    parse_shapes(option, value)
    return value


def add_kron_args(parser):
    g = option_group(parser, "fullyqt Kronecker factorization")
    g.add_argument("--kron-layers", action=checked_action(_layers), metavar="KINDS",
                   help="factorize these weights as sums of Kronecker products: a comma list of "
                        "ffn (fc1, fc2), attn (Q, K, V, output projections), embed (the "
                        "embeddings and the output projection); default off")
    g.add_argument("--kron-rank", action=checked_action(_rank), metavar="R",
                   help="Kronecker products summed per matrix (default 1)")
    g.add_argument("--kron-factor", action=checked_action(_factor), metavar="F",
                   help="target compression of each factorized matrix; the factor shapes "
                        f"nearest it are chosen and logged (default {DEFAULT_FACTOR:g})")
    g.add_argument("--kron-shapes", action=checked_action(_shapes_text), metavar="KEY=RxC,...",
                   help="explicit shapes of the second factor B per kind (ffn, fc1, fc2, attn, "
                        "embed); the first is the matrix's shape divided by it; instead of "
                        "--kron-factor")


def set_kron_defaults(args):
    for name, default in _DEFAULTS:
        if getattr(args, name, None) is None:
            setattr(args, name, default)


@dataclass(frozen=True)
class KronConfig:
    layers: FrozenSet[str]
    rank: int
    factor: Optional[float]
    shapes: Dict[str, Tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args) -> Optional["KronConfig"]:
        """The validated config, or None when no layer is factorized (raises KronOptionError)."""
        set_kron_defaults(args)
        if args.kron_layers is None:
            given = [f"--{n.replace('_', '-')}" for n in ("kron_factor", "kron_shapes")
                     if getattr(args, n) is not None]
            if given:
                raise KronOptionError(f"{given[0]} needs --kron-layers (which weights to "
                                      f"factorize: {', '.join(KINDS)})")
            return None
        layers = frozenset(_layers("--kron-layers", args.kron_layers).split(","))
        if args.kron_factor is not None and args.kron_shapes is not None:
            raise KronOptionError(f"--kron-factor {args.kron_factor} and --kron-shapes "
                                  f"{args.kron_shapes} both set the factor shapes; give one")
        shapes = {}
        if args.kron_shapes is not None:
            shapes = parse_shapes("--kron-shapes", args.kron_shapes)
            for key in shapes:
                kind = "ffn" if key in ("fc1", "fc2") else key
                if kind not in layers:
                    raise KronOptionError(f"--kron-shapes {key}=...: {kind} is not in "
                                          f"--kron-layers {args.kron_layers}")
            for kind, keys in (("ffn", ("ffn", "fc1", "fc2")), ("attn", ("attn",)),
                               ("embed", ("embed",))):
                if kind in layers and not any(k in shapes for k in keys):
                    raise KronOptionError(f"--kron-shapes gives no shape for {kind}, which "
                                          f"--kron-layers factorizes; add {kind}=RxC")
            if "ffn" in layers and "ffn" not in shapes and not ("fc1" in shapes
                                                                 and "fc2" in shapes):
                missing = "fc2" if "fc1" in shapes else "fc1"
                raise KronOptionError(f"--kron-shapes gives no shape for {missing}; add "
                                      f"{missing}=RxC or ffn=RxC")
        factor = None if shapes else (DEFAULT_FACTOR if args.kron_factor is None
                                      else _factor("--kron-factor", args.kron_factor))
        return cls(layers, _rank("--kron-rank", args.kron_rank), factor, shapes)

    def shape_for(self, key: str, shape: Tuple[int, int], matrix: str) -> KronShape:
        """The factorization of one matrix: ``key`` is fc1, fc2, attn or embed."""
        if self.factor is None:
            name = key if key in self.shapes else "ffn"
            return from_second(shape, self.shapes[name], self.rank, matrix,
                               given=f"--kron-shapes {name}=")
        return choose(shape, self.factor, self.rank, matrix,
                      rows_of_b=1 if key == "embed" else None)

    def far_from_factor(self, ks: KronShape) -> bool:
        """Whether ``ks`` compresses over twice more or less than ``--kron-factor`` asked."""
        return self.factor is not None and abs(math.log(ks.compression / self.factor)) > math.log(2)
