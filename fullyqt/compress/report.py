"""``DIR/report.md`` and ``DIR/report.json`` of a fullyqt-compress run: what each stage took,
how the result compares with the input and with CTranslate2's int8 conversion of it, and the
recipe's goals met or missed."""
import json
import os
from dataclasses import asdict
from typing import List, Optional

from ..eval.significance import interval_text
from .evaluate import System
from .recipe import GOALS, Recipe


def reached(recipe: Recipe, systems: List[System], float_bytes: int,
            shipped_bytes: int) -> dict:
    """``{goal: (bound, value, met)}`` for the goals the run measured."""
    by = {s.name: s for s in systems}
    values = {"bytes_ratio": shipped_bytes / float_bytes if float_bytes else None}
    if "result" in by:
        values["bleu_delta"] = by["result"].delta
    shipped_ct2 = by.get("result → CTranslate2 + vmap") or by.get("result → CTranslate2")
    if shipped_ct2 and "input → CTranslate2 int8" in by:
        values["ct2_speed_ratio"] = (shipped_ct2.tokens_per_second
                                     / by["input → CTranslate2 int8"].tokens_per_second)
    out = {}
    for goal, bound in recipe.goals.items():
        value = values.get(goal)
        if value is not None:
            met = value <= bound if goal == "bytes_ratio" else value >= bound
            out[goal] = (bound, value, met)
    return out


def _stage_lines(stages: List[dict]) -> List[str]:
    lines = ["| stage | updates | minutes |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['updates']} | {s['seconds'] / 60:.1f} |" for s in stages]
    return lines


def _system_lines(systems: List[System], float_bytes: int) -> List[str]:
    ct2 = next((s for s in systems if s.name == "input → CTranslate2 int8"), None)
    lines = ["| model | engine | BLEU | vs input (95% interval) | bytes | vs float | "
             "tokens/s | vs CT2 int8 of input | candidates per batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in systems:
        diff = "–" if s.delta is None else f"{s.delta:+.2f} {interval_text(*s.interval)}"
        speed = f"{s.tokens_per_second / ct2.tokens_per_second:.2f}x" if ct2 else "–"
        kept = "–" if s.candidates is None else f"{s.candidates:.0f}"
        lines.append(f"| {s.name} | {s.engine} | {s.bleu:.2f} | {diff} | {s.bytes:,} | "
                     f"{s.bytes / float_bytes:.3f}x | {s.tokens_per_second:.0f} | {speed} | "
                     f"{kept} |")
    return lines


def write(out: str, recipe: Recipe, meta: dict, stages: List[dict],
          systems: Optional[List[System]], float_bytes: int, shipped: dict) -> str:
    """Write both files (each whole or not at all); returns the Markdown path."""
    primary = next(iter(shipped.values()))
    from ..eval.size import tree_bytes

    shipped_bytes = tree_bytes(primary)
    goals = reached(recipe, systems or [], float_bytes, shipped_bytes)
    md = [f"# fullyqt-compress: recipe `{recipe.name}`", "", recipe.description, "",
          f"Follows {recipe.follows}." if recipe.follows else "", ""]
    md += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    md += ["## Stages", ""] + _stage_lines(stages) + [""]
    md += ["## Shipped files", ""]
    md += [f"- `{os.path.relpath(p, out)}` ({fmt}): {tree_bytes(p):,} bytes"
           for fmt, p in shipped.items()] + [""]
    if systems:
        md += ["## Test set", "",
               "BLEU: sacrebleu on detokenized output; the interval is the 95% paired bootstrap "
               "of the difference to the input (1,000 resamples).  Bytes: files on disk; the "
               "float model counts 4 bytes a parameter.  Tokens/s: target tokens, beam 5, "
               "batches of 32, the same threads for every row; CTranslate2 one batch per "
               "thread.  Candidates: target tokens a batch of 32 test sentences keeps under the "
               "vocabulary map (of the dictionary's "
               f"{meta.get('target vocabulary', '?')}).", ""] + _system_lines(systems, float_bytes) + [""]
    if goals:
        md += ["## Goals", "", "| goal | bound | reached | met |", "|---|---|---|---|"]
        md += [f"| {GOALS[g]} | {b:g} | {v:.3f} | {'yes' if ok else '**no**'} |"
               for g, (b, v, ok) in goals.items()] + [""]
    data = {"recipe": recipe.name, "description": recipe.description, "meta": meta,
            "stages": stages,
            "shipped": {f: {"path": p, "bytes": tree_bytes(p)} for f, p in shipped.items()},
            "float_bytes": float_bytes,
            "systems": [asdict(s) for s in systems or []],
            "goals": {g: {"bound": b, "reached": v, "met": ok}
                      for g, (b, v, ok) in goals.items()}}
    md_path = os.path.join(out, "report.md")
    for path, text in ((os.path.join(out, "report.json"), json.dumps(data, indent=1)),
                       (md_path, "\n".join(md))):
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(path + ".tmp", path)
    return md_path
