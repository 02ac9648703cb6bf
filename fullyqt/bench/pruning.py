"""The pruning section of the report: compact models against their dense models, in BLEU, layer
parameters, what is left per layer, time per decoding step (decoder layers / output projection /
rest), the multiply-add bound, and fairseq and CTranslate2 speed, with the issue's goals."""
from typing import Dict, List, Optional

from .steps import mac_bound, step_split

PARTS = ("decoder_layers_ms", "output_projection_ms", "rest_ms")


def _ct2_speed(rows: List[dict], variant: str) -> Optional[float]:
    for r in rows:
        if r["variant"].startswith(f"{variant} → CT2"):
            return r.get("tokens_per_second")
    return None


def step_rows(rows: List[dict], trained: Dict[str, object], data_bin: str) -> List[dict]:
    """One record per compacted variant (``rows`` holding its ``dense`` model's row too)."""
    by_name = {r["variant"]: r for r in rows}
    timed, out = {}, []
    for r in rows:
        dense = r.get("dense")
        if r.get("kind") != "trained" or not dense or dense not in by_name:
            continue
        if dense not in timed:
            timed[dense] = step_split(trained[dense].checkpoint, data_bin)
        d, c = timed[dense], step_split(trained[r["variant"]].checkpoint, data_bin)
        out.append({
            "variant": r["variant"], "dense": dense, "bleu": r["bleu"],
            "dense_bleu": by_name[dense]["bleu"], "bits": r.get("bits"),
            "layer_params": r["layer_params"], "dense_layer_params": r["dense_layer_params"],
            "heads": r.get("heads"), "ffn": r.get("ffn"),
            "dense_ms": {k: d[k] for k in PARTS}, "compact_ms": {k: c[k] for k in PARTS},
            **mac_bound(d["dims"], c["dims"], d["src_len"], d["tgt_len"]),
            "fairseq_tps": r.get("tokens_per_second"),
            "dense_fairseq_tps": by_name[dense].get("tokens_per_second"),
            "ct2_tps": _ct2_speed(rows, r["variant"]), "dense_ct2_tps": _ct2_speed(rows, dense)})
    return out


def _ratio(a, b):
    return a / b if a and b else None


def findings(prune_rows: List[dict]) -> List[str]:
    out = []
    for p in prune_rows:
        share = p["layer_params"] / p["dense_layer_params"]
        delta = p["bleu"] - p["dense_bleu"]
        ok = share <= 0.5 and delta >= -1.0
        out.append(f"Pruning goal (≤ 50% of the layer parameters, ≤ 1 BLEU below the dense "
                   f"model) {'met' if ok else 'missed'} by `{p['variant']}`: {share:.0%} of "
                   f"`{p['dense']}`'s layer parameters, {p['bleu']:.2f} vs {p['dense_bleu']:.2f} "
                   f"BLEU ({delta:+.2f}).")
        layers = _ratio(p["dense_ms"]["decoder_layers_ms"], p["compact_ms"]["decoder_layers_ms"])
        out.append(f"Decoder-layer time per step (goal ≥ 1.8x lower) for `{p['variant']}`: "
                   f"{p['dense_ms']['decoder_layers_ms']:.2f} → "
                   f"{p['compact_ms']['decoder_layers_ms']:.2f} ms, {layers:.2f}x "
                   f"({'met' if layers >= 1.8 else 'missed'}; the multiply-adds there fall "
                   f"{p['layers_bound']:.2f}x).")
        ct2 = _ratio(p["ct2_tps"], p["dense_ct2_tps"])
        if ct2 is not None:
            reach = ct2 / p["sentence_bound"]
            out.append(f"CTranslate2 speed-up of `{p['variant']}` over `{p['dense']}`: {ct2:.2f}x "
                       f"of a {p['sentence_bound']:.2f}x multiply-add bound per sentence "
                       f"({p['step_bound']:.2f}x per step; the output projection is "
                       f"{p['output_share']:.0%} of a dense step): {reach:.0%} of the bound "
                       f"(goal ≥ 90%: {'met' if reach >= 0.9 else 'missed'}).")
    return out


def markdown(prune_rows: List[dict], threads) -> List[str]:
    if not prune_rows:
        return []
    lines = ["## Pruning", "",
             f"Compact models (pruned heads and FFN units removed) against their dense models; "
             f"time per decoder call (one step of a beam-5 batch of 32) from forward hooks during "
             f"fairseq's beam search on the first test batches, {threads} threads; MAC bound = "
             "dense multiply-adds / compact multiply-adds.", "",
             "| variant | BLEU (dense) | layer params | heads enc / dec-self / dec-cross | "
             "FFN units enc / dec | decoder layers ms | output proj. ms | rest ms | "
             "MAC bound step / sentence | fairseq tok/s (dense) | CT2 tok/s (dense) |",
             "|" + "---|" * 11]

    def join(v):
        return ",".join("–" if x is None else str(x) for x in (v or []))

    for p in prune_rows:
        h, f = p.get("heads") or {}, p.get("ffn") or {}
        d, c = p["dense_ms"], p["compact_ms"]
        lines.append(
            f"| {p['variant']} | {p['bleu']:.2f} ({p['dense_bleu']:.2f}) | "
            f"{p['layer_params']:,} ({p['layer_params'] / p['dense_layer_params']:.0%}) | "
            f"{join(h.get('enc'))} / {join(h.get('dec-self'))} / {join(h.get('dec-cross'))} | "
            f"{join(f.get('enc'))} / {join(f.get('dec'))} | "
            f"{c['decoder_layers_ms']:.2f} ({d['decoder_layers_ms']:.2f}) | "
            f"{c['output_projection_ms']:.2f} ({d['output_projection_ms']:.2f}) | "
            f"{c['rest_ms']:.2f} ({d['rest_ms']:.2f}) | "
            f"{p['step_bound']:.2f}x / {p['sentence_bound']:.2f}x | "
            f"{p['fairseq_tps'] or 0:.0f} ({p['dense_fairseq_tps'] or 0:.0f}) | "
            + (f"{p['ct2_tps']:.0f} ({p['dense_ct2_tps']:.0f}) |" if p["ct2_tps"] and
               p["dense_ct2_tps"] else "– |"))
    lines += ["", "Heads and units are those kept (a layer keeps at least one of each, with zero "
              "output columns when none survived).", ""]
    lines += [f"- {x}" for x in findings(prune_rows)]
    return lines
