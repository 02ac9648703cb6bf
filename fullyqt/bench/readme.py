"""Write a benchmark's or a study's results table into a Markdown file between two markers, so
the documents' numbers come from a results file and cannot drift from the run they describe.

    python -m fullyqt.bench.readme runs/cpu-small/results.json README.md --section recipes
    python -m fullyqt.bench.readme runs/cpu-small/results.json README.md --section headline
    python -m fullyqt.bench.readme runs/cpu-small/results.json docs/results/PAGE.md  # results:...
    python -m fullyqt.bench.readme runs/train-speed/train_speed.json docs/benchmark.md \
        --block train-speed-bible           # a study's output: its own marker, or --block
    python -m fullyqt.bench.readme runs/cpu-small/pruning.json PAGE.md --block pruning-t1
"""
import argparse
import json
import os
import sys
from typing import List

from ..eval.significance import interval_text
from .row import Row, by_variant


def markers(name: str):
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _num(value, fmt):
    return "–" if value is None else format(value, fmt)


def results_block(data: dict) -> List[str]:
    """The table: every row of the run, its BLEU against its control and its teacher."""
    meta, rows = data["meta"], [Row.from_json(r) for r in data["rows"]]
    by_name = by_variant(rows)
    lines = [f"Run of {meta.get('date')} on {meta.get('machine')}, preset `{meta.get('preset')}`, "
             f"{meta.get('test sentences')} test sentences; generated from `results.json` by "
             "`python -m fullyqt.bench.readme`.", "",
             "| variant | bits | BLEU | vs control | size vs float | decode tok/s | updates | "
             "time/update vs float |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        control = by_name.get(r.baseline or "")
        versus = (f"{r.bleu - control.bleu:+.2f}{_interval(r)} vs `{control.variant}`"
                  if control is not None and control is not r else "–")
        teacher = by_name.get(r.teacher or "")
        if teacher is not None:
            versus += f"; {r.bleu - teacher.bleu:+.2f} vs teacher `{teacher.variant}`"
        engine = " (CT2)" if "→ CT2" in r.variant else ""
        lines.append(" | ".join([
            f"| {r.variant}", str(r.bits or "float"), f"{r.bleu:.2f}", versus,
            _num(r.size_vs_float, ".2f") + "x", _num(r.tokens_per_second, ".0f") + engine,
            _num(r.num_updates, ",") if r.trained else "–",
            (_num(r.time_per_update_vs_float, ".2f") + "x") if r.trained else "–"]) + " |")
    return lines


def _interval(row: Row) -> str:
    """`` [low, high]``: the 95% paired-bootstrap interval of the difference, where measured."""
    iv = row.vs_control_interval
    return f" {interval_text(*iv)}" if iv else ""


def recipes_block(data: dict) -> List[str]:
    """The main job's recipes: each shipped model against the float model and CTranslate2's
    int8 conversion of it, and each recipe's goals as its own report measured them."""
    from ..compress.recipe import GOALS

    meta, rows = data["meta"], [Row.from_json(r) for r in data["rows"]]
    recipes = [r for r in rows if r.kind == "recipe"]
    if not recipes:
        raise ValueError("the run has no recipe rows (a preset without recipes, or --no-recipes)")
    by_name = by_variant(rows)
    base = by_name.get("float")
    float_bytes = base.model_bytes if base else None
    lines = [f"Main job of {meta.get('date')} (commit `{meta.get('commit') or 'unknown'}`) on "
             f"{meta.get('machine')}, preset `{meta.get('preset')}`, {meta.get('test sentences')} "
             "test sentences, beam 5; generated from its `results.json` by `python -m "
             "fullyqt.bench.readme --section recipes`.", "",
             "| model | BLEU | vs float (95% interval) | bytes vs float | tokens/s |",
             "|---|---|---|---|---|"]
    context = [by_name[n] for n in ("float", "float → CT2 int8 (PTQ)", "float-finetune")
               if n in by_name]
    for r in context + recipes:
        name = r.variant.replace("recipe ", "`", 1).replace(":", "`:", 1) if r in recipes \
            else f"`{r.variant}`"
        engine = " (CT2)" if "CT2" in r.variant else ""
        versus = "–" if r is base or base is None else (
            f"{r.bleu - base.bleu:+.2f}{_interval(r) if r in recipes else ''}")
        ratio = f"{r.model_bytes / float_bytes:.3f}x" if r.model_bytes and float_bytes else "–"
        lines.append(f"| {name} | {r.bleu:.2f} | {versus} | {ratio} | "
                     f"{_num(r.tokens_per_second, '.0f')}{engine} |")
    lines += ["", "Goals, as each recipe's report measured them (its own decoding of the float "
              "model in CTranslate2 int8 is the speed reference):", ""]
    for recipe, goals in recipe_goals(recipes).items():
        parts = []
        for goal, g in goals.items():
            bound, value, met = (g["bound"], g["reached"], g["met"]) if isinstance(g, dict) else g
            parts.append(f"{GOALS.get(goal, goal)} {bound:g}: {value:.3f}, "
                         f"{'met' if met else '**missed**'}")
        lines.append(f"- `{recipe}`: " + "; ".join(parts))
    return lines


def recipe_goals(rows: List[Row]) -> dict:
    """Each recipe's goals as its report judged them (the first of its rows that has them), in
    the rows' order."""
    found = {}
    for r in rows:
        if r.kind == "recipe" and r.goals and r.recipe not in found:
            found[r.recipe] = r.goals
    return found


def headline_block(data: dict) -> List[str]:
    """One paragraph: what each recipe of the main job reached against its goals, for the top
    of the README."""
    from ..compress.recipe import GOALS

    meta = data["meta"]
    reached = recipe_goals([Row.from_json(r) for r in data["rows"]])
    if not reached:
        raise ValueError("the run has no recipe rows (a preset without recipes, or --no-recipes)")
    parts = [f"`{recipe}` " + ", ".join(f"{GOALS[k].split(' (')[0]} {_reached(k, g['reached'])}"
                                      for k, g in goals.items() if k in GOALS)
             for recipe, goals in reached.items()]
    return [f"Last main job ({meta.get('date')}, commit `{meta.get('commit') or 'unknown'}`, "
            f"{meta.get('machine')}; each recipe run by `fullyqt-compress` on the float model "
            "the job trained): " + "; ".join(parts) + "."]


def _reached(goal: str, value: float) -> str:
    return f"{value:+.2f}" if goal == "bleu_delta" else f"{value:.3f}x" if goal == "bytes_ratio" \
        else f"{value:.2f}x"


SECTIONS = {"recipes": recipes_block, "headline": headline_block}


def update(results_path: str, markdown_path: str, block: str = None, section: str = "results"):
    with open(results_path, encoding="utf-8") as f:
        data = json.load(f)
    if section in SECTIONS:
        (begin, end), lines = markers(block or section), SECTIONS[section](data)
    elif "markdown" in data:  # a study's output (scripts/studies/), its table rendered
        (begin, end), lines = markers(block or data["kind"].replace("_", "-")), data["markdown"]
    else:
        (begin, end), lines = markers(block or "results"), results_block(data)
    with open(markdown_path, encoding="utf-8") as f:
        text = f.read()
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{markdown_path}: needs one '{begin}' line before one '{end}' line")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    new = head + begin + "\n" + "\n".join(lines) + "\n" + end + tail
    tmp = markdown_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(new)
    os.replace(tmp, markdown_path)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fullyqt.bench.readme",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("results", help="a benchmark's results.json")
    p.add_argument("markdown", help="the file to update (e.g. README.md)")
    p.add_argument("--block", help="marker name of the block to fill (default: the table's "
                                   "own, e.g. train-speed), for a second run of the same kind")
    p.add_argument("--section", choices=("results", *SECTIONS), default="results",
                   help="of a benchmark's results.json: its results table (default), its "
                        "recipes and their goals, or the headline paragraph of what they reached")
    a = p.parse_args(argv)
    try:
        update(a.results, a.markdown, a.block, a.section)
    except (OSError, ValueError) as e:
        sys.exit(f"{p.prog}: error: {e}")
    except KeyError as e:
        sys.exit(f"{p.prog}: error: {a.results}: not a benchmark results file (no {e})")


if __name__ == "__main__":
    main()
