"""The pruning section of the report: compact models against their dense models, in BLEU, layer
parameters, what is left per layer, time per decoding step (decoder layers / output projection /
rest), the multiply-add bound, and fairseq and CTranslate2 speed, with the issue's goals."""
import os
from typing import Dict, List, Optional

from ..checkpoint import arch_of, read_checkpoint
from ..eval.significance import interval_text
from .steps import mac_bound, step_split, whole_lengths

PARTS = ("decoder_layers_ms", "output_projection_ms", "rest_ms")


def _ct2_speed(rows: List[dict], variant: str) -> Optional[float]:
    for r in rows:
        if r["variant"].startswith(f"{variant} → CT2"):
            return r.get("tokens_per_second")
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

    from .deploy import ct2_sentence_ms

    d = Dictionary.load(os.path.join(data_bin, "dict.src.txt"))
    s, t = whole_lengths(src_len, tgt_len)
    shape = dict(threads=threads, src_len=s, tgt_len=t, repeats=5)
    return {"dense": ct2_sentence_ms(dense_dir, d, **shape),
            "compact": ct2_sentence_ms(compact_dir, d, **shape),
            "src_len": shape["src_len"], "tgt_len": shape["tgt_len"]}


def step_rows(rows: List[dict], trained: Dict[str, object], data_bin: str,
              max_len: Optional[int] = None, threads: Optional[int] = None) -> List[dict]:
    """One record per compacted variant (``rows`` holding its ``dense`` model's row too);
    ``max_len`` caps the beam search that sets the timed lengths; ``threads``: also time both
    models' CTranslate2 exports on equal work (where both were made)."""
    by_name = {r["variant"]: r for r in rows}
    timed, out = {}, []
    for r in rows:
        dense = r.get("dense")
        if r.get("kind") != "trained" or not dense or dense not in by_name:
            continue
        if dense not in timed:
            path = trained[dense].checkpoint
            stock = not (arch_of(read_checkpoint(path)) or "").startswith("fullyqt")
            timed[dense] = (step_split(path, data_bin, max_len=max_len),
                            step_split(path, data_bin, as_fullyqt=True, max_len=max_len)
                            if stock else None)
        (d, same), c = timed[dense], step_split(trained[r["variant"]].checkpoint, data_bin,
                                                max_len=max_len)
        same = same or d
        dirs = (_ct2_dir(trained, dense), _ct2_dir(trained, r["variant"]))
        equal = ct2_equal_work(*dirs, data_bin, d["src_len"], d["tgt_len"], threads) if (
            threads and all(dirs)) else None
        out.append({
            "variant": r["variant"], "dense": dense, "bleu": r["bleu"],
            "dense_bleu": by_name[dense]["bleu"], "bits": r.get("bits"),
            "vs_dense_interval": r.get("vs_control_interval") if r.get("baseline") == dense
            else None,
            "layer_params": r["layer_params"], "dense_layer_params": r["dense_layer_params"],
            "heads": r.get("heads"), "ffn": r.get("ffn"),
            "dense_ms": {k: same[k] for k in PARTS}, "compact_ms": {k: c[k] for k in PARTS},
            "dense_stock_ms": {k: d[k] for k in PARTS},
            **mac_bound(d["dims"], c["dims"], d["src_len"], d["tgt_len"]),
            "fairseq_tps": r.get("tokens_per_second"),
            "dense_fairseq_tps": by_name[dense].get("tokens_per_second"),
            "ct2_tps": _ct2_speed(rows, r["variant"]), "dense_ct2_tps": _ct2_speed(rows, dense),
            "ct2_equal_ms": equal})
    return out


def _ratio(a, b):
    return a / b if a and b else None


def findings(prune_rows: List[dict]) -> List[str]:
    out = []
    for p in prune_rows:
        share = p["layer_params"] / p["dense_layer_params"]
        delta = p["bleu"] - p["dense_bleu"]
        ok = share <= 0.5 and delta >= -1.0
        interval = p.get("vs_dense_interval")
        out.append(f"Pruning goal (≤ 50% of the layer parameters, ≤ 1 BLEU below the dense "
                   f"model) {'met' if ok else 'missed'} by `{p['variant']}`: {share:.1%} of "
                   f"`{p['dense']}`'s layer parameters, {p['bleu']:.2f} vs {p['dense_bleu']:.2f} "
                   f"BLEU ({delta:+.2f}" + (f", 95% interval {interval_text(*interval)}"
                                            if interval else "") + ").")
        layers = _ratio(p["dense_ms"]["decoder_layers_ms"], p["compact_ms"]["decoder_layers_ms"])
        out.append(f"Decoder-layer time per step (goal ≥ 1.8x lower) for `{p['variant']}`: "
                   f"{p['dense_ms']['decoder_layers_ms']:.2f} → "
                   f"{p['compact_ms']['decoder_layers_ms']:.2f} ms, {layers:.2f}x "
                   f"({'met' if layers >= 1.8 else 'missed'}; the multiply-adds there fall "
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
                       f"(goal ≥ 90%: {'met' if reach >= 0.9 else 'missed'}){tail}.")
    return out


def _padding_text(p: dict, up: float) -> str:
    padded = p.get("ct2_sentence_bound")
    if padded is None or padded >= p["sentence_bound"] - 1e-9:
        return "CTranslate2 holds these head counts without padding"
    return ("CTranslate2 holds one head count per stack (the decoder's self- and "
            "cross-attention share it), so every attention is padded to its stack's largest "
            f"count: the padded model's bound is {padded:.2f}x, {up / padded:.0%} of it reached")


def markdown(prune_rows: List[dict], threads) -> List[str]:
    if not prune_rows:
        return []
    lines = ["## Pruning", "",
             f"Compact models (pruned heads and FFN units removed) against their dense models; "
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
    lines += [f"- {x}" for x in findings(prune_rows)]
    return lines
