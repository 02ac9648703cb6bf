"""Write a benchmark's results table into a Markdown file between two markers, so the README's
numbers come from ``results.json`` and cannot drift from the run they describe.

    python -m fullyqt.bench.readme runs/cpu-small/results.json README.md      # results:begin/end
    python -m fullyqt.bench.readme runs/train-speed/train_speed.json README.md  # train-speed:...
    python -m fullyqt.bench.readme runs/two-process/two_process.json README.md  # two-process:...
    python -m fullyqt.bench.readme runs/train-speed-bible/train_speed.json README.md \
        --block train-speed-bible                                              # a second block
    python -m fullyqt.bench.readme runs/cpu-small/results.json README.md --section pruning
    python -m fullyqt.bench.readme runs/cpu-small/results.json README.md --section kronecker
    python -m fullyqt.bench.readme runs/compact-speed.json README.md   # compact-speed:...
"""
import argparse
import json
import os
import sys
from typing import List

from ..eval.significance import interval_text


def _train_speed():
    from .train_speed import table_lines

    return "train-speed", table_lines


def _two_process():
    from .two_process import table_lines

    return "two-process", table_lines


def _compact_speed():
    from .compact_speed import table_lines

    return "compact-speed", table_lines


# kind of a results file -> (README marker name, its table), imported when used
TABLES = {"train_speed": _train_speed, "two_process": _two_process,
          "compact_speed": _compact_speed}


def markers(name: str):
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def _num(value, fmt):
    return "–" if value is None else format(value, fmt)


def results_block(data: dict) -> List[str]:
    """The table: every row of the run, its BLEU against its control and its teacher."""
    meta, rows = data["meta"], data["rows"]
    by_name = {r["variant"]: r for r in rows}
    lines = [f"Run of {meta.get('date')} on {meta.get('machine')}, preset `{meta.get('preset')}`, "
             f"{meta.get('test sentences')} test sentences; generated from `results.json` by "
             "`python -m fullyqt.bench.readme`.", "",
             "| variant | bits | BLEU | vs control | size vs float | decode tok/s | updates | "
             "time/update vs float |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        control = by_name.get(r.get("baseline") or "")
        versus = (f"{r['bleu'] - control['bleu']:+.2f}{_interval(r)} vs `{control['variant']}`"
                  if control is not None and control is not r else "–")
        teacher = by_name.get(r.get("teacher") or "")
        if teacher is not None:
            versus += f"; {r['bleu'] - teacher['bleu']:+.2f} vs teacher `{teacher['variant']}`"
        engine = " (CT2)" if "→ CT2" in r["variant"] else ""
        lines.append(" | ".join([
            f"| {r['variant']}", str(r.get("bits") or "float"), f"{r['bleu']:.2f}", versus,
            _num(r.get("size_vs_float"), ".2f") + "x",
            _num(r.get("tokens_per_second"), ".0f") + engine,
            _num(r.get("num_updates"), ",") if r.get("kind", "trained") == "trained" else "–",
            (_num(r.get("time_per_update_vs_float"), ".2f") + "x")
            if r.get("kind", "trained") == "trained" else "–"]) + " |")
    return lines


def _interval(row: dict) -> str:
    """`` [low, high]``: the 95% paired-bootstrap interval of the difference, where measured."""
    iv = row.get("vs_control_interval")
    return f" {interval_text(*iv)}" if iv else ""


def pruning_block(data: dict) -> List[str]:
    """The report's pruning table and goals (compact models against their dense models)."""
    from .pruning import markdown

    meta = data["meta"]
    threads = str(meta.get("machine", "")).rsplit(", ", 1)[-1].split(" ")[0] or "?"
    lines = markdown(data.get("pruning") or [], threads)
    if not lines:
        raise ValueError("the run has no pruning records (no compact variant)")
    return [f"Run of {meta.get('date')} on {meta.get('machine')}, preset `{meta.get('preset')}`; "
            "generated from `results.json` by `python -m fullyqt.bench.readme --section "
            "pruning`.", *lines[1:]]


def kronecker_block(data: dict) -> List[str]:
    """The report's Kronecker table and goals (factorized models against their teacher)."""
    from .kronecker import kron_rows, markdown

    lines = markdown(kron_rows(data["rows"]))
    if not lines:
        raise ValueError("the run has no Kronecker-factorized variant")
    meta = data["meta"]
    return [f"Run of {meta.get('date')} on {meta.get('machine')}, preset `{meta.get('preset')}`; "
            "generated from `results.json` by `python -m fullyqt.bench.readme --section "
            "kronecker`.", *lines[1:]]


SECTIONS = {"pruning": pruning_block, "kronecker": kronecker_block}


def update(results_path: str, markdown_path: str, block: str = None, section: str = "results"):
    with open(results_path, encoding="utf-8") as f:
        data = json.load(f)
    if section in SECTIONS:
        (begin, end), lines = markers(block or section), SECTIONS[section](data)
    elif data.get("kind") in TABLES:
        marker, table_lines = TABLES[data["kind"]]()
        (begin, end), lines = markers(block or marker), table_lines(data)
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
                   help="of a benchmark's results.json: its results table (default), or its "
                        "pruning or Kronecker table and goals")
    a = p.parse_args(argv)
    try:
        update(a.results, a.markdown, a.block, a.section)
    except (OSError, ValueError) as e:
        sys.exit(f"{p.prog}: error: {e}")
    except KeyError as e:
        sys.exit(f"{p.prog}: error: {a.results}: not a benchmark results file (no {e})")


if __name__ == "__main__":
    main()
