"""The commands a recipe runs, in order: one ``fairseq-train`` per stage (each fine-tuned from
the one before), ``fullyqt-export --format compact`` after a pruning stage, and the exports to
ship.  ``--dry-run`` prints exactly these; a run executes exactly these."""
import os
import shlex
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from .recipe import Recipe, Stage
from .source import Source

USER_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_FLOOR = 400  # the least base length a recipe runs at, whatever the input's update count


@dataclass
class Step:
    kind: str  # "train" or "export"
    name: str
    cmd: List[str]
    output: str  # the file or folder the step leaves (a train step: its save directory)
    stage: Optional[Stage] = None
    updates: int = 0  # a train step's length
    log: str = ""

    def shell(self) -> str:
        return " ".join(shlex.quote(x) for x in self.cmd)


@dataclass
class Plan:
    recipe: Recipe
    base: int
    steps: List[Step] = field(default_factory=list)
    final: str = ""  # the last stage's model: what the shipped files are exported from

    @property
    def stages(self) -> List[Step]:
        return [s for s in self.steps if s.kind == "train"]

    def shipped(self, fmt: str) -> Optional[str]:
        return next((s.output for s in self.steps if s.kind == "export" and s.name == fmt), None)


def to_flags(options: Dict[str, object]) -> List[str]:
    """fairseq-train flags of ``{option: value}`` (``True``: a bare flag; ``False``/``None``:
    left out)."""
    flags = []
    for key, value in options.items():
        if value is False or value is None:
            continue
        flags.append(f"--{key}")
        if value is not True:
            flags.append(str(value))
    return flags


def default_base(source: Source) -> int:
    """The input's own update count, at least ``BASE_FLOOR``."""
    return max(BASE_FLOOR, source.num_updates)


def ship_path(out: str, fmt: str) -> str:
    return os.path.join(out, "ct2") if fmt == "ctranslate2" else os.path.join(out, f"model.{fmt}.pt")


def make_plan(recipe: Recipe, source: Source, data: str, out: str, *, base: int,
              teacher: Optional[str] = None, extra: List[str] = ()) -> Plan:
    """Every command of ``recipe`` on ``source`` and ``data``, writing under ``out``; ``extra``
    goes to every fairseq-train unchanged (after the recipe's options, so it wins)."""
    plan = Plan(recipe, base)
    previous = source.path
    device = [] if torch.cuda.is_available() else ["--cpu"]
    languages = []
    for flag, lang in zip(("--source-lang", "--target-lang"), source.languages):
        languages += [flag, lang] if lang else []
    for k, stage in enumerate(recipe.stages, 1):
        save = os.path.join(out, "stages", f"{k}-{stage.name}")
        length = stage.length(base)
        options = stage.options(base)
        options = {"arch": options.pop("arch", None), **source.architecture, **options}
        cmd = ["fairseq-train", data, "--user-dir", USER_DIR, *languages, *to_flags(options),
               "--finetune-from-model", previous, "--teacher-path", teacher or source.path,
               "--max-tokens", str(source.max_tokens or 4096), "--max-update", str(length),
               "--save-dir", save, "--save-interval-updates", str(max(1, length // 5)),
               "--keep-interval-updates", "1", "--no-epoch-checkpoints", "--seed", "1",
               "--no-progress-bar", "--log-format", "json", "--log-interval", "10", *device,
               *extra]
        plan.steps.append(Step("train", stage.name, cmd, save, stage, length,
                               os.path.join(save, "train.log")))
        previous = os.path.join(save, "checkpoint_last.pt")
        if stage.compact:
            compact = os.path.join(save, "model.compact.pt")
            plan.steps.append(Step("export", "compact", [
                "fullyqt-export", previous, "--format", "compact", "--out", compact, "--force"],
                compact, log=os.path.join(save, "compact.log")))
            previous = compact
    plan.final = previous
    for fmt in recipe.ship:
        target = ship_path(out, fmt)
        vmap = ["--vmap"] if recipe.vmap and fmt == "ctranslate2" else []
        plan.steps.append(Step("export", fmt, [
            "fullyqt-export", plan.final, "--format", fmt, "--out", target, "--force",
            "--data", data, *vmap], target, log=os.path.join(out, "logs", f"export-{fmt}.log")))
    return plan
