"""The nearest sum of Kronecker products to a dense matrix (Van Loan & Pitsianis, 1993), and the
dense matrix a sum stands for.

Factors are stored in the layout the two-matmul product reads without copies:
``a`` is ``(m1, n1 * rank)`` with ``a[i1, j1 * rank + k] = A_k[i1, j1]`` and ``b`` is
``(rank * m2, n2)`` with ``b[k * m2 + i2, j2] = B_k[i2, j2]``.
"""
from typing import Tuple

import torch

from .factors import KronShape


def stacked(a: torch.Tensor, b: torch.Tensor, ks: KronShape):
    """``(A, B)`` as ``(rank, m1, n1)`` and ``(rank, m2, n2)`` from the stored layout."""
    return (a.reshape(ks.m1, ks.n1, ks.rank).permute(2, 0, 1),
            b.reshape(ks.rank, ks.m2, ks.n2))


def to_layout(A: torch.Tensor, B: torch.Tensor):
    """The stored ``(a, b)`` of stacked factors ``(rank, m1, n1)`` and ``(rank, m2, n2)``."""
    r, m1, n1 = A.shape
    return A.permute(1, 2, 0).reshape(m1, n1 * r), B.reshape(-1, B.shape[-1])


def dense(a: torch.Tensor, b: torch.Tensor, ks: KronShape) -> torch.Tensor:
    """``sum_k A_k ⊗ B_k`` as an ``(m, n)`` matrix."""
    A, B = stacked(a, b, ks)
    return torch.einsum("kac,kbd->abcd", A, B).reshape(ks.shape)


@torch.no_grad()
def nearest(w: torch.Tensor, ks: KronShape) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """``(a, b, relative error)``: the sum of ``ks.rank`` products nearest ``w`` in Frobenius
    norm.  ``w`` rearranged so that each ``(m2, n2)`` block is one row has rank-``r``
    approximation ``U_r S_r V_rᵀ``; the error is that of the discarded singular values."""
    m1, n1, m2, n2, r = ks
    w64 = w.detach().double()
    blocks = w64.reshape(m1, m2, n1, n2).permute(0, 2, 1, 3).reshape(m1 * n1, m2 * n2)
    u, s, vh = torch.linalg.svd(blocks, full_matrices=False)
    k = min(r, s.numel())
    root = s[:k].sqrt()
    A = torch.zeros(r, m1, n1, dtype=w64.dtype, device=w.device)
    B = torch.zeros(r, m2, n2, dtype=w64.dtype, device=w.device)
    A[:k] = (u[:, :k] * root).t().reshape(k, m1, n1)
    B[:k] = (vh[:k] * root[:, None]).reshape(k, m2, n2)
    total = float(w64.norm())
    rel = float(s[k:].square().sum().sqrt()) / total if total > 0 else 0.0
    a, b = to_layout(A, B)
    return a.to(w.dtype), b.to(w.dtype), rel
