"""The pruner: one child of the model holding the schedule's current values, making every
layer's mask from its scores, and adding the L1 penalty to the training loss."""
from typing import Dict

import torch
from fairseq.logging import metrics
from torch import nn

from ..quant.mode_caches import DropCachesOnModeSwitch
from ..quant.weight_source import tensor_version
from .options import PruneConfig
from .scores import BlockScores, keep_top_shared

GROUPS = ("attn", "ffn")


class _AddToLoss(torch.autograd.Function):
    """Identity on the model output; in backward, also hands ``weight`` to ``penalty`` as its
    gradient: the same gradients as adding ``weight * penalty`` to the criterion's loss, for any
    criterion, without changing the loss it reports."""

    @staticmethod
    def forward(ctx, output, penalty, weight):
        ctx.save_for_backward(weight)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad, weight.to(grad.dtype), None


class Pruner(DropCachesOnModeSwitch, nn.Module):
    """``threshold`` (sigmoid), ``density`` and ``decoder_density`` (topk) and
    ``penalty_weight`` follow the schedule from ``set_num_updates`` and are saved, so a loaded
    model masks as it did when saved."""

    stock = False  # not part of a stock transformer: the stock export leaves it out

    def __init__(self, pcfg: PruneConfig):
        super().__init__()
        self.pcfg = pcfg
        self.register_buffer("threshold", torch.tensor(0.0))
        self.register_buffer("density", torch.tensor(1.0))
        self.register_buffer("penalty_weight", torch.tensor(0.0))
        self.register_buffer("scores_started", torch.tensor(False))
        self.register_buffer("decoder_density", torch.tensor(1.0))
        self._values = (0.0, 1.0, 0.0, 1.0)
        self._started = False
        # references, not children: each BlockScores is saved by the layer that owns it
        self.__dict__["scores"] = {g: [] for g in GROUPS}
        self.__dict__["matrices"] = []  # (group, label, QuantLinear)
        # --prune-topk-scope: the scores ranked together, per (stack, group) or per matrix
        # (ffn-stack: per stack for the FFN, per matrix for attention)
        self.__dict__["scopes"] = {}
        self.__dict__["stack_of"] = {}  # id(scores) or scope key -> encoder / decoder
        self._pooled = (None, {})

    def register(self, group: str, label: str, layer, scores: BlockScores = None):
        self.matrices.append((group, label, layer))
        if scores is not None:
            self.scores[group].append(scores)
            pooled = self.pcfg.topk_scope == "stack" or (self.pcfg.topk_scope == "ffn-stack"
                                                         and group == "ffn")
            stack = label.split(".")[0]
            key = (stack, group) if pooled else label
            self.scopes.setdefault(key, []).append(scores)
            self.stack_of[key] = self.stack_of[id(scores)] = stack

    @torch.no_grad()
    def start_scores(self):
        """Once, before the first training step (a resumed run keeps its scores):
        ``--prune-score-init magnitude`` sets each matrix's scores to the z-scores of its blocks'
        L2 norms (an FFN unit's fc1 row and fc2 column together); ``zero`` leaves them at 0."""
        if self._started:
            return
        if self.pcfg.score_init == "magnitude":
            energy = {}
            for _, _, layer in self.matrices:
                key = id(layer.source.scores)
                energy[key] = energy.get(key, 0) + layer.source.block_energy(layer)
            for scope in self.scopes.values():
                norms = torch.cat([energy[id(s)].reshape(-1) for s in scope]).sqrt()
                spread = norms.std() if norms.numel() > 1 else norms.new_tensor(0.0)
                z = (norms - norms.mean()) / spread if spread > 0 else norms * 0
                for s, part in zip(scope, z.split([s.raw.numel() for s in scope])):
                    s.raw.copy_((part.view_as(s.raw) / s.scale).to(s.raw.dtype))
        self.scores_started.fill_(True)
        self._started = True

    def drop_caches(self):
        self._pooled = (None, {})

    def _sync(self):
        self._values = (float(self.threshold), float(self.density), float(self.penalty_weight),
                        float(self.decoder_density))
        self._started = bool(self.scores_started)

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._sync()

    @staticmethod
    def upgrade_state(state_dict, prefix: str):
        """A checkpoint saved before ``--prune-decoder-density``: its decoder followed the one
        density."""
        if prefix + "density" in state_dict:
            state_dict.setdefault(prefix + "decoder_density",
                                  state_dict[prefix + "density"].clone())

    def set_num_updates(self, num_updates: int):
        p, s = self.pcfg, self.pcfg.schedule
        self.threshold.fill_(s.rising(p.threshold, num_updates) if p.method == "sigmoid" else 0)
        for buffer, stack in ((self.density, "encoder"), (self.decoder_density, "decoder")):
            buffer.fill_(s.falling(p.final_density(stack), num_updates)
                         if p.method == "topk" else 1.0)
        self.penalty_weight.fill_(s.rising(p.penalty, num_updates)
                                  if p.method == "sigmoid" else 0.0)
        self._sync()

    def version(self) -> tuple:
        return self._values[:2] + self._values[3:]

    def _density(self, stack) -> float:
        """The current top-k density of ``stack`` (a matrix of no stack: ``--prune-density``)."""
        return self._values[3] if stack == "decoder" else self._values[1]

    def mask(self, scores: BlockScores) -> torch.Tensor:
        threshold = self._values[0]
        if self.pcfg.topk_scope == "matrix" or self.pcfg.method != "topk":
            return scores.mask(self.pcfg.method, threshold,
                               self._density(self.stack_of.get(id(scores))))
        return scores.through(self._pooled_masks()[id(scores)])

    def _pooled_masks(self) -> Dict[int, torch.Tensor]:
        """Every matrix's top-k mask with the scores of its scope ranked together.  Every
        matrix of a scope asks for it: outside training it is made once per change of a score
        or of the density (fairseq's optimizers write ``p.data``, which no version counter sees:
        training makes it anew each time, and a switch to evaluation drops it)."""
        key = None if self.training else self.version() + tuple(
            tensor_version(s.raw) + tensor_version(s.scale)
            for scope in self.scopes.values() for s in scope)
        if key is None or self._pooled[0] != key:
            masks = {}
            for name, scope in self.scopes.items():
                hard = keep_top_shared([s.scores() for s in scope],
                                       self._density(self.stack_of[name]))
                masks.update((id(s), h) for s, h in zip(scope, hard))
            self._pooled = (key, masks)
        return self._pooled[1]

    def penalty(self) -> torch.Tensor:
        """mean(sigmoid(score)) per matrix, averaged per group, averaged over the groups."""
        means = [torch.stack([torch.sigmoid(s.scores()).mean() for s in group]).mean()
                 for group in self.scores.values() if group]
        return torch.stack(means).mean()

    @torch.no_grad()
    def densities(self) -> Dict[str, float]:
        """Share of the weights kept per group (pruned inputs of gated layers included)."""
        kept, total = {}, {}
        for group, _, layer in self.matrices:
            kept.setdefault(group, []).append(layer.source.kept(layer))
            total[group] = total.get(group, 0) + layer.weight.numel()
        sums = torch.stack([torch.stack(v).sum() for v in kept.values()]).tolist()  # one sync
        return {g: k / total[g] for g, k in zip(kept, sums)}

    def summary(self) -> str:
        threshold, density, weight, decoder = self._values
        where = (f"threshold {threshold:.4f} lambda {weight:.3g}" if self.pcfg.method == "sigmoid"
                 else f"target density {density:.3f}" + (
                     f" (decoder {decoder:.3f})" if self.pcfg.decoder_density is not None
                     else ""))
        kept = " ".join(f"{g} {d:.3f}" for g, d in self.densities().items())
        return f"{where} | density {kept}"

    def add_penalty(self, output: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """``output`` carrying the penalty's gradient, ``count`` times (the criterion's sample
        size: its loss is a sum, divided by the whole update's sample size before the step);
        logs the penalty and the densities."""
        weight = self._values[2]
        if weight > 0:
            penalty = self.penalty()
            output = _AddToLoss.apply(output, penalty, count.float() * weight)
            metrics.log_scalar("prune_penalty", weight * float(penalty.detach()), priority=900,
                               round=4)
        for group, d in self.densities().items():
            metrics.log_scalar(f"{group}_density", d, priority=910, round=3)
        return output

    def extra_repr(self):
        p = self.pcfg
        return (f"method={p.method}, attn_block={p.attn_block}, ffn_block={p.ffn_block}, "
                f"schedule={tuple(p.schedule)}")

