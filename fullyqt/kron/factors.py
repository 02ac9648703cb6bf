"""The shapes of a Kronecker factorization ``W = sum_k A_k ⊗ B_k`` and how they are chosen.

A matrix of shape ``(m, n)`` with a second factor ``B`` of shape ``(m2, n2)`` has a first factor
``A`` of shape ``(m / m2, n / n2)``; a sum of ``rank`` products holds
``rank * (m1 * n1 + m2 * n2)`` numbers instead of ``m * n``.
"""
import math
from typing import NamedTuple, Tuple

from ..errors import UserError


class KronOptionError(UserError):
    """A Kronecker option has a value outside what is allowed, or does not fit the model."""


class KronShape(NamedTuple):
    """``A`` is ``m1 x n1``, ``B`` is ``m2 x n2``, ``rank`` products summed."""

    m1: int
    n1: int
    m2: int
    n2: int
    rank: int

    @property
    def shape(self) -> Tuple[int, int]:
        return self.m1 * self.m2, self.n1 * self.n2

    @property
    def params(self) -> int:
        return self.rank * (self.m1 * self.n1 + self.m2 * self.n2)

    @property
    def compression(self) -> float:
        m, n = self.shape
        return m * n / self.params

    def __str__(self):
        r = f"{self.rank} x " if self.rank > 1 else ""
        return f"{r}({self.m1}x{self.n1} ⊗ {self.m2}x{self.n2})"


def parse_pair(option: str, text: str) -> Tuple[int, int]:
    parts = str(text).lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise KronOptionError(f"{option}: got {text!r}; allowed: RxC with positive integers "
                              "(e.g. 2x2)")
    return int(parts[0]), int(parts[1])


def from_second(shape: Tuple[int, int], second: Tuple[int, int], rank: int, matrix: str,
                given: str = "Kronecker factor ") -> KronShape:
    """The factorization of a ``shape`` matrix whose ``B`` is ``second``; refused in one line
    when ``B`` does not divide the matrix or the sum holds as many numbers as the matrix."""
    (m, n), (m2, n2) = shape, second
    if m % m2 or n % n2:
        raise KronOptionError(f"{given}{m2}x{n2} does not divide {matrix} ({m}x{n}); "
                              f"use a second factor whose sides divide {m} and {n}")
    ks = KronShape(m // m2, n // n2, m2, n2, rank)
    if ks.params >= m * n:
        raise KronOptionError(f"{matrix} ({m}x{n}) as {ks} holds {ks.params} numbers, no fewer "
                              f"than the {m * n} of the dense matrix; use a larger second factor "
                              "or a lower --kron-rank")
    return ks


def _divisors(k: int):
    return [d for d in range(1, k + 1) if k % d == 0]


def choose(shape: Tuple[int, int], factor: float, rank: int, matrix: str,
           rows_of_b=None) -> KronShape:
    """The factorization whose compression is nearest ``factor`` (in ratio); ties go to the
    larger first factor, then to the ``B`` whose aspect is nearest the matrix's.  ``rows_of_b``
    fixes ``m2`` (1 for an embedding: one row of ``A`` per token)."""
    m, n = shape
    aspect = math.log(m / n)
    best = None
    for m2 in ([rows_of_b] if rows_of_b else _divisors(m)):
        for n2 in _divisors(n):
            ks = KronShape(m // m2, n // n2, m2, n2, rank)
            if ks.params >= m * n:
                continue
            key = (abs(math.log(ks.compression / factor)), -ks.m1 * ks.n1,
                   abs(math.log(m2 / n2) - aspect))
            if best is None or key < best[0]:
                best = (key, ks)
    if best is None:
        raise KronOptionError(f"{matrix} ({m}x{n}) has no Kronecker factorization of rank "
                              f"{rank} with fewer numbers than the dense matrix; lower "
                              "--kron-rank")
    return best[1]
