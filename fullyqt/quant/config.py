"""Quantization options: command-line flags, validation, and the config object modules read."""
from dataclasses import dataclass
from typing import Optional

from ..errors import UserError, checked_action, integer, one_of, parse_number
from ..feature import option_group
from .integer_form import MAX_BITS as MAX_INT8_BITS
from .observers import OBSERVERS
from .quantizer import WEIGHT_BUCKETS, ActivationQuantizer, WeightQuantizer

MIN_BITS, MAX_BITS = 2, 16


class QuantOptionError(UserError):
    """A quantization option has a value outside what is allowed."""


def _parse_bits(option, value):
    return parse_number(option, value, integer, lambda b: MIN_BITS <= b <= MAX_BITS,
                        f"an integer from {MIN_BITS} to {MAX_BITS}", QuantOptionError)


def _parse_start(option, value):
    return parse_number(option, value, integer, lambda n: n >= 0, "an integer >= 0",
                        QuantOptionError)


def _parse_momentum(option, value):
    return parse_number(option, value, float, lambda m: 0.0 <= m < 1.0, "a number in [0, 1)",
                        QuantOptionError)


KERNELS = ("exact", "fake", "int8", "fake64")
ACT_RANGES = ("auto",) + OBSERVERS
# "auto": what makes each width train well; min-max ranges collapse at 4 activation bits
AUTO_MSE_BITS = 4
_parse_buckets, _parse_observer, _parse_kernels = (
    one_of(allowed, QuantOptionError) for allowed in (WEIGHT_BUCKETS, ACT_RANGES, KERNELS))


# Options that set bits: with --no-quant, a contradiction refused at parse time (a saved
# float checkpoint holds the defaults of both, so only the command line is checked).
_BITS_OPTIONS = ("--quant-bits", "--quant-weight-bits", "--quant-act-bits",
                 "--quant-softmax-denominator-bits")


def _bits_option(option, value, namespace):
    if getattr(namespace, "no_quant", False) is True:
        raise QuantOptionError(f"{option} {value} contradicts --no-quant; drop one of them")
    return _parse_bits(option, value)


def _no_quant_flag(option, value, namespace):
    given = [o for o in _BITS_OPTIONS if getattr(namespace, o[2:].replace("-", "_"), None)]
    if given:
        raise QuantOptionError(f"--no-quant contradicts {given[0]}; drop one of them")
    return True


def add_quant_args(parser):
    g = option_group(parser, "fullyqt quantization")
    g.add_argument("--quant-bits", action=checked_action(_bits_option, True), metavar="B",
                   help="bits for every weight and activation (2..16, default 8)")
    g.add_argument("--quant-weight-bits", action=checked_action(_bits_option, True), metavar="B",
                   help="override --quant-bits for weights")
    g.add_argument("--quant-act-bits", action=checked_action(_bits_option, True), metavar="B",
                   help="override --quant-bits for activations")
    g.add_argument("--quant-softmax-denominator-bits", action=checked_action(_bits_option, True),
                   metavar="B", help="override the activation bits for the softmax denominators "
                                     "(a sum of exponentials spanning orders of magnitude: the "
                                     "point that collapses 4-bit activations first)")
    g.add_argument("--quant-start-update", action=checked_action(_parse_start), metavar="N",
                   help="train in float until update N, then quantize; activation ranges start "
                        "from the live statistics at that point (default 0)")
    g.add_argument("--quant-ema-momentum", action=checked_action(_parse_momentum), metavar="M",
                   help="momentum of the running activation ranges (default 0.9)")
    g.add_argument("--quant-act-range", action=checked_action(_parse_observer),
                   metavar="{auto,minmax,mse}", default="auto",
                   help="how a training batch sets an activation range before the running "
                        "update: minmax (the paper's) or mse (the clipping of it with the least "
                        "squared quantization error: what makes 4-bit activations work); auto "
                        f"(the default): mse at {AUTO_MSE_BITS} activation bits or fewer, "
                        "minmax above")
    g.add_argument("--quant-weight-buckets", action=checked_action(_parse_buckets),
                   metavar="{row,tensor}", help="one weight range per output row or per tensor "
                                                "(default row)")
    g.add_argument("--quant-kernels", action=checked_action(_parse_kernels),
                   metavar="{exact,fake,int8,fake64}",
                   help="inference arithmetic (training always fake-quantizes): exact (integer "
                        "codes multiplied exactly, bit-identical to int8; the default, used by "
                        "validation), fake (float matmuls on dequantized values), int8 (layers that "
                        "hold only the integer codes; set by fullyqt-export int8/int6/int4), or "
                        "fake64 (fake with float64 accumulation: a slow numerical reference)")
    g.add_argument("--quant-saved-codes", action="store_true",
                   help="in training, keep what backward needs of each fake-quantized "
                        "activation as its byte codes instead of floats: a quarter of that "
                        "memory (the live tensors of an update 0.65-0.8x), the same gradients "
                        "bit for bit, a few percent more time per update")
    g.add_argument("--no-quant", action=checked_action(_no_quant_flag, True), nargs=0,
                   help="switch quantization off: the same architecture trains in float")


def set_quant_defaults(args):
    """Fill the quantization options an older or programmatic Namespace may lack."""
    for name, default in (("quant_bits", 8), ("quant_weight_bits", None), ("quant_act_bits", None),
                          ("quant_start_update", 0), ("quant_ema_momentum", 0.9),
                          ("quant_weight_buckets", "row"), ("quant_kernels", "exact"),
                          ("no_quant", False), ("quant_softmax_denominator_bits", None),
                          ("quant_act_range", "minmax"), ("quant_saved_codes", False)):
        if getattr(args, name, None) is None:
            setattr(args, name, default)


def _act_range(value, act_bits: int) -> str:
    chosen = _parse_observer("--quant-act-range", value)
    if chosen == "auto":
        return "mse" if act_bits <= AUTO_MSE_BITS else "minmax"
    return chosen


@dataclass(frozen=True)
class QuantConfig:
    weight_bits: Optional[int]  # None: no quantization
    act_bits: Optional[int]
    start_update: int = 0
    momentum: float = 0.9
    weight_buckets: str = "row"
    softmax_denominator_bits: Optional[int] = None  # None: act_bits
    act_range: str = "minmax"
    kernels: str = "exact"  # inference arithmetic (``--quant-kernels``)
    saved_codes: bool = False  # ``--quant-saved-codes``

    @classmethod
    def from_args(cls, args) -> "QuantConfig":
        """Validated config from a fairseq Namespace (raises QuantOptionError on a bad value)."""
        set_quant_defaults(args)
        kernels = _parse_kernels("--quant-kernels", args.quant_kernels)  # --model-overrides too
        if args.no_quant:
            if kernels == "int8":
                raise QuantOptionError("--quant-kernels int8 runs integer codes, which a --no-quant "
                                       "model has none of; use exact or fake, or drop --no-quant")
            if args.quant_saved_codes:
                raise QuantOptionError("--quant-saved-codes keeps fake-quantized activations as "
                                       "byte codes, which a --no-quant model has none of; drop "
                                       "one of them")
            return cls(None, None, kernels=kernels)
        bits = _parse_bits("--quant-bits", args.quant_bits)
        wbits = bits if args.quant_weight_bits is None else _parse_bits(
            "--quant-weight-bits", args.quant_weight_bits)
        abits = bits if args.quant_act_bits is None else _parse_bits(
            "--quant-act-bits", args.quant_act_bits)
        if args.quant_kernels == "int8" and max(wbits, abits) > MAX_INT8_BITS:
            raise QuantOptionError(f"--quant-kernels int8: runs weights and activations of at "
                                   f"most {MAX_INT8_BITS} bits (got {wbits}-bit weights, "
                                   f"{abits}-bit activations); use exact or fake")
        den = args.quant_softmax_denominator_bits
        return cls(wbits, abits,
                   _parse_start("--quant-start-update", args.quant_start_update),
                   _parse_momentum("--quant-ema-momentum", args.quant_ema_momentum),
                   _parse_buckets("--quant-weight-buckets", args.quant_weight_buckets),
                   None if den is None else _parse_bits("--quant-softmax-denominator-bits", den),
                   _act_range(args.quant_act_range, abits),
                   kernels, bool(args.quant_saved_codes))

    def weight(self, buckets: Optional[str] = None):
        return WeightQuantizer(self.weight_bits, buckets or self.weight_buckets, self.start_update)

    def act(self, unsigned: bool = False, clip_gradient: bool = True,
            bits: Optional[int] = None):
        """An activation quantizer at ``act_bits`` (or ``bits``, when quantization is on)."""
        bits = self.act_bits if bits is None or self.act_bits is None else bits
        return ActivationQuantizer(bits, self.momentum, unsigned, self.start_update,
                                   clip_gradient, self.act_range)
