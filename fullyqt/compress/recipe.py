"""Recipes: ``configs/recipes/NAME.yaml``, the stages that turn a float model into a shipped one.

A recipe lists stages, each a ``fairseq-train`` run fine-tuned from the stage before it (the
first from the input model) with the input (or ``--teacher``) as teacher: ``updates`` is the
stage's length as a multiple of the recipe's base length, ``train`` its options over
``common.yaml``'s, ``scaled`` options set to a fraction of the stage's length, ``compact: true``
removes what the stage pruned before the next one.  ``ship`` names the exports written at the
end (``vmap: true``: the CTranslate2 model with a vocabulary map of the training data), ``goals`` what the result is judged against (in the report), ``follows`` which study
findings the recipe takes.
"""
import hashlib
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import yaml

from ..errors import UserError

RECIPE_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "recipes")
SHIP_FORMATS = ("int8", "int6", "int4", "ctranslate2")
GOALS = {  # goal key -> what it bounds, as the report states it
    "bleu_delta": "BLEU vs input (at least)",
    "bytes_ratio": "bytes vs float (at most)",
    "ct2_speed_ratio": "CTranslate2 tokens/s vs CTranslate2 int8 of the input (at least)",
}


class RecipeError(UserError):
    """A recipe that does not exist or does not say what a recipe must."""


@dataclass
class Stage:
    name: str
    updates: float  # multiple of the recipe's base length
    train: Dict[str, object]
    scaled: Dict[str, float] = field(default_factory=dict)
    compact: bool = False

    def length(self, base: int) -> int:
        return max(1, round(base * self.updates))

    def options(self, base: int) -> Dict[str, object]:
        """The stage's fairseq-train options, ``scaled`` ones made update counts."""
        length = self.length(base)
        return {**self.train, **{k: max(1, round(length * f)) for k, f in self.scaled.items()}}

    @property
    def quantized(self) -> Optional[int]:
        if self.train.get("no-quant"):
            return None
        return int(self.train.get("quant-weight-bits", self.train.get("quant-bits", 8)))


@dataclass
class Recipe:
    name: str
    description: str
    stages: List[Stage]
    ship: List[str]
    goals: Dict[str, float]
    follows: str = ""
    vmap: bool = False  # the CTranslate2 export carries a vocabulary map
    digest: str = ""  # of the recipe's and common.yaml's text: a changed recipe is another run


def names(root: str = RECIPE_ROOT) -> List[str]:
    return sorted(f[:-5] for f in os.listdir(root)
                  if f.endswith(".yaml") and f != "common.yaml")


def _read(path: str):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        return yaml.safe_load(text) or {}, text
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


def _number(path, where, value, ok, allowed):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise RecipeError(f"{path}: {where}: got {value!r}; allowed: {allowed}")
    return float(value)


def _stage(path: str, i: int, raw, common: dict) -> Stage:
    if not isinstance(raw, dict) or not raw.get("name"):
        raise RecipeError(f"{path}: stage {i + 1}: a mapping with a name, updates and train")
    unknown = sorted(set(raw) - {"name", "updates", "train", "scaled", "compact"})
    if unknown:
        raise RecipeError(f"{path}: stage {raw['name']}: unknown keys {unknown}; allowed: "
                          "name, updates, train, scaled, compact")
    where = f"stage {raw['name']}"
    updates = _number(path, f"{where}: updates", raw.get("updates"), lambda x: x > 0,
                      "a multiple of the base length > 0")
    scaled = {k: _number(path, f"{where}: scaled {k}", v, lambda x: 0 < x <= 1,
                         "a fraction of the stage's updates in (0, 1]")
              for k, v in (raw.get("scaled") or {}).items()}
    return Stage(str(raw["name"]), updates, {**common, **(raw.get("train") or {})}, scaled,
                 bool(raw.get("compact", False)))


def load(name: str, root: str = RECIPE_ROOT) -> Recipe:
    """The recipe ``name`` (a file of ``root``), checked."""
    known = names(root)
    if name not in known:
        raise RecipeError(f"--recipe {name!r}: allowed: {', '.join(known)}")
    path = os.path.join(root, f"{name}.yaml")
    raw, text = _read(path)
    common, common_text = _read(os.path.join(root, "common.yaml"))
    unknown = sorted(set(raw) - {"description", "follows", "stages", "ship", "goals", "vmap"})
    if unknown:
        raise RecipeError(f"{path}: unknown keys {unknown}; allowed: description, follows, "
                          "stages, ship, goals, vmap")
    if not raw.get("stages"):
        raise RecipeError(f"{path}: no stages")
    stages = [_stage(path, i, s, dict(common.get("train") or {}))
              for i, s in enumerate(raw["stages"])]
    ship = list(raw.get("ship") or [])
    bad = [s for s in ship if s not in SHIP_FORMATS]
    if bad or not ship:
        raise RecipeError(f"{path}: ship {bad or ship}: allowed: one or more of "
                          f"{', '.join(SHIP_FORMATS)}")
    goals = dict(raw.get("goals") or {})
    if set(goals) - set(GOALS):
        raise RecipeError(f"{path}: goals {sorted(set(goals) - set(GOALS))}: allowed: "
                          f"{', '.join(GOALS)}")
    digest = hashlib.sha256((text + "\0" + common_text).encode()).hexdigest()[:16]
    if raw.get("vmap") and "ctranslate2" not in ship:
        raise RecipeError(f"{path}: vmap: a CTranslate2 option; ship has no ctranslate2")
    return Recipe(name, str(raw.get("description", "")), stages, ship,
                  {k: float(v) for k, v in goals.items()}, str(raw.get("follows", "")).strip(),
                  bool(raw.get("vmap", False)), digest)
