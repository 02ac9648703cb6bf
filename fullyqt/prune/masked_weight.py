"""A block-masked weight: the layer's weight times the binary mask of its block scores.

One ``WeightSource`` subclass: training, ``exact`` evaluation, the int8 kernels, the exports and
the coverage listing read the masked weight through it.  The weight quantizer's grids are
symmetric (0.0 is a grid point), so a pruned entry is exactly 0.0 once quantized.

``gate_from`` names the layer whose outputs this layer reads (V for the attention output
projection, fc1 for fc2): an input whose producing row is pruned whole is switched off here too,
since that input would be a constant of biases and quantization offsets.  A head (FFN unit) is
then gone exactly when its output columns are all zero, which is what compaction removes.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from ..quant.integer_form import IntegerMatmul
from ..quant.mode_caches import DropCachesOnModeSwitch
from ..quant.weight_source import WeightSource, tensor_version
from .scores import BlockScores


class BlockMaskedWeight(DropCachesOnModeSwitch, WeightSource):
    def __init__(self, scores: BlockScores, block: Tuple[int, int], pruner, *,
                 owns_scores: bool = True, transpose: bool = False, gate_from=None):
        super().__init__()
        if owns_scores:
            self.scores = scores
        else:  # shared with another layer, which saves it
            self.__dict__["scores"] = scores
        self.block = block
        self.transpose = transpose
        self.__dict__["pruner"] = pruner
        self.__dict__["gate_from"] = gate_from
        self._cache = None

    def drop_caches(self):
        self._cache = None

    def block_mask(self) -> torch.Tensor:
        m = self.pruner.mask(self.scores)
        return m.t() if self.transpose else m

    def _expand(self, m: torch.Tensor, shape) -> torch.Tensor:
        (r, c), (nr, nc) = self.block, m.shape
        return m.view(nr, 1, nc, 1).expand(nr, r, nc, c).reshape(shape)

    @torch.no_grad()
    def dead_rows(self, layer) -> torch.Tensor:
        """Rows whose every block is pruned (bool, one per output)."""
        return (self.block_mask().sum(1) == 0).repeat_interleave(self.block[0])

    @torch.no_grad()
    def block_energy(self, layer) -> torch.Tensor:
        """Sum of the squared weights in each block, shaped like the scores."""
        (r, c), w = self.block, layer.weight.detach().float()
        e = w.pow(2).view(w.shape[0] // r, r, w.shape[1] // c, c).sum((1, 3))
        return e.t() if self.transpose else e

    def _gate(self) -> Optional[torch.Tensor]:
        if self.gate_from is None:
            return None
        return (~self.gate_from.source.dead_rows(self.gate_from)).float()

    @torch.no_grad()
    def element_mask(self, layer) -> torch.Tensor:
        """The 0/1 mask of every weight entry, gating included."""
        m = self._expand(self.block_mask(), layer.weight.shape)
        gate = self._gate()
        return m if gate is None else m * gate.to(m.dtype)

    @torch.no_grad()
    def kept(self, layer) -> torch.Tensor:
        """How many weight entries ``element_mask`` keeps, from the block mask alone."""
        m, (r, c) = self.block_mask(), self.block
        gate = self._gate()
        if gate is None:
            return m.sum() * (r * c)
        return (m @ gate.to(m.dtype).view(m.shape[1], c).sum(1)).sum() * r

    def masked(self, layer) -> torch.Tensor:
        w = layer.weight
        rows, cols = w.shape
        m = self.block_mask().to(w.dtype)
        r, c = self.block
        out = (w.view(m.shape[0], r, m.shape[1], c) * m.view(m.shape[0], 1, m.shape[1], 1))
        out = out.view(rows, cols)
        gate = self._gate()
        return out if gate is None else out * gate.to(w.dtype)

    def _masked_cached(self, layer) -> torch.Tensor:
        if layer.training or torch.is_grad_enabled():
            self._cache = None
            return self.masked(layer)
        key = self.version(layer)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self.masked(layer))
        return self._cache[1]

    def quantized_tensors(self, layer):
        return {"weight": (self._masked_cached(layer).detach(), layer.weight_quant)}

    def dense_weights(self, layer):
        return {"weight": layer.weight_quant(self._masked_cached(layer).detach())}

    def linear(self, layer, x, bias, valid=None):
        return F.linear(x, layer.weight_quant(self._masked_cached(layer)).to(x.dtype), bias)

    def integer_form(self, layer, input_grid):
        codes, grid = layer.weight_quant.codes(self._masked_cached(layer).detach())
        return IntegerMatmul(codes, grid, input_grid,
                             None if layer.bias is None else layer.bias.detach())

    def version(self, layer):
        key = (tensor_version(layer.weight) + tensor_version(self.scores.raw)
               + tensor_version(self.scores.scale) + self.pruner.version())
        if self.gate_from is not None:
            key += self.gate_from.source.version(self.gate_from)
        return key
