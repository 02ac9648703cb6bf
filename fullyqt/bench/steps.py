"""Where a decoding step's model time goes (decoder layers, output projection, the rest of the
decoder), timed by forward hooks during fairseq's beam search on test batches, and the
multiply-add bound that a pruned model's shapes allow against its dense teacher."""
import time
from typing import Dict

import torch

from ..prune.macs import dims_of, sentence_macs, step_macs
from .profile import _batches, _load


class _Timer:
    """Sums the wall time of a module's forward calls (pre/post hooks)."""

    def __init__(self, module):
        self.seconds, self.calls, self._t0 = 0.0, 0, 0.0
        self.handles = [module.register_forward_pre_hook(self._start),
                        module.register_forward_hook(self._stop)]

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self.seconds += time.perf_counter() - self._t0
        self.calls += 1

    def remove(self):
        for h in self.handles:
            h.remove()


class _MethodTimer(_Timer):
    """The same for the decoder, whose ``forward`` fairseq's beam search calls directly (no
    hooks fire): wraps this one object's bound method, restored by ``remove``."""

    def __init__(self, module):
        self.seconds, self.calls, self._t0 = 0.0, 0, 0.0
        self.module, self.original = module, module.forward

        def timed(*args, **kwargs):
            self._start()
            try:
                return self.original(*args, **kwargs)
            finally:
                self._stop()

        module.forward = timed

    def remove(self):
        del self.module.forward  # the class's method again


def step_split(checkpoint: str, data_bin: str, *, batches: int = 4, batch_size: int = 32,
               beam: int = 5) -> Dict[str, float]:
    """Milliseconds per decoder call (one step of a whole beam batch) in the decoder layers,
    the output projection and the rest of the decoder, plus the mean source and target lengths
    and the model's shapes."""
    from fairseq.sequence_generator import SequenceGenerator

    model, task = _load(checkpoint, data_bin)
    bs = _batches(task, batches, batch_size)
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=beam)
    with torch.no_grad():
        gen.generate([model], bs[0])  # warm-up
    timers = {"decoder": _MethodTimer(model.decoder), "output_projection": _Timer(
        model.decoder.output_projection)}
    layers = [_Timer(layer) for layer in model.decoder.layers]
    src = tgt = sentences = 0
    try:
        with torch.no_grad():
            for b in bs:
                for hyps in gen.generate([model], b):
                    tgt += len(hyps[0]["tokens"])
                src += int(b["net_input"]["src_lengths"].sum())
                sentences += b["nsentences"]
    finally:
        for t in list(timers.values()) + layers:
            t.remove()
    steps = timers["decoder"].calls
    in_layers = sum(t.seconds for t in layers)
    out = timers["output_projection"].seconds
    return {"decoder_layers_ms": 1e3 * in_layers / steps,
            "output_projection_ms": 1e3 * out / steps,
            "rest_ms": 1e3 * (timers["decoder"].seconds - in_layers - out) / steps,
            "steps": steps, "src_len": src / sentences, "tgt_len": tgt / sentences,
            "dims": dims_of(model)}


def mac_bound(dense, compact, src_len: float, tgt_len: float) -> Dict[str, float]:
    """Dense MACs / compact MACs: per decoding step (mid-sentence) and per sentence; and the
    output projection's share of a dense step."""
    s, t = max(1, round(src_len)), max(1, round(tgt_len))
    mid = max(1, t // 2)
    d_step, c_step = step_macs(dense, mid, s), step_macs(compact, mid, s)
    return {"step_bound": sum(d_step.values()) / sum(c_step.values()),
            "layers_bound": d_step["decoder_layers"] / c_step["decoder_layers"],
            "sentence_bound": sentence_macs(dense, s, t) / sentence_macs(compact, s, t),
            "output_share": d_step["output_projection"] / sum(d_step.values())}
