"""Where a decoding step's model time goes (decoder layers, output projection, the rest of the
decoder), timed by forward hooks on fixed-shape incremental steps at the lengths beam search
gives on test batches, and the multiply-add bound a pruned model's shapes allow against its
dense model."""
import argparse
import copy
import time
from typing import Dict, Optional, Tuple

import torch

from ..prune.macs import ct2_padded, dims_of, sentence_macs, step_macs
from .profile import eval_batches, load_eval_model, generator


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


def step_split(checkpoint: str, data_bin: str, *, as_fullyqt: bool = False,
               **kwargs) -> Dict[str, float]:
    """``model_step_split`` of a checkpoint; ``as_fullyqt``: a stock float checkpoint run
    through fullyqt's own (unquantized) layers, to time the same code path a compact model
    runs."""
    model, task = load_eval_model(checkpoint, data_bin)
    if as_fullyqt:
        model = _fullyqt_float(checkpoint, model, task)
    return model_step_split(model, task, **kwargs)


def _fullyqt_float(checkpoint, stock, task):
    from ..checkpoint import model_args, read_checkpoint

    saved = model_args(read_checkpoint(checkpoint))
    args = argparse.Namespace(**{**vars(copy.deepcopy(saved)), "arch": "fullyqt_transformer",
                                 "_name": "fullyqt_transformer", "no_quant": True,
                                 "quant_bits": None, "quant_kernels": "fake"})
    model = task.build_model(args)
    result = model.load_state_dict(stock.state_dict(), strict=False)
    missing = [k for k in result.missing_keys
               if not k.endswith((".lo", ".hi", ".active", ".initialized"))]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"stock weights do not fit the fullyqt layers: missing {missing[:3]}, "
                           f"unexpected {result.unexpected_keys[:3]}")
    return model.eval()


def timed_parts(model, dictionary, batch: int, beam: int, src_len: int, steps: int, *,
                repeats: int = 3) -> Tuple[float, float, float]:
    """(whole step, decoder layers, output projection) milliseconds of one fixed-shape
    incremental step (``kernels.step_ms``), after a warm-up, from the least disturbed of
    ``repeats`` timings."""
    from .kernels import step_ms

    step_ms(model, dictionary, batch, beam, src_len, steps)  # warm-up
    best = None
    for _ in range(repeats):
        layers = [_Timer(layer) for layer in model.decoder.layers]
        out = _Timer(model.decoder.output_projection)
        try:
            total = step_ms(model, dictionary, batch, beam, src_len, steps)
        finally:
            for t in layers + [out]:
                t.remove()
        if best is None or total < best[0]:
            best = (total, 1e3 * sum(t.seconds / t.calls for t in layers),
                    1e3 * out.seconds / out.calls)
    return best


def model_step_split(model, task, *, batches: int = 4, batch_size: int = 32, beam: int = 5,
                     repeats: int = 3, max_len: Optional[int] = None) -> Dict[str, float]:
    """Milliseconds per incremental decoding step of ``batch_size x beam`` hypotheses in the
    decoder layers, the output projection and the rest of the decoder.  The lengths come from
    beam search on test batches (mean source and translation length); the timing runs fixed-shape
    steps (``timed_parts``) at those lengths, so that every model is timed on the same work
    whatever it translates."""
    bs = eval_batches(task, batches, batch_size)
    gen = generator(model, task, beam, max_len)
    src = tgt = sentences = 0
    with torch.no_grad():
        for b in bs:
            for hyps in gen.generate([model], b):
                tgt += len(hyps[0]["tokens"])
            src += int(b["net_input"]["src_lengths"].sum())
            sentences += b["nsentences"]
    src_len, tgt_len = src / sentences, tgt / sentences
    shape = (task.target_dictionary, batch_size, beam, max(1, round(src_len)),
             max(2, round(tgt_len)))
    total, in_layers, in_out = timed_parts(model, *shape, repeats=repeats)
    return {"decoder_layers_ms": in_layers, "output_projection_ms": in_out,
            "rest_ms": max(0.0, total - in_layers - in_out),
            "src_len": src_len, "tgt_len": tgt_len, "dims": dims_of(model)}


def whole_lengths(src_len: float, tgt_len: float) -> Tuple[int, int]:
    """Mean lengths as the token counts that the bound and the CTranslate2 equal-work timing
    both use (at least one each)."""
    return max(1, round(src_len)), max(1, round(tgt_len))


def mac_bound(dense, compact, src_len: float, tgt_len: float) -> Dict[str, float]:
    """Dense MACs / compact MACs: per decoding step (mid-sentence) and per sentence, the latter
    also against the compact model as CTranslate2 holds it (heads padded); and the output
    projection's share of a dense step."""
    s, t = whole_lengths(src_len, tgt_len)
    mid = max(1, t // 2)
    d_step, c_step = step_macs(dense, mid, s), step_macs(compact, mid, s)
    return {"step_bound": sum(d_step.values()) / sum(c_step.values()),
            "layers_bound": d_step["decoder_layers"] / c_step["decoder_layers"],
            "sentence_bound": sentence_macs(dense, s, t) / sentence_macs(compact, s, t),
            "ct2_sentence_bound": sentence_macs(dense, s, t) / sentence_macs(ct2_padded(compact),
                                                                             s, t),
            "output_share": d_step["output_projection"] / sum(d_step.values())}
