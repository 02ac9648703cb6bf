"""The benchmark report: ``report.md`` (table and findings), ``results.json``, ``pareto.png``."""
import json
import math
import os
from dataclasses import replace
from typing import List, Optional

from ..eval.significance import interval_text
from .config import load_goals
from .row import Row, by_variant

COLUMNS = [("variant", "variant"), ("bits", "bits"), ("bleu", "BLEU"), ("params", "params"),
           ("model_bytes", "model bytes"), ("size_vs_float", "size vs float"),
           ("tokens_per_second", "decode tok/s"), ("num_updates", "updates"),
           ("time_per_update_vs_float", "time/update vs float")]


def _fmt(key, value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "bits":
        return str(value)
    if key in ("params", "model_bytes", "num_updates"):
        return f"{int(value):,}"
    if key in ("size_vs_float", "time_per_update_vs_float"):
        return f"{value:.2f}x"
    if key == "tokens_per_second":
        return f"{value:.0f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def with_relative_columns(rows: List[Row], baseline: str = "float") -> List[Row]:
    """``rows`` with size and time per update against the ``baseline`` row's."""
    base = by_variant(rows).get(baseline)
    return [replace(r, size_vs_float=r.model_bytes / base.model_bytes if base else None,
                    time_per_update_vs_float=r.sec_per_update / base.sec_per_update
                    if base and base.sec_per_update and r.sec_per_update else None)
            for r in rows]


def findings(rows: List[Row], goals: dict) -> List[str]:
    """The claims the report checks: 8-bit FullyQT >= float BLEU, and QAT -> CTranslate2 int8
    >= CTranslate2's own int8 post-training quantization of the float model; each quantized
    variant against its ``baseline``, the float model trained the same way; ``goals``: the
    studies' (``configs/studies/goals.yaml``)."""
    out, g = [], goals
    by_name = by_variant(rows)
    base = by_name.get("float")
    if base is None:
        return out
    for r in rows:
        ref = by_name.get(r.baseline or "float")
        if not r.trained or r.bits != 8 or ref is None:
            continue
        delta = r.bleu - ref.bleu
        verdict = "holds" if delta >= 0 else "does not hold"
        iv = r.vs_control_interval if r.baseline == ref.variant else None
        noise = "" if not iv else (
            f"; 95% paired-bootstrap interval {interval_text(*iv)}: "
            + ("not distinguishable from no difference on this test set" if iv[0] <= 0 <= iv[1]
               else "a difference beyond the test set's noise"))
        out.append(f"FullyQT claim (8-bit ≥ float BLEU) {verdict} for `{r.variant}`: "
                   f"{r.bleu:.2f} vs `{ref.variant}` {ref.bleu:.2f} ({delta:+.2f}{noise}).")
    for r in rows:
        teacher = by_name.get(r.teacher or "")
        if not r.trained or teacher is None:
            continue
        delta = r.bleu - teacher.bleu
        line = (f"`{r.variant}` distilled from `{teacher.variant}`: {r.bleu:.2f} vs the "
                f"teacher's {teacher.bleu:.2f} ({delta:+.2f})")
        if r.bits == 4:
            ok = delta >= g["distilled_4bit_bleu"]
            line += (f" (4-bit goal, ≥ {g['distilled_4bit_bleu']:+g}: "
                     f"{'met' if ok else 'not met'})")
        control = by_name.get(r.baseline or "")
        if control is not None and control is not teacher:
            iv = r.vs_control_interval
            what = ("the dense model it was pruned from" if r.dense == control.variant
                    else "float, same recipe")
            line += (f"; its control `{control.variant}` ({what}) "
                     f"{control.bleu:.2f} ({r.bleu - control.bleu:+.2f}"
                     + (f", 95% paired-bootstrap interval {interval_text(*iv)}"
                        if iv else "") + ")")
        if r.teacher_share is not None:
            line += f"; the teacher's forward pass takes {r.teacher_share:.0%} of update time"
        out.append(line + ".")
    for r in rows:
        if not r.variant.endswith(" native"):
            continue
        fake = by_name.get(r.variant.split(" int")[0])
        speed = r.tokens_per_second / base.tokens_per_second
        goal = "meets" if speed >= g["native_speed"] else "misses"
        line = (f"`{r.variant}` decodes at {speed:.2f}x fairseq float ({goal} the "
                f"{g['native_speed']:g}x goal)")
        if fake is not None:
            same = r.same_as_fake_quant if r.same_as_fake_quant is not None else float("nan")
            bleu_ok = "within" if abs(r.bleu - fake.bleu) <= g["native_bleu"] else "outside"
            line += (f" and {r.tokens_per_second / fake.tokens_per_second:.2f}x its "
                     f"fake-quant model; {same:.1%} identical translations (goal ≥ "
                     f"{g['native_identical']:.0%}: "
                     f"{'met' if same >= g['native_identical'] else 'not met'}), BLEU "
                     f"{r.bleu - fake.bleu:+.2f} ({bleu_ok} the {g['native_bleu']:g} goal)")
        if r.float_matmul_same_as_fake_quant is not None:
            line += (f".  The fake-quant model is decoded with exact arithmetic on its integer "
                     f"codes (`--quant-kernels exact`, the default and what validation runs); "
                     f"with float matmuls on dequantized values instead (`--quant-kernels fake`) "
                     f"it gives {r.float_matmul_same_as_fake_quant:.1%} identical "
                     f"translations (BLEU {r.float_matmul_bleu - fake.bleu:+.2f}): a fully "
                     "quantized network turns last-bit float differences into whole quantization "
                     "steps at later rounding points, so only bit-identical arithmetic "
                     "reproduces every beam")
        out.append(line + ".")
    for r in rows:
        control = r.baseline or "float"
        ptq = by_name.get(f"{control} → CT2 int8 (PTQ)")
        if ptq is not None and "→ CT2" in r.variant and not r.variant.endswith("(PTQ)"):
            delta = r.bleu - ptq.bleu
            out.append(f"`{r.variant}` vs CTranslate2 int8 PTQ of `{control}`: "
                       f"{r.bleu:.2f} vs {ptq.bleu:.2f} ({delta:+.2f}); decode "
                       f"{r.tokens_per_second:.0f} vs fairseq float "
                       f"{base.tokens_per_second:.0f} tok/s.")
    return out


def _scored(rows: List[Row], meta: dict) -> str:
    """How many sentences each row's BLEU covers (all of them, or the rows that fall short)."""
    n = meta.get("test sentences")
    counts = {r.variant: r.scored for r in rows
              if r.kind != "recipe"}  # a recipe's report scores every sentence itself
    short = [f"`{v}` {c}" for v, c in counts.items() if c is not None and c != n]
    if short:
        return f"Sentences scored: fewer than the {n} test sentences for " + ", ".join(short) + "."
    if n and all(c is not None for c in counts.values()):
        return f"Sentences scored: all {n} test sentences in every row."
    return ""


def write_markdown(path: str, rows: List[Row], meta: dict, goals: dict, extra: List[str] = ()):
    lines = [f"# fullyqt benchmark: preset `{meta['preset']}`", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k not in ("preset", "notes")]
    trained = [r.train_minutes for r in rows if r.trained]
    if trained and all(isinstance(t, (int, float)) for t in trained):
        lines.append(f"- training time, all variants (min): {sum(trained):.1f} "
                     "(a rerun reuses finished training; wall time counts this run only)")
    lines += ["", "| " + " | ".join(h for _, h in COLUMNS) + " |",
              "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(k, getattr(r, k)) for k, _ in COLUMNS) + " |")
    lines += ["", "BLEU: sacrebleu on detokenized hypotheses against the raw reference text; "
              f"signature `{rows[0].signature if rows else ''}`.  {_scored(rows, meta)}",
              "Model bytes: for trained variants, b-bit weights with an fp32 scale and minimum "
              "per row bucket and fp32 biases (float: 4 bytes a parameter), tied embeddings "
              "once; for export and CTranslate2 rows, the size on disk.",
              "Decode: beam 5, batch 32, target tokens (with EOS) per second of generation, "
              "model loading excluded; fairseq-generate for fairseq rows, "
              "ctranslate2.Translator for CT2 rows, one batch per thread (`inter_threads` = "
              "threads, `intra_threads` 1: CTranslate2's throughput setting; at small widths one "
              "batch on several threads spends its time synchronizing them).", "",
              "## Findings", ""]
    lines += [f"- {x}" for x in findings(rows, goals) + list(meta.get("notes", []))]
    lines += ["", "## Variants", ""]
    lines += [f"- `{r.variant}`: {r.description}" for r in rows]
    if extra:
        lines += [""] + list(extra)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


def write_plot(path: str, rows: List[Row], title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        mb = r.model_bytes / 2**20
        color = "tab:gray" if r.bits is None else "tab:blue"
        if not r.trained:  # shipped forms: unlabelled hollow markers
            ax.scatter(mb, r.bleu, s=30, facecolors="none", edgecolors=color)
            continue
        ax.scatter(mb, r.bleu, s=40, color=color)
        ax.annotate(r.variant, (mb, r.bleu), textcoords="offset points", xytext=(5, 4),
                    fontsize=8)
    ax.scatter([], [], s=30, facecolors="none", edgecolors="tab:blue",
               label="exports (int native, CTranslate2)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("model size (MiB)")
    ax.set_ylabel("BLEU (sacrebleu)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


STUDIES = (("decode_profile", "Where decode time goes"), ("pruning", "Pruning"),
           ("kronecker", "Kronecker-factorized layers"), ("train_speed", "Training speed"),
           ("two_process", "Two-process training"))  # scripts/studies/NAME.py OUT writes NAME.json


def study_goals(data: dict) -> dict:
    """The goals a run's results were judged by (older runs: the shipped goals file)."""
    return data.get("goals") or load_goals()


def rewrite(out_dir: str):
    """Rebuild report.md and pareto.png from ``out_dir/results.json`` (after editing it, or after
    a study added its section)."""
    with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as f:
        data = json.load(f)
    rows = [Row.from_json(r) for r in data["rows"]]
    return write_report(out_dir, rows, data["meta"], data.get("threads"),
                        data.get("decoder_step") or None, study_goals(data))


def write_report(out_dir: str, rows: List[Row], meta: dict, threads=None, kernel_rows=None,
                 goals: Optional[dict] = None):
    """Write the three report files atomically; returns their paths.  The sections of the
    studies run on this folder (``STUDIES``) join the report."""
    os.makedirs(out_dir, exist_ok=True)
    goals = goals or load_goals()
    rows = with_relative_columns(rows)
    paths = {k: os.path.join(out_dir, f) for k, f in
             (("md", "report.md"), ("json", "results.json"), ("png", "pareto.png"))}
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "rows": [r.to_json() for r in rows], "goals": goals,
                   "decoder_step": kernel_rows or [],
                   "threads": threads}, f, indent=2)
    os.replace(tmp, paths["json"])
    extra = []
    if kernel_rows:
        from .kernels import markdown as kernel_markdown

        extra += [""] + kernel_markdown(kernel_rows, threads)
    for name, title in STUDIES:
        path = os.path.join(out_dir, f"{name}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                extra += ["", f"## {title}", ""] + json.load(f).get("markdown", [])
    write_markdown(paths["md"], rows, meta, goals, extra)
    write_plot(paths["png"], rows, f"BLEU vs size ({meta['preset']})")
    return paths


if __name__ == "__main__":
    import logging
    import sys

    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    if len(sys.argv) != 2 or not os.path.isfile(os.path.join(sys.argv[1], "results.json")):
        sys.exit("usage: python -m fullyqt.bench.report DIR  (DIR holds results.json)")
    print(rewrite(sys.argv[1])["md"])
