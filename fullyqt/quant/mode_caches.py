"""Inference caches keyed on tensor versions, dropped when a module switches between training
and evaluation: fairseq's optimizers write ``p.data``, which no version counter sees, so after
an update the versions alone would keep a stale cache.  Evaluation that stays in eval mode (one
``model.eval()`` per validation batch) keeps them."""


class DropCachesOnModeSwitch:
    """Mixin for an ``nn.Module`` whose ``drop_caches()`` clears what it keeps for inference."""

    def drop_caches(self):
        raise NotImplementedError

    def train(self, mode: bool = True):
        if mode != self.training:
            self.drop_caches()
        return super().train(mode)
