"""Range sync as a feature of the fullyqt transformer: on many processes, each training forward
records its activation ranges for the ranks to agree on them (``range_sync.RangeSync``)."""
import torch

from ..feature import Feature, register_feature
from .range_sync import RangeSync, distributed_world


class RangeSyncFeature(Feature):
    name = "range_sync"
    order = 30

    def attach(self, model, cfg):
        model.range_sync = None  # made at the first training forward of a distributed run

    def training_forward(self, model, cfg, forward, prev_output_tokens):
        if not (model.training and torch.is_grad_enabled()):
            return forward()
        if model.range_sync is None:
            if distributed_world() == 1:
                return forward()
            model.range_sync = RangeSync(model)
        model.range_sync.begin()
        out = forward()
        model.range_sync.attach(out[0])
        return out


register_feature(RangeSyncFeature())
