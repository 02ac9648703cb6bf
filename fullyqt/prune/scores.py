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
    k = max(1, min(scores.numel(), math.ceil(density * scores.numel() - 1e-9)))
    hard = torch.zeros(scores.numel(), dtype=scores.dtype, device=scores.device)
    hard[torch.topk(scores.detach().reshape(-1), k, sorted=False).indices] = 1.0
    return hard.view_as(scores)


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
        return _StraightThrough.apply(s, hard)

    def extra_repr(self):
        return f"tiles={tuple(self.raw.shape)}"
