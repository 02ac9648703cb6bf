"""Which arithmetic multiplies int8 codes on this processor, and the exact product by it.

``torch._int_mm`` is fast where the CPU has int8 dot-product instructions (VNNI, AMX) and can be
tens of times slower than a float32 matmul where it has not (measured: 30x at d=128 on an AVX2
AMD EPYC).  There, the codes as int16 multiply in pairs into int32 (``kernels/int16_gemm.c``,
AVX2's vpmaddwd), more multiply-adds per cycle than float32 FMA.  A float32 matmul of the codes
is exact as long as every partial sum stays within float32's exact integers: ``128 * 128 * K <=
2^24``, so for ``K <= 1024``; longer products run in chunks of 1024 whose exact sums add in
int32.  All give the same int32 sums, so the choice changes speed only.  It is measured once
per process on a d=512 product (``FULLYQT_INT_MATMUL=int8|float32|int16`` fixes it); GPU
tensors always take ``torch._int_mm``.
"""
import functools
import logging
import os
import time

import torch

from . import fused
from ..errors import UserError, one_of

logger = logging.getLogger(__name__)

ENGINES = ("int8", "float32", "int16")
CHUNK = 1024  # the longest product of int8 codes whose float32 partial sums are all exact
ENV = "FULLYQT_INT_MATMUL"


def _seconds(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@functools.lru_cache(maxsize=None)
def cpu_engine() -> str:
    """The engine of CPU products: ``$FULLYQT_INT_MATMUL``, else the faster one measured here."""
    forced = os.environ.get(ENV)
    if forced:
        choice = one_of(ENGINES)(ENV, forced)
        if choice == "int16" and not fused.int16_products():
            raise UserError(f"{ENV}: got 'int16', whose kernel needs AVX2, not built here; "
                            "allowed: int8, float32")
        return choice
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (64, 512), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (512, 512), dtype=torch.int8, generator=g)
    bf = b.float()
    times = {"int8": _seconds(lambda: torch._int_mm(a, b)),
             "float32": _seconds(lambda: a.float() @ bf)}
    if fused.int16_products():
        packed = fused.pack_int16(b)
        times["int16"] = _seconds(lambda: fused.int16_gemm(a, packed, 512))
    choice = min(times, key=times.get)
    logger.info("fullyqt: int8 codes multiply as %s here (time of a d=512 product: %s)", choice,
                ", ".join(f"{k} {v / times['float32']:.2f}x" for k, v in times.items()))
    return choice


def engine(device: torch.device) -> str:
    """The engine for products on ``device``: ``torch._int_mm`` on a GPU, and on a CPU also
    where float32 matmuls may round (``torch.set_float32_matmul_precision`` below highest) and
    they were the choice (or int16's, with the C kernels switched off: ``fused.switched_off``)."""
    if device.type != "cpu":
        return "int8"
    choice = cpu_engine()
    if choice == "int16" and fused.kernel() is None:  # the kernels switched off for a while
        choice = "float32"
    if choice == "float32" and torch.get_float32_matmul_precision() != "highest":
        return "int8"
    return choice


def float_products(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of float32 matrices of int8 values: float32 sums where ``K <= CHUNK`` (exact
    integers), else int32 sums of exact chunks."""
    k = a.shape[1]
    if k <= CHUNK:
        return a @ b
    total = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int32, device=a.device)
    for s in range(0, k, CHUNK):
        total += (a[:, s:s + CHUNK] @ b[s:s + CHUNK]).to(torch.int32)
    return total
