"""A token embedding held as a sum of Kronecker products (KroneckerBERT): ``E = sum_k A_k ⊗ B_k``
with ``A_k`` of shape ``(vocab, d / n)`` and ``B_k`` of shape ``(1, n)``.

A token's row is ``sum_k A_k[token] ⊗ B_k``: one row of ``a`` read as ``(d / n, rank)`` times
``b`` ``(rank, n)``; the table is never formed.  The output projection tied to it is a
``KroneckerWeight`` over the same two parameters.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ..quant.config import QuantConfig
from .factors import KronShape
from .nearest import dense


class KroneckerEmbedding(nn.Module):
    """Drop-in for fairseq's ``embed_tokens`` (``embedding_dim``, ``padding_idx``,
    ``num_embeddings``); ``a`` is quantized per token row like a dense table, ``b`` by
    ``b_quant``."""

    def __init__(self, ks: KronShape, padding_idx: int, qcfg: QuantConfig):
        super().__init__()
        if ks.m2 != 1:
            raise ValueError(f"an embedding's second factor has one row, not {ks.m2}")
        self.ks = ks
        self.num_embeddings, self.embedding_dim = ks.shape
        self.padding_idx = padding_idx
        self.a = nn.Parameter(torch.empty(ks.m1, ks.n1 * ks.rank))
        self.b = nn.Parameter(torch.empty(ks.rank, ks.n2))
        self.weight_quant = qcfg.weight()
        self.b_quant = qcfg.weight()

    def quantized_parameters(self):
        return {"a": (self.a, self.weight_quant), "b": (self.b, self.b_quant)}

    def dequantized_weights(self):
        return {"weight": dense(self.weight_quant(self.a), self.b_quant(self.b), self.ks)}

    def forward(self, tokens):
        ks = self.ks
        rows = F.embedding(tokens, self.weight_quant(self.a), self.padding_idx)
        out = rows.view(*tokens.shape, ks.n1, ks.rank) @ self.b_quant(self.b)
        return out.reshape(*tokens.shape, self.embedding_dim)

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
                f"{self.ks}")
