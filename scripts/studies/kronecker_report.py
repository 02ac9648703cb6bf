"""The Kronecker study's report section: the factorized models of a finished benchmark run against
their float teacher, in BLEU, FFN + attention parameters, bytes (the model's own and its
multiplied-out CTranslate2 export) and decode speed, with the goals of the run's results.json.

    python scripts/studies/kronecker_report.py runs/cpu-small     # after --full-grid

Writes OUT/kronecker.json (records and rendered table, for ``python -m fullyqt.bench.readme``)
and rebuilds OUT/report.md.
"""
from typing import List, Optional

from fullyqt.bench.report import rewrite, study_goals
from fullyqt.bench.row import Row, by_variant
from finished_run import parse
from train_speed import write_outputs


def _ct2(rows: List[Row], variant: str) -> Optional[Row]:
    return next((r for r in rows if r.variant.startswith(f"{variant} → CT2")), None)


def kron_rows(rows: List[Row]) -> List[dict]:
    """One record per trained variant with Kronecker layers."""
    by_name = by_variant(rows)
    ref = by_name.get("float-finetune") or by_name.get("float")
    base = by_name.get("float")
    out = []
    for r in rows:
        if not r.trained or not r.kron_layers or ref is None or ref.ffn_attn_params is None:
            continue
        teacher = by_name.get(r.teacher or "") or ref
        ct2 = _ct2(rows, r.variant)
        out.append({
            "variant": r.variant, "layers": r.kron_layers, "bits": r.bits,
            "bleu": r.bleu, "teacher": teacher.variant, "teacher_bleu": teacher.bleu,
            "ffn_attn_x": ref.ffn_attn_params / max(1, r.ffn_attn_params),
            "embed_x": ref.embed_params / max(1, r.embed_params),
            "params": r.params, "model_bytes": r.model_bytes,
            "bytes_vs_float": r.model_bytes / base.model_bytes if base else None,
            "ct2_bytes": ct2.model_bytes if ct2 else None,
            "tokens_per_second": r.tokens_per_second,
            "teacher_tps": teacher.tokens_per_second,
            "ct2_tps": ct2.tokens_per_second if ct2 else None,
            "pruned": bool(r.dense),
            "control": getattr(by_name.get(r.variant[:-3] + "-ce"), "bleu", None)
            if r.variant.endswith("-kd") else None})
    return out


def findings(krows: List[dict], goals: dict) -> List[str]:
    out, g = [], goals
    for k in krows:
        delta = k["bleu"] - k["teacher_bleu"]
        # every distilled student (kron4-kd, kron4-kd-long-t1, ...); not stage 1 (-hidden)
        if "-kd" in k["variant"] and set(k["layers"].split(",")) >= {"ffn", "attn"}:
            # "4x": rank-1 factors of a quarter of the numbers each hold B's few numbers on top
            # (512x128 as 256x64 ⊗ 2x2: 16,388, 3.999x), so the ratio counts as shown, 4.00x
            ok = round(k["ffn_attn_x"], 2) >= g["kron_layer_reduction"] and delta >= g["kron_bleu"]
            out.append(f"Kronecker goal (FFN + attention ≥ {g['kron_layer_reduction']:g}x fewer "
                       f"parameters, ≥ {g['kron_bleu']:+g} BLEU against the float teacher) "
                       f"{'met' if ok else 'missed'} by `{k['variant']}`: "
                       f"{k['ffn_attn_x']:.2f}x fewer, {k['bleu']:.2f} vs `{k['teacher']}` "
                       f"{k['teacher_bleu']:.2f} ({delta:+.2f}).")
            if k["control"] is not None:
                gain = k["bleu"] - k["control"]
                out.append(f"Distillation goal (≥ {g['kron_distill_gain']:g} BLEU over the same "
                           f"updates without it) "
                           f"{'met' if gain >= g['kron_distill_gain'] else 'missed'} by "
                           f"`{k['variant']}`: "
                           f"{k['bleu']:.2f} vs {k['control']:.2f} ({gain:+.2f}).")
        if k["pruned"] and k["bytes_vs_float"] is not None:
            ok = k["bytes_vs_float"] <= g["combined_bytes"] and delta >= g["combined_bleu"]
            out.append(f"Combined goal (≤ {g['combined_bytes']:g}x the float model's bytes, "
                       f"≥ {g['combined_bleu']:+g} BLEU) {'met' if ok else 'missed'} by "
                       f"`{k['variant']}`: "
                       f"{k['bytes_vs_float']:.3f}x, {k['bleu']:.2f} vs `{k['teacher']}` "
                       f"{k['teacher_bleu']:.2f} ({delta:+.2f}).")
    return out


def _num(v, fmt):
    return "–" if v is None else format(v, fmt)


def markdown(krows: List[dict], goals: dict) -> List[str]:
    if not krows:
        return []
    lines = ["Parameters are counted against the float model (FFN + attention matrices; "
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
    return lines + [""] + [f"- {f}" for f in findings(krows, goals)]


def main(argv=None):
    p, a, data = parse("kronecker_report.py", __doc__, argv, threads=False)
    records = kron_rows([Row.from_json(r) for r in data["rows"]])
    if not records:
        p.error(f"{a.out}: the run has no Kronecker-factorized variant")
    write_outputs(a.out, "kronecker", "Kronecker-factorized layers",
                  {"kind": "kronecker", "records": records}, markdown(records, study_goals(data)))
    print(rewrite(a.out)["md"])


if __name__ == "__main__":
    main()
