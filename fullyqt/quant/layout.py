"""Memory layouts of activations: the residual stream is a time-major view of batch-major
memory (fairseq transposes the embedded batch), and passes over it follow the memory order."""
from typing import Optional, Tuple

import torch


def memory_order(x: torch.Tensor) -> Optional[Tuple[int, ...]]:
    """The permutation of ``x``'s dims that makes it contiguous ((), if it is), or None: an
    elementwise pass may then run over its memory in order."""
    if x.is_contiguous():
        return ()
    perm = tuple(sorted(range(x.dim()), key=lambda d: (-x.stride(d), -x.shape[d])))
    return perm if x.permute(perm).is_contiguous() else None


def as_rows(x: torch.Tensor):
    """(``x`` as a matrix of its last-dim vectors in memory order, the permutation of the
    leading dims that gave it or None where they are in order already), without a copy where
    the last dim is contiguous and the rest dense; else a contiguous copy in ``x``'s order."""
    perm = memory_order(x)
    if perm and perm[-1] == x.dim() - 1:
        return x.permute(perm).reshape(-1, x.shape[-1]), perm[:-1]
    return x.reshape(-1, x.shape[-1]), None


def from_rows(y2: torch.Tensor, x: torch.Tensor, perm) -> torch.Tensor:
    """The rows ``y2`` of ``as_rows(x)`` back in ``x``'s leading dims (a view)."""
    if perm is None:
        return y2.view(*x.shape[:-1], y2.shape[-1])
    shape = [x.shape[d] for d in perm] + [y2.shape[-1]]
    inverse = [0] * len(perm)
    for i, d in enumerate(perm):
        inverse[d] = i
    return y2.view(shape).permute(*inverse, len(perm))
