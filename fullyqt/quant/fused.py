"""One-pass CPU kernels (``kernels/*.c``, one file per job) for float32 tensors: fake
quantization with its straight-through mask, an activation quantizer's whole training step
(range, running update, fake quantization), the backward mask, the quantized layer norm's
backward and evaluation (its row means summed in torch's order, ``row_sum.h``), the quantized
softmax of exact evaluation, padding-masked ranges, integer codes, the integer matmul's affine
over its sums, exact int16 products of codes (the whole integer linear layer in one call), and
exact attention's two products of codes.

Built on first use with the system C compiler for this processor (``-O3 -march=native``, no
contracted multiply-adds, so the values equal the torch ops bit for bit) and cached under
``$XDG_CACHE_HOME/fullyqt`` (``~/.cache/fullyqt``); loaded with ctypes, so no torch headers and
a build well under a second.  Without a compiler (or a writable cache), or with
``FULLYQT_FUSED_QUANT=0``, ``kernel()`` is None and the quantizers run the torch ops (GPU tensors
always do).
"""
import contextlib
import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from typing import Optional

import torch

from .layout import memory_order

logger = logging.getLogger(__name__)

KERNELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
# Compiled together into one library; grid.h holds the arithmetic they share.
SOURCES = [os.path.join(KERNELS, name) for name in (
    "attention.c", "fake_quantize.c", "integer_affine.c", "int16_gemm.c", "layer_norm.c",
    "softmax.c", "grid.h", "row_sum.h")]
FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-shared",
         "-fPIC"]
_state = {"lib": None, "tried": False, "off": False}

_p, _i64, _f32, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
# Every exported function: (argument types, return type), in the order of the C prototypes.
SIGNATURES = {
    # attention.c
    "fullyqt_attention_scores": ([_p, _p, _i64, _i64, _i64, _i64, _i64, _p, _int, _p, _p, _p,
                                  _int], None),
    "fullyqt_attention_values": ([_p, _p, _i64, _i64, _i64, _i64, _p, _int, _p, _int], None),
    # fake_quantize.c
    "fullyqt_fake_quantize": ([_p, _p, _p, _p, _i64, _i64, _p, _p, _p, _int, _int], _int),
    "fullyqt_fake_quantize_one": ([_p, _p, _i64, _f32, _f32, _f32, _int], None),
    "fullyqt_codes": ([_p, _p, _i64, _f32, _f32, _f32, _int], None),
    "fullyqt_quantized_codes": ([_p, _p, _i64, _f32, _f32, _f32, _int], None),
    "fullyqt_masked_min_max": ([_p, _p, _i64, _i64, _p, _int], None),
    "fullyqt_observe_fake_quantize": ([_p, _p, _i64, _i64, _p, _p, _f32, _f32, _int, _int, _p,
                                       _p, _p, _int], _int),
    "fullyqt_pass_inside": ([_p, _p, _p, _i64, _int], None),
    "fullyqt_grid_values": ([_p, _p, _i64, _f32, _f32, _int], None),
    # integer_affine.c
    "fullyqt_centred_codes": ([_p, _p, _p, _i64, _i64, _f32, _f32, _f32, _f32, _int], None),
    "fullyqt_int_affine": ([_p, _int, _p, _p, _p, _p, _i64, _i64, _int], None),
    # int16_gemm.c
    "fullyqt_int16_vectorized": ([], _int),
    "fullyqt_int16_gemm": ([_p, _i64, _i64, _p, _i64, _p, _int], None),
    "fullyqt_int_linear": ([_p, _i64, _i64, _f32, _f32, _f32, _f32, _p, _i64, _p, _p, _p, _p,
                            _int], _int),
    # layer_norm.c
    "fullyqt_layer_norm_backward": ([_p] * 9 + [_i64, _i64, _p, _p, _int], None),
    "fullyqt_layer_norm_numerator": ([_p, _p, _p, _i64, _i64, _f32, _f32, _f32, _int], None),
    "fullyqt_layer_norm_moments": ([_p, _p, _p, _i64, _i64, _f32, _f32, _f32, _f32, _int, _int],
                                   None),
    "fullyqt_layer_norm_output": ([_p, _p, _p, _p, _p, _i64, _i64, _p, _int], None),
    "fullyqt_row_means": ([_p, _i64, _i64, _int, _p, _p], None),
    # softmax.c
    "fullyqt_softmax_codes": ([_p, _i64, _i64, _p, _f32, _f32, _int, _p, _p, _int], None),
}


def _processor() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _build() -> Optional[str]:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        logger.info("fused fake quantization off: no C compiler (the torch ops run instead)")
        return None
    sources = []
    for name in SOURCES:
        with open(name, "rb") as f:
            sources.append(f.read())
    key = hashlib.sha1(b"\0".join([*sources, " ".join(FLAGS).encode(), compiler.encode(),
                                   _processor().encode()])).hexdigest()[:16]
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "fullyqt")
    path = os.path.join(cache, f"kernels-{key}.so")
    if os.path.exists(path):
        return path
    os.makedirs(cache, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache)
    os.close(fd)
    done = subprocess.run([compiler, *FLAGS, *[c for c in SOURCES if c.endswith(".c")], "-o", tmp],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        logger.info("fused fake quantization off: %s failed (%s); the torch ops run instead",
                    compiler, (done.stderr.strip().splitlines() or ["no message"])[-1])
        return None
    os.replace(tmp, path)  # atomic: concurrent builders leave one complete file
    return path


@contextlib.contextmanager
def switched_off(off: bool = True):
    """Within it (when ``off``), the quantizers run the torch ops: to time the kernel against
    them in one process."""
    before, _state["off"] = _state["off"], off
    try:
        yield
    finally:
        _state["off"] = before


def kernel():
    """The loaded library, or None (no compiler, or switched off)."""
    if _state["off"]:
        return None
    if not _state["tried"]:
        _state["tried"] = True
        if os.environ.get("FULLYQT_FUSED_QUANT", "1") != "0":
            try:
                path = _build()
                lib = None if path is None else ctypes.CDLL(path)
            except OSError as e:  # an unwritable cache, a library that does not load
                logger.info("fused fake quantization off (%s); the torch ops run instead", e)
                lib = None
            if lib is not None:
                for name, (argtypes, restype) in SIGNATURES.items():
                    function = getattr(lib, name)
                    function.argtypes, function.restype = argtypes, restype
                _state["lib"] = lib
    return _state["lib"]


def applies(x: torch.Tensor, lo: Optional[torch.Tensor] = None) -> bool:
    """Whether the kernel takes ``x`` with range ``lo`` (None: one range given as numbers): CPU
    float32; one range over a tensor laid out densely in any order of its dims, or one range per
    row of a contiguous matrix."""
    if lo is None:  # the common case, taken at every call of evaluation: checked the shortest way
        return (x.dtype == torch.float32 and x.device.type == "cpu"
                and memory_order(x) is not None and kernel() is not None)
    if not (x.device.type == "cpu" and x.dtype == torch.float32 and lo.dtype == torch.float32
            and lo.device.type == "cpu"):
        return False
    one = lo.numel() == 1 and lo.dim() <= x.dim() and memory_order(x) is not None
    rows = x.dim() == 2 and x.is_contiguous() and tuple(lo.shape) == (x.shape[0], 1)
    return (one or rows) and kernel() is not None


def fake_quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, step: torch.Tensor,
                  mask: bool, codes: bool = False):
    """(values on the grid, bool mask of ``lo <= x <= hi``, uint8 codes ``k`` of the values), in
    one pass over ``x``; the mask is None when not asked for or when it is all True (no value
    clipped: the straight-through gradient is the gradient itself); the codes are None when
    not asked for or when one is NaN.  Only where ``applies(x, lo)``."""
    lo, hi, step = (t.detach().float().contiguous() for t in (lo, hi, step))
    # x's layout (dense, in some order of its dims): one elementwise pass over memory in order
    out = torch.empty_like(x)
    inside = torch.empty_like(x, dtype=torch.bool) if mask else None
    k = torch.empty_like(x, dtype=torch.uint8) if codes else None
    per_row = lo.numel() > 1
    rows = x.shape[0] if per_row else 1
    flags = kernel().fullyqt_fake_quantize(
        x.data_ptr(), out.data_ptr(), _ptr(inside), _ptr(k), rows, x.numel() // max(rows, 1),
        lo.data_ptr(), hi.data_ptr(), step.data_ptr(), int(per_row), torch.get_num_threads())
    return _outputs(out, inside, k, flags)


def _ptr(t: Optional[torch.Tensor]):
    return None if t is None else t.data_ptr()


def _outputs(out, inside, k, flags: int):
    """The kernels' (values, mask, codes) after their flags: 1, a value was clipped (else no
    mask is needed); 2, a code is NaN (the codes do not hold the values)."""
    return out, inside if flags & 1 else None, None if flags & 2 else k


def _one_range(name: str, x: torch.Tensor, lo: float, hi: float, step: float) -> torch.Tensor:
    """Kernel ``name``'s elementwise pass over ``x`` with one range (float32 values given as
    numbers), into a tensor laid out as ``x``: a pass over memory in order."""
    out = torch.empty_like(x)
    getattr(kernel(), name)(x.data_ptr(), out.data_ptr(), x.numel(), lo, hi, step,
                            torch.get_num_threads())
    return out


def fake_quantize_one(x: torch.Tensor, lo: float, hi: float, step: float) -> torch.Tensor:
    """``fake_quantize``'s values for one range given as numbers (float32 values), no mask;
    only where ``applies(x)``."""
    return _one_range("fullyqt_fake_quantize_one", x, lo, hi, step)


def pass_inside(grad: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``grad`` where ``inside``, 0 elsewhere (the straight-through gradient), in one pass when
    both lie alike in memory on CPU; else ``torch.where``."""
    if (grad.stride() == inside.stride() and grad.shape == inside.shape and applies(grad)
            and inside.dtype == torch.bool):
        out = torch.empty_like(grad)
        kernel().fullyqt_pass_inside(grad.data_ptr(), inside.data_ptr(), out.data_ptr(),
                                     grad.numel(), torch.get_num_threads())
        return out
    return torch.where(inside, grad, grad.new_zeros(()))


def codes(x: torch.Tensor, lo: float, hi: float, step: float) -> torch.Tensor:
    """Float32 codes of ``x`` on one range (float32 values given as numbers), in one pass; only
    where ``applies(x)``."""
    return _one_range("fullyqt_codes", x, lo, hi, step)


def quantized_codes(x: torch.Tensor, lo: float, hi: float, step: float) -> torch.Tensor:
    """``codes(fake_quantize_one(x, ...), ...)`` in one pass (float32 values given as numbers);
    only where ``applies(x)``."""
    return _one_range("fullyqt_quantized_codes", x, lo, hi, step)


def grid_values(codes: torch.Tensor, lo: float, step: float) -> torch.Tensor:
    """``k * step + lo`` of uint8 codes on one range (float32 values given as numbers; the
    result laid out as ``codes``): bit for bit the values ``fake_quantize`` gave with them."""
    out = torch.empty_like(codes, dtype=torch.float32)
    kernel().fullyqt_grid_values(codes.data_ptr(), out.data_ptr(), codes.numel(), lo, step,
                                 torch.get_num_threads())
    return out


def centred_codes(x: torch.Tensor, affine):
    """(int8 codes, float32 row sums of the codes) of a CPU float32 matrix from
    ``Grid.centred_code_affine``, in one pass; None where the kernel does not apply."""
    if not (x.dim() == 2 and x.is_contiguous() and applies(x)):
        return None
    scale_inv, shift, cmin, cmax = affine
    codes = torch.empty(x.shape, dtype=torch.int8)
    sums = torch.empty(x.shape[0], dtype=torch.int32)
    kernel().fullyqt_centred_codes(x.data_ptr(), codes.data_ptr(), sums.data_ptr(), x.shape[0],
                                   x.shape[1], scale_inv, shift, cmin, cmax,
                                   torch.get_num_threads())
    return codes, sums.float()


PANEL = 16  # columns of a panel of packed int16 weight codes (NR in int16_gemm.c)
TILE_ROWS = 4  # input rows of a tile (MR there)


def int16_products() -> bool:
    """Whether ``int16_gemm.c`` was built with its vector instructions (AVX2) here: without
    them it runs, exactly, but slower than a float32 matmul."""
    lib = kernel()
    return lib is not None and bool(lib.fullyqt_int16_vectorized())


def pack_int16(w: torch.Tensor) -> torch.Tensor:
    """The (k, n) integer codes ``w`` in ``int16_gemm.c``'s panels: (panels, k / 2, PANEL, 2)
    int16, an odd k and the last panel's missing columns zero."""
    k, n = w.shape
    kp, cols = k + k % 2, -(-n // PANEL) * PANEL
    padded = torch.zeros(kp, cols, dtype=torch.int16, device=w.device)
    padded[:k, :n] = w
    return padded.view(kp // 2, 2, cols // PANEL, PANEL).permute(2, 0, 3, 1).contiguous()


def int16_gemm(a: torch.Tensor, packed: torch.Tensor, n: int) -> torch.Tensor:
    """int32 ``a @ w`` of integer codes ``a`` (rows x k, any dtype) and ``w`` packed by
    ``pack_int16``, exact; only where ``int16_products()``."""
    rows, k = a.shape
    codes = torch.zeros(-(-rows // TILE_ROWS) * TILE_ROWS, packed.shape[1] * 2,
                        dtype=torch.int16)
    codes[:rows, :k] = a
    out = torch.empty(rows, n, dtype=torch.int32)
    kernel().fullyqt_int16_gemm(codes.data_ptr(), rows, codes.shape[1], packed.data_ptr(), n,
                                out.data_ptr(), torch.get_num_threads())
    return out


def int_linear(x: torch.Tensor, affine, packed: torch.Tensor, alpha: torch.Tensor,
               beta: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``IntegerMatmul``'s output for contiguous CPU float32 rows ``x`` in one call: the
    centred codes (``affine`` from ``Grid.centred_code_affine``), the exact sums with the
    packed weight codes, the affine of ``alpha``, ``beta``, ``c``; only where
    ``int16_products()``."""
    rows, k = x.shape
    y = torch.empty(rows, alpha.numel())
    if kernel().fullyqt_int_linear(x.data_ptr(), rows, k, *affine, packed.data_ptr(),
                                   alpha.numel(), alpha.data_ptr(), beta.data_ptr(),
                                   c.data_ptr(), y.data_ptr(), torch.get_num_threads()):
        raise MemoryError(f"int16_gemm.c: no memory for the codes of {rows} x {k} inputs")
    return y


def attention_scores(q: torch.Tensor, k: torch.Tensor, terms: torch.Tensor, flags: int,
                     mask: Optional[torch.Tensor], key_pad: Optional[torch.Tensor]):
    """Exact attention's Q·Kᵀ from contiguous float32 codes ``q`` (batch, heads, t, d) and ``k``
    (batch, heads, s, d) (``terms``/``flags``: ``codes_matmul``'s float32 terms), plus ``mask``
    (t, s), -inf where ``key_pad`` (batch, s) is set, minus each row's max (0 where it is not
    finite): ``exp`` of it is the softmax numerator; only where ``applies(q)``."""
    b, heads, t, d = q.shape
    out = torch.empty(b, heads, t, k.shape[2])
    kernel().fullyqt_attention_scores(
        q.data_ptr(), k.data_ptr(), b * heads, heads, t, k.shape[2], d, terms.data_ptr(), flags,
        _ptr(mask), _ptr(key_pad), out.data_ptr(), torch.get_num_threads())
    return out


def attention_values(p: torch.Tensor, v: torch.Tensor, terms: torch.Tensor, flags: int):
    """Exact attention's P·V from contiguous float32 codes ``p`` (batch, heads, t, s) and ``v``
    (batch, heads, s, d); only where ``applies(p)``."""
    b, heads, t, s = p.shape
    out = torch.empty(b, heads, t, v.shape[3])
    kernel().fullyqt_attention_values(p.data_ptr(), v.data_ptr(), b * heads, t, s, v.shape[3],
                                      terms.data_ptr(), flags, out.data_ptr(),
                                      torch.get_num_threads())
    return out


def row_layout(x: torch.Tensor, valid: Optional[torch.Tensor]):
    """(x as rows in memory order, the contiguous padding mask of those rows or None, rows) for
    a masked pass over ``x`` whose leading-dims index is set in ``valid`` (None: all); None
    where the kernel does not apply."""
    if not applies(x):
        return None
    lead = 0 if valid is None else valid.dim()
    if valid is not None and not (valid.dtype == torch.bool
                                  and tuple(valid.shape) == tuple(x.shape[:lead])):
        return None
    perm = memory_order(x)
    if perm:  # x lies in another order of its leading dims (a (T, B, C) transpose): follow it
        if tuple(perm[lead:]) != tuple(range(lead, x.dim())):
            return None
        x = x.permute(perm)
        valid = None if valid is None else valid.permute(perm[:lead])
    valid = None if valid is None else valid.contiguous()
    return x, valid, x.shape[:lead].numel() if valid is not None else 1


def int_affine(sums: torch.Tensor, code_sums: torch.Tensor, alpha: torch.Tensor,
               beta: torch.Tensor, c: torch.Tensor):
    """``IntegerMatmul``'s affine over its ``sums`` (rows x cols, contiguous, int32 or float32
    exact integers), written over them as float32 in one pass; None (nothing written) where the
    kernel does not apply."""
    vectors = (code_sums, alpha, beta, c)
    if not (sums.dim() == 2 and sums.dtype in (torch.int32, torch.float32)
            and sums.is_contiguous() and sums.device.type == "cpu" and kernel() is not None
            and all(v.dtype == torch.float32 and v.is_contiguous() and v.device.type == "cpu"
                    for v in vectors)
            and code_sums.numel() == sums.shape[0]
            and alpha.numel() == beta.numel() == c.numel() == sums.shape[1]):
        return None
    kernel().fullyqt_int_affine(sums.data_ptr(), int(sums.dtype == torch.float32),
                                code_sums.data_ptr(), alpha.data_ptr(), beta.data_ptr(),
                                c.data_ptr(), sums.shape[0], sums.shape[1],
                                torch.get_num_threads())
    return sums.view(torch.float32)


def masked_min_max(x: torch.Tensor, valid: Optional[torch.Tensor]):
    """(min, max) float32 scalars of the entries of ``x`` whose leading-dims index is set in
    ``valid`` (None: all), in one pass; None where the kernel does not apply."""
    layout = row_layout(x, valid)
    if layout is None:
        return None
    x, valid, rows = layout
    out = torch.empty(2)
    kernel().fullyqt_masked_min_max(x.data_ptr(), None if valid is None else valid.data_ptr(),
                                    rows, x.numel() // max(rows, 1), out.data_ptr(),
                                    torch.get_num_threads())
    return out[0], out[1]


def observe_fake_quantize(x: torch.Tensor, layout, lo: torch.Tensor, hi: torch.Tensor,
                          momentum: float, unsigned: bool, top: int, mask: bool,
                          codes: bool = False):
    """An initialized running min-max range's training step in one pass over ``x`` with
    ``layout = row_layout(x, valid)``: the batch's range updates ``lo``/``hi`` (float32 CPU
    scalars, in place: their versions move) by ``momentum``, and ``x`` is fake-quantized on the
    new grid of ``top + 1`` levels; returns (values, mask, codes) as ``fake_quantize``."""
    rows_x, valid, rows = layout
    out = torch.empty_like(x)  # x's layout: the quantization runs over memory in order
    inside = torch.empty_like(x, dtype=torch.bool) if mask else None
    k = torch.empty_like(x, dtype=torch.uint8) if codes else None
    flags = kernel().fullyqt_observe_fake_quantize(
        x.data_ptr(), _ptr(valid), rows, rows_x.numel() // max(rows, 1), lo.data_ptr(),
        hi.data_ptr(), momentum, 1.0 - momentum, int(unsigned), top, out.data_ptr(),
        _ptr(inside), _ptr(k), torch.get_num_threads())
    torch.autograd.graph.increment_version((lo, hi))
    return _outputs(out, inside, k, flags)


def layer_norm_backward(grad, num, quot, den, root, gain, in_out, in_quot, in_num):
    """(grad of x, of the gain, of the bias) of ``QuantLayerNorm``'s chain from the gradient of
    its output, all as contiguous float32 rows (``den``, ``root``: one per row; a mask None where
    nothing was clipped), in one pass over the rows; only where ``applies(grad)``."""
    rows, cols = grad.shape
    blocks = max(1, min(torch.get_num_threads(), rows * cols // 32768))
    grad_x = torch.empty_like(grad)
    partial = torch.empty(blocks, 2, cols)
    kernel().fullyqt_layer_norm_backward(
        grad.data_ptr(), num.data_ptr(), quot.data_ptr(), den.data_ptr(), root.data_ptr(),
        gain.data_ptr(), _ptr(in_out), _ptr(in_quot), _ptr(in_num), rows, cols,
        grad_x.data_ptr(), partial.data_ptr(), blocks)
    sums = partial.sum(0)
    return grad_x, sums[1], sums[0]


def layer_norm_numerator(x: torch.Tensor, mean: torch.Tensor, grid) -> torch.Tensor:
    """``QuantLayerNorm``'s frozen numerator Q(x - mean) of contiguous float32 rows (``mean``
    one per row; ``grid`` (lo, hi, step) floats), in one pass; only where ``applies(x)``."""
    rows, cols = x.shape
    out = torch.empty_like(x)
    kernel().fullyqt_layer_norm_numerator(x.data_ptr(), mean.contiguous().data_ptr(),
                                          out.data_ptr(), rows, cols, *grid,
                                          torch.get_num_threads())
    return out


def layer_norm_output(num: torch.Tensor, root: torch.Tensor, gain: torch.Tensor,
                      bias: torch.Tensor, grids) -> torch.Tensor:
    """``QuantLayerNorm``'s frozen Q(Q(num / Q(root)) * gain + bias) of contiguous float32 rows
    (``root`` one per row; ``grids``: the denominator's, quotient's and output's (lo, hi,
    step)), in one pass; only where ``applies(num)``."""
    rows, cols = num.shape
    numbers = (ctypes.c_float * 9)(*grids[0], *grids[1], *grids[2])
    out = torch.empty_like(num)
    kernel().fullyqt_layer_norm_output(
        num.data_ptr(), root.contiguous().data_ptr(), gain.contiguous().data_ptr(),
        bias.contiguous().data_ptr(), out.data_ptr(), rows, cols, numbers,
        torch.get_num_threads())
    return out


def row_means(x: torch.Tensor, lanes: int):
    """(mean, mean of squares) of each row of contiguous float32 ``x`` summed in torch's order
    for vectors of ``lanes`` floats."""
    rows, cols = x.shape
    mean, square_mean = torch.empty(rows), torch.empty(rows)
    kernel().fullyqt_row_means(x.data_ptr(), rows, cols, lanes, mean.data_ptr(),
                               square_mean.data_ptr())
    return mean, square_mean


_LANES = {}  # row width -> the vector width whose summation order gives torch's means, or 0


def sum_lanes(cols: int) -> int:
    """The width of torch's float vectors as its row sums of ``cols`` values show it (the one
    of 8, 16, 4 and 1 whose order gives ``Tensor.mean``'s bits on a probe of varied
    magnitudes), or 0 where none does: the kernels' means then cannot stand in for torch's."""
    if cols not in _LANES:
        g = torch.Generator().manual_seed(cols)
        probe = torch.randn(256, cols, generator=g) * torch.exp(
            torch.randn(256, cols, generator=g) * 4)
        want = (probe.mean(-1), probe.pow(2).mean(-1))
        _LANES[cols] = next((lanes for lanes in (8, 16, 4, 1) if cols < 32768 and all(
            torch.equal(a, b) for a, b in zip(row_means(probe, lanes), want))), 0)
    return _LANES[cols]


def layer_norm_evaluate(x: torch.Tensor, gain: torch.Tensor, bias: torch.Tensor, grids,
                        eps: float) -> Optional[torch.Tensor]:
    """``QuantLayerNorm``'s frozen chain of contiguous float32 rows (``grids``: the numerator's,
    denominator's, quotient's and output's (lo, hi, step)) in two kernel passes around torch's
    square root of one value per row, or None where this processor's torch sums rows in an
    order the kernel does not know."""
    rows, cols = x.shape
    lanes = sum_lanes(cols)
    if not lanes:
        return None
    num, var = torch.empty_like(x), torch.empty(rows, 1)
    kernel().fullyqt_layer_norm_moments(x.data_ptr(), num.data_ptr(), var.data_ptr(), rows, cols,
                                        *grids[0], eps, lanes, torch.get_num_threads())
    return layer_norm_output(num, var.sqrt_(), gain, bias, grids[1:])


def softmax_codes(e: torch.Tensor, grids, sum_scale: float, sum_shift: float, den_on: bool,
                  want_probs: bool):
    """(probabilities or None, their float32 codes) of the quantized softmax of exact evaluation
    from contiguous float32 ``e = exp(scores - row max)`` (``grids``: the numerator's,
    denominator's and output's (lo, hi, step), nine floats), in one pass over the rows; only
    where ``applies(e)``."""
    g = torch.tensor(grids, dtype=torch.float32)
    codes = torch.empty_like(e)
    probs = torch.empty_like(e) if want_probs else None
    kernel().fullyqt_softmax_codes(e.data_ptr(), e.numel() // max(e.shape[-1], 1), e.shape[-1],
                                   g.data_ptr(), sum_scale, sum_shift, int(den_on), _ptr(probs),
                                   codes.data_ptr(), torch.get_num_threads())
    return probs, codes
