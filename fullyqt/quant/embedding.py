"""Token embeddings and the sinusoidal position table, quantized like weights."""
import torch
import torch.nn.functional as F
from fairseq import utils
from fairseq.modules import SinusoidalPositionalEmbedding
from torch import nn

from .config import QuantConfig


class QuantEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table is quantized per row (one bucket per token) or per tensor."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, *, qcfg: QuantConfig):
        super().__init__(num_embeddings, embedding_dim, padding_idx=padding_idx)
        self.weight_quant = qcfg.weight()

    def quantized_parameters(self):
        return {"weight": (self.weight, self.weight_quant)}

    def dequantized_weights(self):
        return {"weight": self.weight_quant(self.weight)}

    def forward(self, tokens):
        return F.embedding(tokens, self.weight_quant(self.weight), self.padding_idx)


class QuantSinusoidalPositionalEmbedding(SinusoidalPositionalEmbedding):
    """The fixed sinusoidal table, quantized once with the weight bucketing (rows = positions)."""

    def __init__(self, num_positions, embedding_dim, padding_idx, *, qcfg: QuantConfig):
        super().__init__(embedding_dim, padding_idx, init_size=num_positions + padding_idx + 1)
        self.weight_quant = qcfg.weight()

    def quantized_parameters(self):
        """The table (not a parameter, not saved: listed for the coverage listing)."""
        return {"weights": (self.weights, self.weight_quant)}

    def dequantized_weights(self):
        return {}  # rebuilt by every stock model

    def table(self) -> torch.Tensor:
        with torch.no_grad():
            return self.weight_quant(self.weights)

    def forward(self, tokens, incremental_state=None, timestep=None, positions=None):
        bsz, seq_len = tokens.shape
        if self.padding_idx + 1 + seq_len > self.weights.size(0):
            raise ValueError(f"sequence of {seq_len} tokens is longer than the "
                             f"{self.weights.size(0) - self.padding_idx - 1} positions of the table")
        table = self.table()
        if incremental_state is not None:
            pos = timestep.view(-1)[0] + 1 if timestep is not None else seq_len
            return table[self.padding_idx + pos, :].expand(bsz, 1, -1)
        positions = utils.make_positions(tokens, self.padding_idx)
        return F.embedding(positions, table)
