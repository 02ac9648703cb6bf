"""The benchmark's recipe rows: each of the preset's recipes run on its float model by the
user's own command, ``fullyqt-compress``, and its report turned into result rows."""
import json
import os
from typing import List, Optional

from ..eval.decode import BIN, run_logged, thread_env
from .row import Row


def run_recipe(name: str, checkpoint: str, data: dict, out: str, *, threads: int,
               updates: Optional[int], say) -> dict:
    """``fullyqt-compress`` of ``checkpoint`` by recipe ``name`` into ``out/recipes/name``
    (a rerun resumes it); returns its report.json."""
    folder = os.path.join(out, "recipes", name)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    cmd = [os.path.join(BIN, "fullyqt-compress"), checkpoint, data["bin"], "--recipe", name,
           "--out", folder, "--threads", str(threads), "--reference", data["test_ref"]]
    if updates:
        cmd += ["--updates", str(updates)]
    say(f"[recipe {name}] fullyqt-compress (log: {folder}.log)")
    run_logged(cmd, folder + ".log", lambda line: line.startswith("[") and say(
        f"[recipe {name}] {line.split('] ', 1)[-1].rstrip()}"), env=thread_env(threads))
    with open(os.path.join(folder, "report.json"), encoding="utf-8") as f:
        return json.load(f)


def recipe_rows(name: str, report: dict) -> List[Row]:
    """One result row per model the recipe's report decoded, the input's left out (the float
    variant's own rows show it)."""
    updates = sum(s["updates"] for s in report["stages"])
    minutes = sum(s["seconds"] for s in report["stages"]) / 60
    rows = []
    for s in report["systems"]:
        if s["name"].startswith("input"):
            continue
        engine = " (CT2)" if s["engine"] == "ctranslate2" else ""
        rows.append(Row(variant=f"recipe {name}: {s['name']}{engine}", kind="recipe",
                        recipe=name, description=report.get("description", ""), bleu=s["bleu"],
                        baseline="float", vs_control_interval=s["interval"], params=s["params"],
                        model_bytes=s["bytes"], tokens_per_second=s["tokens_per_second"],
                        num_updates=updates, train_minutes=minutes,
                        candidates=s.get("candidates"), goals=report.get("goals")))
    return rows
