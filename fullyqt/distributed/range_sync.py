"""Activation ranges kept identical on every rank of a distributed run.

DDP averages gradients, not buffers: each rank's running ranges would follow its own batches.
During a training forward every activation quantizer records each batch's (lo, hi); when the
backward pass reaches the model's output, one collective reduces all records of all quantizers
together (min of mins, max of maxes) and each quantizer replays its running update from the
reduced values, starting from the range it had before the forward.  Every rank then holds the
ranges one process would have computed from the union of the ranks' batches; with
``--update-freq`` each micro-batch is one such step, as it is on one process.

fairseq's dummy batch (what a rank runs when it has no data left at the end of an epoch) has its
loss multiplied by zero: its output gradient is all zeros, and its records count as unseen.
"""
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
from fairseq.logging import metrics
from torch import distributed as dist

from ..quant.quantizer import ActivationQuantizer

INF = float("inf")


def distributed_world() -> int:
    """Number of processes of the initialised default group (1 when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


class RangeSync:
    """Records the batch ranges of ``model``'s activation quantizers and reduces them across ranks.

    ``reduce_max`` (a callable that max-reduces a tensor in place on every rank) defaults to an
    all-reduce on a process group of its own, so that its order never interleaves with DDP's
    gradient collectives on the default group.
    """

    def __init__(self, model: torch.nn.Module,
                 reduce_max: Optional[Callable[[torch.Tensor], None]] = None):
        self.quantizers = [m for m in model.modules() if isinstance(m, ActivationQuantizer)]
        self._reduce_max = reduce_max
        self._records: List[Tuple[ActivationQuantizer, torch.Tensor, torch.Tensor]] = []
        self._before: Dict[ActivationQuantizer, tuple] = {}
        self.seconds = 0.0
        self.collectives = 0

    def begin(self):
        """Start recording a training forward (drops what an earlier forward left unreduced)."""
        if self._reduce_max is None:
            group = dist.new_group(backend=dist.get_backend())
            self._reduce_max = lambda t: dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
        self._records, self._before = [], {}
        for q in self.quantizers:
            q.record = self._record

    def _record(self, q: ActivationQuantizer, lo: torch.Tensor, hi: torch.Tensor):
        if q not in self._before:
            self._before[q] = (q.lo.clone(), q.hi.clone(), q.initialized.clone(), q._initialized)
        self._records.append((q, lo, hi))

    def attach(self, output: torch.Tensor):
        """Reduce when the backward pass reaches ``output`` (at once if it has no gradient)."""
        if output.requires_grad:
            output.register_hook(self._on_output_grad)
        else:
            self.reduce(torch.tensor(True, device=output.device))

    def _on_output_grad(self, grad: torch.Tensor):
        self.reduce(grad.ne(0).any())

    @torch.no_grad()
    def reduce(self, real: torch.Tensor):
        """One collective for all records; ``real`` False (a dummy batch) contributes nothing."""
        for q in self.quantizers:
            q.record = None
        records, before = self._records, self._before
        self._records, self._before = [], {}
        if not records:
            return
        start = time.perf_counter()
        stats = torch.stack([torch.stack((-lo.float(), hi.float())) for _, lo, hi in records])
        stats = torch.where(real, stats, -INF)
        self._reduce_max(stats)
        for q, (lo, hi, initialized, host_initialized) in before.items():
            q.lo.copy_(lo)
            q.hi.copy_(hi)
            q.initialized.copy_(initialized)
            q._initialized = host_initialized
        for (q, _, _), (neg_lo, hi) in zip(records, stats):
            q.update_range(-neg_lo, hi)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        self.collectives += 1
        metrics.log_scalar("range_sync_ms", 1000 * seconds, weight=1, round=2)  # mean per forward
