"""The pruning study's report section: compact models of a finished benchmark run against their
dense models, in BLEU, layer parameters, what is left per layer, time per decoding step (decoder
layers / output projection / rest, timed by forward hooks on fixed-shape incremental steps at the
lengths beam search gives on test batches), the multiply-add bound, fairseq and CTranslate2 speed,
and the pruning goals (``goals`` of the run's results.json).

    python scripts/studies/pruning_report.py runs/cpu-small     # after --full-grid; on an idle machine

Writes OUT/pruning.json (its records and rendered table; ``python -m fullyqt.bench.readme
OUT/pruning.json PAGE.md --block NAME`` puts the table in a page) and rebuilds OUT/report.md.
"""
import argparse
import copy
import json
import os
import time
from typing import Dict, List, Optional, Tuple

import torch

from fullyqt.bench.deploy import ct2_sentence_ms
from fullyqt.bench.kernels import step_ms
from fullyqt.bench.report import rewrite, study_goals
from fullyqt.bench.row import Row, by_variant
from fullyqt.checkpoint import arch_of, model_args, read_checkpoint
from fullyqt.eval.significance import interval_text
from fullyqt.prune.macs import ct2_padded, dims_of, sentence_macs, step_macs
from decode_profile import eval_batches, generator, load_eval_model
from finished_run import parse
from train_speed import write_outputs

PARTS = ("decoder_layers_ms", "output_projection_ms", "rest_ms")


def _ct2_speed(rows: List[Row], variant: str) -> Optional[float]:
    for r in rows:
        if r.variant.startswith(f"{variant} → CT2"):
            return r.tokens_per_second
    return None


def _ct2_dir(trained: Dict[str, object], variant: str) -> Optional[str]:
    path = os.path.join(os.path.dirname(trained[variant].checkpoint), "ct2-int8")
    return path if os.path.isfile(os.path.join(path, "model.bin")) else None


def ct2_equal_work(dense_dir: str, compact_dir: str, data_bin: str, src_len: float,
                   tgt_len: float, threads: int) -> Dict[str, float]:
    """CTranslate2 milliseconds per sentence of two models on the same work: 32 random sources a
    thread (one batch per thread) of the test set's mean source length, beam 5 forced to its
    mean translation length (free decoding lets each model's beams run as long as its own
    hypotheses: other work)."""
    from fairseq.data import Dictionary

    d = Dictionary.load(os.path.join(data_bin, "dict.src.txt"))
    s, t = whole_lengths(src_len, tgt_len)
    shape = dict(threads=threads, src_len=s, tgt_len=t, repeats=5)
    return {"dense": ct2_sentence_ms(dense_dir, d, **shape),
            "compact": ct2_sentence_ms(compact_dir, d, **shape),
            "src_len": shape["src_len"], "tgt_len": shape["tgt_len"]}


def step_rows(rows: List[Row], trained: Dict[str, object], data_bin: str,
              max_len: Optional[int] = None, threads: Optional[int] = None) -> List[dict]:
    """One record per compacted variant (``rows`` holding its ``dense`` model's row too);
    ``max_len`` caps the beam search that sets the timed lengths; ``threads``: also time both
    models' CTranslate2 exports on equal work (where both were made)."""
    by_name = by_variant(rows)
    timed, out = {}, []
    for r in rows:
        dense = r.dense
        if not r.trained or not dense or dense not in by_name:
            continue
        if dense not in timed:
            path = trained[dense].checkpoint
            stock = not (arch_of(read_checkpoint(path)) or "").startswith("fullyqt")
            timed[dense] = (step_split(path, data_bin, max_len=max_len),
                            step_split(path, data_bin, as_fullyqt=True, max_len=max_len)
                            if stock else None)
        (d, same), c = timed[dense], step_split(trained[r.variant].checkpoint, data_bin,
                                                max_len=max_len)
        same = same or d
        dirs = (_ct2_dir(trained, dense), _ct2_dir(trained, r.variant))
        equal = ct2_equal_work(*dirs, data_bin, d["src_len"], d["tgt_len"], threads) if (
            threads and all(dirs)) else None
        out.append({
            "variant": r.variant, "dense": dense, "bleu": r.bleu,
            "dense_bleu": by_name[dense].bleu, "bits": r.bits,
            "vs_dense_interval": r.vs_control_interval if r.baseline == dense
            else None,
            "layer_params": r.layer_params, "dense_layer_params": r.dense_layer_params,
            "heads": r.heads, "ffn": r.ffn,
            "dense_ms": {k: same[k] for k in PARTS}, "compact_ms": {k: c[k] for k in PARTS},
            "dense_stock_ms": {k: d[k] for k in PARTS},
            **mac_bound(d["dims"], c["dims"], d["src_len"], d["tgt_len"]),
            "fairseq_tps": r.tokens_per_second,
            "dense_fairseq_tps": by_name[dense].tokens_per_second,
            "ct2_tps": _ct2_speed(rows, r.variant), "dense_ct2_tps": _ct2_speed(rows, dense),
            "ct2_equal_ms": equal})
    return out


def _ratio(a, b):
    return a / b if a and b else None


def findings(prune_rows: List[dict], goals: dict) -> List[str]:
    out, g = [], goals
    for p in prune_rows:
        share = p["layer_params"] / p["dense_layer_params"]
        delta = p["bleu"] - p["dense_bleu"]
        ok = share <= g["pruned_layer_params"] and delta >= g["pruned_bleu"]
        interval = p.get("vs_dense_interval")
        out.append(f"Pruning goal (≤ {g['pruned_layer_params']:.0%} of the layer parameters, "
                   f"≥ {g['pruned_bleu']:+g} BLEU against the dense model) "
                   f"{'met' if ok else 'missed'} by `{p['variant']}`: {share:.1%} of "
                   f"`{p['dense']}`'s layer parameters, {p['bleu']:.2f} vs {p['dense_bleu']:.2f} "
                   f"BLEU ({delta:+.2f}" + (f", 95% interval {interval_text(*interval)}"
                                            if interval else "") + ").")
        layers = _ratio(p["dense_ms"]["decoder_layers_ms"], p["compact_ms"]["decoder_layers_ms"])
        out.append(f"Decoder-layer time per step (goal ≥ {g['pruned_layer_speedup']:g}x lower) "
                   f"for `{p['variant']}`: "
                   f"{p['dense_ms']['decoder_layers_ms']:.2f} → "
                   f"{p['compact_ms']['decoder_layers_ms']:.2f} ms, {layers:.2f}x "
                   f"({'met' if layers >= g['pruned_layer_speedup'] else 'missed'}; the "
                   f"multiply-adds there fall "
                   f"{p['layers_bound']:.2f}x; the dense model in stock fairseq layers: "
                   f"{p.get('dense_stock_ms', p['dense_ms'])['decoder_layers_ms']:.2f} ms).")
        ct2 = _ratio(p["ct2_tps"], p["dense_ct2_tps"])
        equal = p.get("ct2_equal_ms")
        up = _ratio(equal["dense"], equal["compact"]) if equal else ct2
        if up is not None:
            reach = up / p["sentence_bound"]
            if equal:
                how = (f" on equal work (32 sources a thread of {equal['src_len']} tokens, beam 5 "
                       f"forced to {equal['tgt_len']} target tokens: {equal['dense']:.2f} → "
                       f"{equal['compact']:.2f} ms per sentence)")
                tail = f"; {_padding_text(p, up)}"
                if ct2:
                    tail += (f"; in free decoding of the test set, where each model's beams run "
                             f"as long as its own hypotheses: {ct2:.2f}x")
            else:
                how, tail = " in free decoding of the test set", ""
            out.append(f"CTranslate2 speed-up of `{p['variant']}` over `{p['dense']}`{how}: "
                       f"{up:.2f}x of a {p['sentence_bound']:.2f}x multiply-add bound per "
                       f"sentence ({p['step_bound']:.2f}x per step; the output projection is "
                       f"{p['output_share']:.0%} of a dense step): {reach:.0%} of the bound "
                       f"(goal ≥ {g['pruned_bound_reach']:.0%}: "
                       f"{'met' if reach >= g['pruned_bound_reach'] else 'missed'}){tail}.")
    return out


def _padding_text(p: dict, up: float) -> str:
    padded = p.get("ct2_sentence_bound")
    if padded is None or padded >= p["sentence_bound"] - 1e-9:
        return "CTranslate2 holds these head counts without padding"
    return ("CTranslate2 holds one head count per stack (the decoder's self- and "
            "cross-attention share it), so every attention is padded to its stack's largest "
            f"count: the padded model's bound is {padded:.2f}x, {up / padded:.0%} of it reached")


def markdown(prune_rows: List[dict], threads, goals: dict) -> List[str]:
    if not prune_rows:
        return []
    lines = [f"Compact models (pruned heads and FFN units removed) against their dense models; "
             "model time per incremental decoding step of 32 x 5 hypotheses (fixed-shape steps at "
             "the mean source and translation lengths of beam search on the first test batches), "
             f"split by forward hooks, {threads} threads, compact "
             "(dense) where the dense model runs through fullyqt's own unquantized layers, the "
             "code path the compact model takes (a stock dense model's own time is in "
             "results.json, `dense_stock_ms`); MAC bound = dense multiply-adds / compact "
             "multiply-adds; CT2: one batch per thread (`inter_threads` = threads, "
             "`intra_threads` 1); CT2 equal work: both CTranslate2 exports on 32 random sources "
             "a thread of the mean source length, beam 5 forced to the mean translation "
             "length.", "",
             "| variant | BLEU (dense) | layer params | heads enc / dec-self / dec-cross | "
             "FFN units enc / dec | decoder layers ms | output proj. ms | rest ms | "
             "MAC bound step / sentence | fairseq tok/s (dense) | CT2 tok/s (dense) | "
             "CT2 ms/sentence, equal work (dense) |",
             "|" + "---|" * 12]

    def join(v):
        return ",".join("–" if x is None else str(x) for x in (v or []))

    for p in prune_rows:
        h, f = p.get("heads") or {}, p.get("ffn") or {}
        d, c, eq = p["dense_ms"], p["compact_ms"], p.get("ct2_equal_ms")
        lines.append(
            f"| {p['variant']} | {p['bleu']:.2f} ({p['dense_bleu']:.2f}) | "
            f"{p['layer_params']:,} ({p['layer_params'] / p['dense_layer_params']:.1%}) | "
            f"{join(h.get('enc'))} / {join(h.get('dec-self'))} / {join(h.get('dec-cross'))} | "
            f"{join(f.get('enc'))} / {join(f.get('dec'))} | "
            f"{c['decoder_layers_ms']:.2f} ({d['decoder_layers_ms']:.2f}) | "
            f"{c['output_projection_ms']:.2f} ({d['output_projection_ms']:.2f}) | "
            f"{c['rest_ms']:.2f} ({d['rest_ms']:.2f}) | "
            f"{p['step_bound']:.2f}x / {p['sentence_bound']:.2f}x | "
            f"{p['fairseq_tps'] or 0:.0f} ({p['dense_fairseq_tps'] or 0:.0f}) | "
            + (f"{p['ct2_tps']:.0f} ({p['dense_ct2_tps']:.0f}) |" if p["ct2_tps"] and
               p["dense_ct2_tps"] else "– |")
            + (f" {eq['compact']:.2f} ({eq['dense']:.2f}) |" if eq else " – |"))
    lines += ["", "Heads and units are those kept (a layer keeps at least one of each, with zero "
              "output columns when none survived).", ""]
    lines += [f"- {x}" for x in findings(prune_rows, goals)]
    return lines



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


def trained_checkpoints(out: str, rows: List[Row]) -> Dict[str, str]:
    """Each trained variant of the run in ``out``: the checkpoint it was evaluated as (a pruned
    one's compact export)."""
    found = {}
    for r in rows:
        vdir = os.path.join(out, "checkpoints", r.variant)
        compact = os.path.join(vdir, "model.compact.pt")
        if r.dense and os.path.isfile(compact):
            found[r.variant] = compact
        elif os.path.isfile(os.path.join(vdir, "train_result.json")):
            with open(os.path.join(vdir, "train_result.json"), encoding="utf-8") as f:
                found[r.variant] = json.load(f)["checkpoint"]
    return found


def main(argv=None):
    p, a, data = parse("pruning_report.py", __doc__, argv)
    torch.set_num_threads(a.threads)
    rows = [Row.from_json(r) for r in data["rows"]]
    trained = {k: argparse.Namespace(checkpoint=v)
               for k, v in trained_checkpoints(a.out, rows).items()}
    records = step_rows(rows, trained, os.path.join(a.out, "data", "bin"),
                        data["meta"].get("hypotheses cut at (target tokens)"), a.threads)
    if not records:
        p.error(f"{a.out}: the run has no compact (pruned) variant")
    write_outputs(a.out, "pruning", "Pruning", {"kind": "pruning", "records": records},
                  markdown(records, a.threads, study_goals(data)))
    print(rewrite(a.out)["md"])


if __name__ == "__main__":
    main()
