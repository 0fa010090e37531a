"""What `selfsup results` reads: the recipes file and the rows an earlier run kept in ``results.json``. Each is
checked whole before anything runs, so a mistake in either is one line naming the file, the entry and the fix
(not a traceback after an hour of runs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError

COLUMNS = ("knn", "linear", "block", "finetune", "dense", "dense_finetune")  # the evaluations a recipe may name
RECIPE_KEYS = {"name": str, "pretrain": str, "judged_by": str, "evaluate": dict, "seeds": list, "pixels": dict,
               "quick": list}


@dataclass
class Row:
    """One recipe's outcome: pretraining wall time (first seed), wall time of all its steps, scores[evaluation]
    [variant], the judged-by score and pretraining wall time of each seed, and failures by step."""

    key: str
    name: str
    judged_by: str
    backbone: str = ""
    seconds: float | None = None
    total_seconds: float = 0.0
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seed_scores: dict[int, float] = field(default_factory=dict)
    seed_seconds: dict[int, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def read_recipes(path: Path) -> dict[str, Any]:
    """The recipes file ``path`` (``quick_eval`` and ``recipes``), every recipe checked; ConfigError naming the
    first mistake."""
    if not path.is_file():
        raise ConfigError(f"recipes file {path} does not exist; give --recipes experiments/results.yaml")
    try:
        spec = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}" if where else ""
        raise ConfigError(f"recipes file {path} is not readable YAML{at} ({getattr(err, 'problem', None) or err});"
                          " fix it (experiments/results.yaml shows the form)") from None
    spec = {} if spec is None else spec
    if not isinstance(spec, dict) or not isinstance(spec.get("recipes"), dict) or not spec["recipes"]:
        raise ConfigError(f"recipes file {path} needs a mapping 'recipes:' of recipe name to its steps "
                          "(experiments/results.yaml shows the form)")
    if not _strings(spec.get("quick_eval", [])):
        raise ConfigError(f"recipes file {path}: quick_eval must be a list of command-line words")
    for key, recipe in spec["recipes"].items():
        problem = recipe_problem(recipe)
        if problem:
            raise ConfigError(f"recipes file {path}, recipe {key!r}: {problem} (experiments/results.yaml shows the "
                              "form)")
    return spec


def recipe_problem(recipe: Any) -> str | None:
    """What is wrong with one recipe of the recipes file, or None."""
    if not isinstance(recipe, dict):
        return f"must be a mapping of {', '.join(RECIPE_KEYS)}, got {type(recipe).__name__}"
    unknown = sorted(set(recipe) - set(RECIPE_KEYS), key=str)
    if unknown:
        return f"unknown key {unknown[0]!r}; a recipe has {', '.join(RECIPE_KEYS)}"
    if "pretrain" not in recipe:
        return "it has no pretrain: the config it pretrains with"
    for name, kind in RECIPE_KEYS.items():
        if recipe.get(name) is not None and not isinstance(recipe[name], kind):
            return f"{name} must be a {kind.__name__}, got {recipe[name]!r:.60}"
    evaluate, judged_by = recipe.get("evaluate") or {}, recipe.get("judged_by", "knn")
    wrong = [k for k, v in evaluate.items() if k not in COLUMNS or not isinstance(v, str)]
    if wrong:
        return f"evaluate {wrong[0]!r}: each evaluation is one of {', '.join(COLUMNS)}, given its config's path"
    if judged_by not in COLUMNS:
        return f"judged_by {judged_by!r} is not one of {', '.join(COLUMNS)}"
    seeds = recipe.get("seeds") or []
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        return f"seeds must be whole numbers, got {seeds}"
    if len(seeds) > 1 and judged_by not in evaluate:
        return f"several seeds are judged by {judged_by}, which is not under evaluate"
    if not _strings(recipe.get("quick") or []):
        return "quick must be a list of command-line words"
    return None


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def previous_rows(path: Path) -> dict[str, Row]:
    """The rows an earlier run wrote to ``path`` (results.json beside the page), by recipe key; none if absent.
    ConfigError if the file is damaged (cut short, edited into other types)."""
    if not path.is_file():
        return {}
    try:
        rows = [_row(raw) for raw in json.loads(path.read_text())]
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path} is damaged ({str(err)[:80]}); it holds the rows that --only keeps: restore it "
                          "(e.g. git checkout) or run without --only to make every row again") from None
    return {row.key: row for row in rows}


def _row(raw: dict[str, Any]) -> Row:
    """One row of results.json; TypeError, ValueError or AttributeError where a field has another type."""
    for name in ("seed_scores", "seed_seconds"):
        raw[name] = {int(k): _number(v) for k, v in raw.get(name, {}).items()}
    row = Row(**raw)
    texts = [row.key, row.name, row.judged_by, row.backbone, *row.failures.values()]
    if not all(isinstance(text, str) for text in texts):
        raise TypeError("a name or failure that is not text")
    for value in [row.total_seconds, row.seconds or 0, *(v for s in row.scores.values() for v in s.values())]:
        _number(value)
    return row


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{value!r:.20} where a number belongs")
    return value
