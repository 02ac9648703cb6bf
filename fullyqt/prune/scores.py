"""Learned block scores and the binary masks made from them (straight-through to the scores)."""
import math

import torch
from torch import nn


class _StraightThrough(torch.autograd.Function):
    """Forward: the binary mask; backward: the mask's gradient goes to the scores unchanged, so
    ``dL/dS = sum over the block of dL/dW' * W`` (movement pruning)."""

    @staticmethod
    def forward(ctx, scores, hard):
        return hard

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def keep_top(scores: torch.Tensor, density: float) -> torch.Tensor:
    """1.0 for the ``ceil(density * n)`` largest scores (at least one), 0.0 elsewhere."""
    return keep_top_shared([scores], density)[0]


def keep_top_shared(tensors, density: float):
    """``keep_top`` over the scores of several matrices pooled, ``ceil(density * n)`` of all
    ``n`` kept: each matrix's largest first (an attention needs a head, an FFN a unit), then the
    largest of the rest, whichever matrix holds them.  One 0/1 mask per tensor."""
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    k = max(1, min(flat.numel(), math.ceil(density * flat.numel() - 1e-9)))
    starts = torch.tensor([0] + [t.numel() for t in tensors[:-1]], device=flat.device).cumsum(0)
    best = starts + torch.stack([t.detach().reshape(-1).argmax() for t in tensors])
    hard = torch.zeros_like(flat)
    hard[best] = 1.0
    if k > len(tensors):
        rest = flat.clone()
        rest[best] = float("-inf")
        hard[torch.topk(rest, k - len(tensors), sorted=False).indices] = 1.0
    return [m.view_as(t) for t, m in zip(tensors, hard.split([t.numel() for t in tensors]))]


class BlockScores(nn.Module):
    """One score per block of a matrix (``tiles`` blocks down and across), starting at 0
    (sigmoid 0.5: everything kept).

    The parameter is ``raw`` and the score is ``raw * scale``: with Adam-type optimizers, whose
    steps do not depend on the gradient's scale, that moves the scores ``scale`` times faster
    than the weights (``--prune-score-lr`` over ``--lr``), under fairseq's own optimizer and
    learning-rate schedule.  ``scale`` is saved, so a resumed run keeps the same scores.
    """

    def __init__(self, tiles, scale: float):
        super().__init__()
        self.raw = nn.Parameter(torch.zeros(*tiles))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def scores(self) -> torch.Tensor:
        return self.raw * self.scale

    def mask(self, method: str, threshold: float, density: float) -> torch.Tensor:
        """The binary block mask, differentiable (straight-through) with respect to ``raw``."""
        s = self.scores()
        if method == "sigmoid":
            hard = (torch.sigmoid(s.detach()) > threshold).to(s.dtype)
        else:
            hard = keep_top(s, density)
        return self.through(hard)

    def through(self, hard: torch.Tensor) -> torch.Tensor:
        """``hard`` (a 0/1 mask shaped like the scores) with the straight-through gradient."""
        return _StraightThrough.apply(self.scores(), hard)

    def extra_repr(self):
        return f"tiles={tuple(self.raw.shape)}"
