"""Experiment configs: ``configs/PRESET/preset.yaml`` plus one YAML file per experiment of the main
job, and the preset's studies in ``configs/studies/PRESET/``.

An experiment file holds fairseq-train options under ``train`` (option names without ``--``;
``true`` for a bare flag) and may ``inherit`` another file of the same preset (at most two files
deep): its keys are the defaults, its ``train`` options merge under the child's.  The model here
is an argparse-style fairseq model, which fairseq's Hydra configs do not describe, so the files
are turned into ordinary command-line flags.
"""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from ..compress.plan import to_flags

CONFIG_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


class ConfigError(ValueError):
    pass


@dataclass
class Experiment:
    name: str
    description: str
    train: Dict[str, object]
    cost: float = 1.0
    finetune_from: Optional[str] = None
    match_updates: Optional[str] = None
    update_fraction: float = 1.0
    baseline: str = "float"  # the float variant its BLEU is judged against (same training)
    teacher: Optional[str] = None  # variant whose checkpoint is --teacher-path (word-level KD)
    distill_data: Optional[str] = None  # variant whose beam translations are the training data
    compact: bool = False  # pruned: evaluated as its compact export, against finetune_from

    def flags(self) -> List[str]:
        return to_flags(self.train)

    @property
    def bits(self) -> Optional[int]:
        """Weight bits (what the model's size and its integer export follow); None in float."""
        if self.train.get("no-quant") or not str(self.train.get("arch", "")).startswith("fullyqt"):
            return None
        return int(self.train.get("quant-weight-bits", self.train.get("quant-bits", 8)))


@dataclass
class Preset:
    name: str
    data: str
    variants: List[Experiment]
    bpe_vocab: int = 8000
    limits: Dict[str, int] = field(default_factory=dict)
    time_budget_minutes: float = 0.0
    kernel_sizes: List[str] = field(default_factory=list)  # decoder-step timing, see kernels.py
    extra_variants: List[Experiment] = field(default_factory=list)  # the full grid (--full-grid)
    max_len: Optional[int] = None  # beam search stops at this many target tokens (else fairseq's 200)
    recipes: List[str] = field(default_factory=list)  # fullyqt-compress recipes of the float model
    recipe_updates: Optional[int] = None  # their base length (else the float model's updates)
    goals: Dict[str, float] = field(default_factory=dict)  # configs/studies/goals.yaml's


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


KEYS = {"description", "inherit", "train", "cost", "finetune_from", "match_updates",
        "update_fraction", "baseline", "teacher", "distill_data", "compact"}


MAX_INHERIT = 2  # hops of inherit: a study over a main-job file over common.yaml


def experiment_path(preset_dir: str, filename: str) -> str:
    """``preset_dir/FILE``, or the preset's study of that name, ``configs/studies/PRESET/FILE``
    (the studies that ``--full-grid`` and ``--variants`` run, kept out of the main job's sight)."""
    path = os.path.join(preset_dir, filename)
    if os.path.exists(path):
        return path
    study = os.path.join(os.path.dirname(preset_dir), "studies", os.path.basename(preset_dir),
                         filename)
    return study if os.path.exists(study) else path


def _merged(preset_dir: str, filename: str, seen=()) -> dict:
    """An experiment file's keys over those of the files it inherits from (all but the
    description)."""
    path = experiment_path(preset_dir, filename)
    if filename in seen:
        raise ConfigError(f"{path}: inherit cycle through {' -> '.join(seen + (filename,))}")
    if len(seen) > MAX_INHERIT:
        raise ConfigError(f"{experiment_path(preset_dir, seen[0])}: inherits "
                          f"{' -> '.join(seen[1:] + (filename,))}: allowed: at most "
                          f"{MAX_INHERIT} files deep")
    raw = _read(path)
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; allowed: {sorted(KEYS)}")
    if not raw.get("inherit"):
        return raw
    parent = _merged(preset_dir, raw["inherit"], seen + (filename,))
    train = {**(parent.get("train") or {}), **(raw.get("train") or {})}
    parent.pop("description", None)
    return {**parent, **raw, "train": train}


def load_experiment(preset_dir: str, name: str) -> Experiment:
    raw = _merged(preset_dir, f"{name}.yaml")
    return Experiment(name, raw.get("description", ""), dict(raw.get("train") or {}),
                      float(raw.get("cost", 1.0)), raw.get("finetune_from"),
                      raw.get("match_updates"), float(raw.get("update_fraction", 1.0)),
                      raw.get("baseline", Experiment.baseline), raw.get("teacher"),
                      raw.get("distill_data"), bool(raw.get("compact", False)))


def load_goals(root: str = CONFIG_ROOT, overrides: Optional[dict] = None,
               where: str = "goals") -> Dict[str, float]:
    """The studies' goals, ``ROOT/studies/goals.yaml`` (the shipped file where a config tree
    has none), with a preset's ``overrides``."""
    path = os.path.join(root, "studies", "goals.yaml")
    if not os.path.isfile(path):
        path = os.path.join(CONFIG_ROOT, "studies", "goals.yaml")
    goals = {k: float(v) for k, v in _read(path).items()}
    for key, value in (overrides or {}).items():
        if key not in goals:
            raise ConfigError(f"{where}: goal {key!r}: allowed: {', '.join(goals)}")
        if type(value) not in (int, float):
            raise ConfigError(f"{where}: goal {key}: {value!r}: allowed: a number")
        goals[key] = float(value)
    return goals


def presets(root: str = CONFIG_ROOT) -> List[str]:
    return sorted(d for d in os.listdir(root)
                  if os.path.isfile(os.path.join(root, d, "preset.yaml")))


def load_preset(name: str, root: str = CONFIG_ROOT) -> Preset:
    if name not in presets(root):
        raise ConfigError(f"preset {name!r}: allowed: {', '.join(presets(root))}")
    pdir = os.path.join(root, name)
    raw = _read(os.path.join(pdir, "preset.yaml"))
    variants = [load_experiment(pdir, v) for v in raw.get("variants", [])]
    extra = [load_experiment(pdir, v) for v in raw.get("extra_variants", [])]
    names = {v.name for v in variants + extra}
    for v in variants + extra:
        where = experiment_path(pdir, f"{v.name}.yaml")
        if v.compact and not (v.finetune_from and v.train.get("prune-method")):
            raise ConfigError(f"{where}: compact needs prune-method in train and finetune_from "
                              "(the dense model it is compared with)")
        names_here = {x.name for x in variants} if v in variants else names
        deps = (v.finetune_from, v.match_updates, v.teacher, v.distill_data) + (
            (v.baseline,) if v.bits or v.distill_data or v.teacher else ())
        for dep in deps:
            if dep and dep not in names_here:
                raise ConfigError(f"{where} refers to {dep!r}, not a variant of "
                                  f"this preset's {'grid' if v in variants else 'full grid'} "
                                  f"({', '.join(sorted(names_here))})")
    from .kernels import SIZES

    kernel_sizes = list(raw.get("kernel_sizes") or [])
    bad = [k for k in kernel_sizes if k not in SIZES]
    if bad:
        raise ConfigError(f"{pdir}/preset.yaml: kernel_sizes {bad}: allowed: {', '.join(SIZES)}")
    max_len = raw.get("max_len")
    if max_len is not None and (type(max_len) is not int or max_len < 1):  # not a YAML bool
        raise ConfigError(f"{pdir}/preset.yaml: max_len {max_len!r}: allowed: an integer >= 1 "
                          "(target tokens)")
    from ..compress.recipe import names as recipe_names

    recipes = list(raw.get("recipes") or [])
    bad = [r for r in recipes if r not in recipe_names()]
    if bad:
        raise ConfigError(f"{pdir}/preset.yaml: recipes {bad}: allowed: "
                          f"{', '.join(recipe_names())}")
    if recipes and "float" not in {v.name for v in variants}:
        raise ConfigError(f"{pdir}/preset.yaml: recipes start from the float variant; the main "
                          "job has none")
    updates = raw.get("recipe_updates")
    if updates is not None and (type(updates) is not int or updates < 1):
        raise ConfigError(f"{pdir}/preset.yaml: recipe_updates {updates!r}: allowed: an "
                          "integer >= 1")
    goals = load_goals(root, raw.get("goals"), f"{pdir}/preset.yaml")
    return Preset(name, raw.get("data", "bible"), variants, int(raw.get("bpe_vocab", 8000)),
                  dict(raw.get("limits") or {}), float(raw.get("time_budget_minutes", 0)),
                  kernel_sizes, extra, max_len, recipes, updates, goals)
