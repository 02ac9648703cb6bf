"""Which arithmetic multiplies int8 codes on this processor, and the exact product by it.

``torch._int_mm`` is fast where the CPU has int8 dot-product instructions (VNNI, AMX) and can be
tens of times slower than a float32 matmul where it has not (measured: 30x at d=128 on an AVX2
AMD EPYC).  A float32 matmul of the codes is exact as long as every partial sum stays within
float32's exact integers: ``128 * 128 * K <= 2^24``, so for ``K <= 1024``; longer products run
in chunks of 1024 whose exact sums add in int32.  Both give the same int32 sums, so the choice
changes speed only.  It is measured once per process on a d=512 product (``FULLYQT_INT_MATMUL=
int8|float32`` fixes it); GPU tensors always take ``torch._int_mm``.
"""
import functools
import logging
import os
import time

import torch

from ..errors import one_of

logger = logging.getLogger(__name__)

ENGINES = ("int8", "float32")
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
        return one_of(ENGINES)(ENV, forced)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (64, 512), dtype=torch.int8, generator=g)
    b = torch.randint(-128, 128, (512, 512), dtype=torch.int8, generator=g)
    bf = b.float()
    t_int = _seconds(lambda: torch._int_mm(a, b))
    t_float = _seconds(lambda: a.float() @ bf)
    choice = "int8" if t_int <= t_float else "float32"
    logger.info("fullyqt: int8 codes multiply as %s here (torch._int_mm %.2fx the time of a "
                "float32 matmul of the codes)", choice, t_int / t_float)
    return choice


def engine(device: torch.device) -> str:
    """The engine for products on ``device``: ``torch._int_mm`` on a GPU, and on a CPU also
    where float32 matmuls may round (``torch.set_float32_matmul_precision`` below highest)."""
    if device.type != "cpu" or torch.get_float32_matmul_precision() != "highest":
        return "int8"
    return cpu_engine()


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
