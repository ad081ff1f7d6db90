"""YAML recipes: ``_base_`` inheritance, ``key=value`` overrides, defaults and validation.

A recipe has the sections ``data``, ``model``, ``sampler``, ``loss``, ``augment`` (a list),
``generator``, ``optim``, ``schedule``, ``train``, ``eval`` and optionally ``stages`` (a list of
overlays, one per training stage) and ``meta`` (free-form notes such as the paper's number).
``_base_: other.yaml`` (or a list of files) is resolved relative to the recipe's own file and
deep-merged: mappings merge key by key, everything else (lists included) is replaced.

Example:
    >>> recipe = load_recipe("configs/cifar10_lt/ce.yaml", ["train.epochs=5", "loss.name=focal"])
    >>> recipe["train"]["epochs"]
    5
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from .atomic import atomic_write_text
from .errors import ConfigError
from .recipe_checks import (OPTIMIZER_DEFAULTS, check_stage_name, check_trainer_values,
                            optim_defaults)
from .registry import suggest
from .yamlio import load_yaml

SECTIONS = ("data", "model", "sampler", "loss", "augment", "generator", "optim", "schedule",
            "train", "eval", "stages", "meta")

# Defaults of the sections that the trainer itself reads; the others are registry entries whose
# constructors carry their own defaults and reject unknown keys. The optimizer's defaults depend
# on its name (lttoolbox.recipe_checks.OPTIMIZER_DEFAULTS).
DEFAULTS: dict[str, dict[str, Any]] = {
    "sampler": {"name": "instance"},
    "loss": {"name": "ce"},
    "schedule": {"name": "multistep", "warmup_epochs": 0, "warmup_unit": "epoch", "milestones": [],
                 "gamma": 0.1, "min_lr": 0.0},
    "train": {"epochs": 200, "batch_size": 128, "seed": 0, "device": "auto", "amp": "auto",
              "channels_last": True, "checkpoint_every": 1, "freeze": [], "freeze_bn_stats": False,
              "reset_head": False,
              "drop_last": False, "loggers": [], "workers": "auto", "sync_bn": False,
              "compile": "auto"},
    "eval": {"every": 0, "many_threshold": 100, "few_threshold": 20, "ece_bins": 15,
             "batch_size": 1024},
}
OPTIMIZERS = tuple(OPTIMIZER_DEFAULTS)
# Sections that are mappings: a section left empty in a recipe file (``train:`` with every child
# commented out reads as null) inherits its base's section instead of replacing it.
MAPPING_SECTIONS = ("data", "model", "sampler", "loss", "optim", "schedule", "train", "eval",
                    "meta")
# Sections whose value may be a bare registry name (``loss: focal``).
REGISTRY_SECTIONS = ("data", "model", "sampler", "loss", "generator")


REPLACE = "_replace_"


def deep_merge(base: dict, over: dict) -> dict:
    """Merge ``over`` into a copy of ``base``: mappings recursively, anything else replaced.

    A mapping in ``over`` with ``_replace_: true`` replaces the base's mapping instead of merging
    into it (``loss: {_replace_: true, name: ce}`` in a stage after LDAM drops LDAM's parameters).
    """
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and value.get(REPLACE) is True:
            out[key] = copy.deepcopy({k: v for k, v in value.items() if k != REPLACE})
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict:
    if path.is_dir():
        raise ConfigError(f"{path} is a folder, not a recipe file")
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x})"
                          f"; save the recipe as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read: {err.strerror}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(err, 'problem', None) or err}"
                          ) from None
    if data is None:  # an empty file, or comments only
        raise ConfigError(f"{path}: the recipe file is empty; a recipe needs at least the data "
                          f"and model sections (or a _base_ to inherit them from)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return _without_null_sections(data)


def _without_null_sections(data: dict) -> dict:
    """Drop mapping sections left empty (null): an empty section inherits, it does not reset."""
    return {k: v for k, v in data.items() if not (k in MAPPING_SECTIONS and v is None)}


def _load_with_bases(path: Path, seen: tuple[Path, ...]) -> dict:
    path = path.resolve()
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise ConfigError(f"_base_ inheritance loops: {chain}")
    data = _read_yaml(path)
    bases = data.pop("_base_", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a file name or a list of file names")
    merged: dict = {}
    for base in bases:
        merged = deep_merge(merged, _load_with_bases(path.parent / base, (*seen, path)))
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value (for example train.epochs=5)")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not all(path):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        if raw.lstrip()[:1] in "{[":  # meant as a mapping or list: say why it is not one
            raise ConfigError(f"not valid YAML: {getattr(err, 'problem', None) or err}",
                              key=key.strip()) from None
        value = raw
    return path, value


def apply_overrides(recipe: dict, overrides: Iterable[str]) -> dict:
    """Apply ``key=value`` overrides (values parsed as YAML) to a copy of ``recipe``.

    A bare name for a registry section (``loss=ce``) replaces the whole section; when the section
    it replaces has parameters of its own that would be dropped silently, the override is refused
    (``loss.name=ce`` keeps them, ``loss={name: ce}`` starts afresh).
    """
    recipe = copy.deepcopy(recipe)
    for text in overrides:
        path, value = parse_override(text)
        if path[0] not in SECTIONS:
            raise ConfigError(f"unknown recipe section '{path[0]}'{suggest(path[0], SECTIONS)} "
                              f"Sections: {', '.join(SECTIONS)}.", key=".".join(path))
        current = recipe.get(path[0])
        if (len(path) == 1 and path[0] in REGISTRY_SECTIONS and isinstance(value, str)
                and isinstance(current, dict) and set(current) - {"name"}):
            dropped = ", ".join(sorted(set(current) - {"name"}))
            raise ConfigError(f"{path[0]}={value} would silently drop {dropped} of the section it "
                              f"replaces; write {path[0]}.name={value} to keep them or "
                              f"{path[0]}={{name: {value}}} to start from the defaults",
                              key=path[0])
        node = recipe
        for depth, part in enumerate(path[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set a key inside '{'.'.join(path[:depth + 1])}', "
                                  f"which is {child!r}", key=".".join(path))
            node = child
        node[path[-1]] = value
    return recipe


def _check_known_keys(section: str, values: dict) -> None:
    for key in values:
        if key not in DEFAULTS[section]:
            raise ConfigError(f"unknown key{suggest(key, DEFAULTS[section])} "
                              f"Known: {', '.join(sorted(DEFAULTS[section]))}.",
                              key=f"{section}.{key}")


def resolve(recipe: dict, where: str = "", min_epochs: int = 1) -> dict:
    """Fill in the trainer's defaults and check every section's shape and types.

    Registry sections (``data``, ``model``, ``loss``, ...) are only checked for shape here; their
    parameters are checked by the entries' constructors when the run is set up, still before
    training starts.
    """
    recipe = copy.deepcopy(recipe)
    prefix = f"{where}." if where else ""
    for section in recipe:
        if section not in SECTIONS:
            raise ConfigError(f"unknown recipe section{suggest(section, SECTIONS)} "
                              f"Sections: {', '.join(SECTIONS)}.", key=prefix + section)
    if "data" not in recipe or "model" not in recipe:
        missing = "data" if "data" not in recipe else "model"
        raise ConfigError("this section is required", key=prefix + missing)
    for section in ("data", "model", "sampler", "loss"):
        value = recipe.get(section, DEFAULTS.get(section))
        if isinstance(value, str):
            value = {"name": value}
        if isinstance(value, dict):
            value = deep_merge(DEFAULTS.get(section, {}), value)
        if not isinstance(value, dict) or "name" not in value:
            raise ConfigError(f"must be a mapping with a 'name' key, got {value!r}",
                              key=prefix + section)
        recipe[section] = value
    augment = recipe.get("augment") or []
    if isinstance(augment, dict):
        augment = [augment]
    if not isinstance(augment, list):
        raise ConfigError(f"must be a list of mappings, got {augment!r}", key=prefix + "augment")
    recipe["augment"] = [{"name": a} if isinstance(a, str) else a for a in augment]
    for i, entry in enumerate(recipe["augment"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(f"must be a mapping with a 'name' key, got {entry!r}",
                              key=f"{prefix}augment[{i}]")
    generator = recipe.get("generator")
    if isinstance(generator, str):
        generator = {"name": generator}
    if generator is not None and (not isinstance(generator, dict) or "name" not in generator):
        raise ConfigError(f"must be null or a mapping with a 'name' key, got {generator!r}",
                          key=prefix + "generator")
    recipe["generator"] = generator
    recipe["optim"] = optim_defaults(recipe.get("optim"), prefix + "optim")
    for section in ("schedule", "train", "eval"):
        value = recipe.get(section)
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise ConfigError(f"must be a mapping, got {value!r}", key=prefix + section)
        _check_known_keys(section, value)
        recipe[section] = deep_merge(DEFAULTS[section], value)
    check_trainer_values(recipe, prefix, min_epochs)
    meta = recipe.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ConfigError(f"must be a mapping of notes, got {meta!r}", key=prefix + "meta")
    recipe["meta"] = meta or {}
    stages = recipe.pop("stages", None)
    if stages is not None:
        recipe["stages"] = _resolve_stages(recipe, stages, prefix)
    return recipe


def _resolve_stages(base: dict, stages: Any, prefix: str) -> list[dict]:
    """Each stage is an overlay over the base recipe (stages themselves do not nest)."""
    if not isinstance(stages, list) or not stages:
        raise ConfigError("must be a non-empty list of stage overlays", key=prefix + "stages")
    resolved, names = [], set()
    for i, overlay in enumerate(stages):
        if not isinstance(overlay, dict):
            raise ConfigError(f"must be a mapping, got {overlay!r}", key=f"{prefix}stages[{i}]")
        overlay = dict(overlay)
        # A resolved stage keeps its name in meta, so resolving twice changes nothing.
        name = check_stage_name(overlay.pop("name", (overlay.get("meta") or {}).get(
            "stage", f"stage{i}")), f"{prefix}stages[{i}].name")
        overlay = _without_null_sections(overlay)
        if name in names:
            raise ConfigError(f"stage name '{name}' is used twice", key=f"{prefix}stages[{i}].name")
        names.add(name)
        if "stages" in overlay:
            raise ConfigError("stages do not nest", key=f"{prefix}stages[{i}].stages")
        # A stage resolved before is complete: merging it into the base again would bring back
        # what a _replace_ dropped.
        complete = "stage" in (overlay.get("meta") or {}) and all(
            section in overlay for section in ("data", "model", "loss", "optim", "train"))
        # A later stage may train 0 epochs: it only changes the model (tau-normalisation).
        stage = resolve(overlay if complete else deep_merge(base, overlay),
                        where=f"{prefix}stages[{i}]", min_epochs=0 if i else 1)
        stage.pop("stages", None)
        stage["meta"] = {**stage.get("meta", {}), "stage": name}
        resolved.append(stage)
    return resolved


def stage_recipes(recipe: dict) -> list[dict]:
    """The resolved recipe of every stage in order (a single-stage recipe is its own stage)."""
    if recipe.get("stages"):
        return recipe["stages"]
    single = {k: v for k, v in recipe.items() if k != "stages"}
    single["meta"] = {**single.get("meta", {}), "stage": single.get("meta", {}).get("stage", "main")}
    return [single]


def read_recipe(path: str | os.PathLike) -> dict:
    """A recipe file with its ``_base_`` chain merged, before defaults and validation."""
    return _load_with_bases(Path(path), ())


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = ()) -> dict:
    """Read a recipe file with its ``_base_`` chain, apply overrides, fill defaults, validate.

    Args:
        path: The YAML file.
        overrides: ``key=value`` strings (values parsed as YAML), applied after inheritance.

    Returns:
        The fully resolved recipe (a plain dict, ready for :func:`lttoolbox.engine.train`).

    Raises:
        ConfigError: missing file, bad YAML, unknown section or key, wrong type.
    """
    return resolve(apply_overrides(read_recipe(path), list(overrides)))


def scale_epochs(recipe: dict, total_epochs: int) -> dict:
    """Rescale every epoch-valued setting in proportion to a new ``train.epochs``.

    Epoch-valued settings are the keys ending in ``_epoch`` or ``_epochs`` and the ``milestones``
    lists, in every section and stage, so a 200-epoch protocol's switch at 160 lands at 24 of 30.
    Switches are rounded to whole epochs. The warm-up is not: it becomes a per-step warm-up
    (``schedule.warmup_unit: step``) over the same fraction of all steps, since rounding the
    paper's 5 of 200 epochs to 1 of 30 would train the first epoch at the full rate.

    Args:
        recipe: A resolved recipe.
        total_epochs: The new ``train.epochs`` of the first (or only) stage; later stages keep
            their proportion to it.

    Returns:
        A new, unresolved recipe (resolve it again).
    """
    def walk(node: Any, factor: float) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "milestones" and isinstance(value, list):
                    out[key] = [int(round(v * factor)) for v in value]
                elif (key.endswith("_epoch") or key.endswith("_epochs")) and isinstance(value, int) \
                        and not isinstance(value, bool):
                    out[key] = int(round(value * factor))
                else:
                    out[key] = walk(value, factor)
            return out
        if isinstance(node, list):
            return [walk(v, factor) for v in node]
        return node

    def scaled(section: dict, factor: float) -> dict:
        out = walk(section, factor)
        schedule = section.get("schedule") or {}
        warmup = schedule.get("warmup_epochs")
        if factor != 1 and isinstance(warmup, (int, float)) and not isinstance(warmup, bool) \
                and warmup > 0:
            out["schedule"]["warmup_epochs"] = _tidy(warmup * factor)
            out["schedule"]["warmup_unit"] = "step"
        return out

    def scaled_stage(stage: dict, factor: float) -> dict:
        out = scaled(stage, factor)
        epochs = stage["train"]["epochs"]  # a stage of 0 epochs (a model change only) stays 0
        out["train"]["epochs"] = max(1, int(round(epochs * factor))) if epochs else 0
        return out

    if isinstance(total_epochs, bool) or not isinstance(total_epochs, int) or total_epochs < 1:
        raise ConfigError(f"the number of epochs must be a positive integer, got {total_epochs!r}",
                          key="--epochs")
    recipe = copy.deepcopy(recipe)
    stages = recipe.pop("stages", None)
    base_epochs = recipe["train"]["epochs"]
    if base_epochs <= 0:
        raise ConfigError("cannot scale a recipe with no epochs", key="train.epochs")
    factor = total_epochs / base_epochs
    out = scaled(recipe, factor)
    out["train"]["epochs"] = total_epochs
    if stages:
        out["stages"] = [scaled_stage(s, factor) for s in stages]
    return out


def unreachable_epoch_keys(recipe: dict) -> list[str]:
    """One plain sentence for every epoch-valued key that a run can never reach.

    A switch at epoch ``k`` (``milestones``, every ``*_epoch`` key such as ``start_epoch``,
    ``end_epoch`` or ``weights_start_epoch``) acts from the 0-based epoch ``k`` on, so it is never
    reached when ``k >= train.epochs``; a warm-up (any other ``*_epochs`` key) never completes when
    it is longer than the run. Typically ``train.epochs=5`` on a 200-epoch recipe: DRW, DRS and
    the learning-rate decay never happen, which ``lttrain --epochs 5`` avoids by rescaling.

    Args:
        recipe: A resolved recipe.

    Returns:
        Messages naming the key (``stages[i].`` first for a stage of a multi-stage recipe).
    """
    found = []
    for index, stage in enumerate(stage_recipes(recipe)):
        prefix = f"stages[{index}]." if recipe.get("stages") else ""
        epochs = stage["train"]["epochs"]

        def visit(node: Any, path: str) -> None:
            if isinstance(node, list):
                for i, item in enumerate(node):
                    visit(item, f"{path}[{i}]")
                return
            if not isinstance(node, dict):
                return
            for key, value in node.items():
                where = f"{path}.{key}" if path else str(key)
                if where in ("meta", "train.epochs"):
                    continue
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if key == "milestones" and isinstance(value, list):
                    late = [m for m in value if isinstance(m, int) and m >= epochs]
                    if late:
                        found.append(f"{prefix}{where} {late} lies at or beyond the run's "
                                     f"{epochs} epochs, so that decay never happens")
                elif number and str(key).endswith("_epoch") and value > 0 and value >= epochs:
                    found.append(f"{prefix}{where}={value} is never reached in {epochs} epochs "
                                 f"(epochs count from 0), so that switch never happens")
                elif number and str(key).endswith("_epochs") and value > epochs:
                    found.append(f"{prefix}{where}={value} is longer than the run's {epochs} "
                                 f"epochs, so it never completes")
                else:
                    visit(value, where)

        visit(stage, "")
    return found


def _tidy(value: float) -> float | int:
    """A scaled value without float noise (0.75, not 0.7500000000000001)."""
    value = round(value, 9)
    return int(value) if value == int(value) else value


def recipe_differences(a: dict, b: dict, names: tuple[str, str] = ("here", "there"),
                       limit: int = 3) -> list[str]:
    """The first keys at which two resolved recipes differ, with both values.

    Example:
        >>> recipe_differences({"train": {"epochs": 30}}, {"train": {"epochs": 200}},
        ...                    ("saved", "given"))
        ['train.epochs: 30 saved, 200 given']
    """
    found: list[str] = []

    def walk(x: Any, y: Any, path: str) -> None:
        if len(found) >= limit or x == y:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for key in [*x, *(k for k in y if k not in x)]:
                if key != "meta" or path:
                    walk(x.get(key, "(unset)"), y.get(key, "(unset)"),
                         f"{path}.{key}" if path else str(key))
        elif isinstance(x, list) and isinstance(y, list) and len(x) == len(y):
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{path}[{i}]")
        else:
            found.append(f"{path}: {json.dumps(x, default=str)} {names[0]}, "
                         f"{json.dumps(y, default=str)} {names[1]}")

    walk(a, b, "")
    return found


def recipe_hash(recipe: dict) -> str:
    """A short, stable hash of a resolved recipe, to match results to runs.

    What cannot change the trained model is left out: ``meta`` (free-form notes),
    ``train.loggers`` (where progress is reported) and ``train.workers`` (the streaming path's
    loader processes: every image's augmentation is seeded by its stream position, not by the
    worker). So are ``train.sync_bn`` and ``train.compile``, which like the number of processes
    are ways of running (recorded with the results), not tricks: a run resumes with another
    world size, or compiled where it started eager. ``train.freeze_bn_stats`` counts only where
    it can act, in a stage that freezes something: a recipe that freezes nothing keeps the hash
    it had before the key existed, while one that freezes trains differently since then (the
    frozen stages' BatchNorm statistics are re-estimated by default) and gets a new one.
    """
    def trained(section: dict) -> dict:
        out = {k: v for k, v in section.items() if k != "meta"}
        if isinstance(out.get("train"), dict):
            ignored = ["loggers", "workers", "sync_bn", "compile"]
            if not out["train"].get("freeze"):
                ignored.append("freeze_bn_stats")
            out["train"] = {k: v for k, v in out["train"].items() if k not in ignored}
        if isinstance(out.get("stages"), list):
            out["stages"] = [trained(s) if isinstance(s, dict) else s for s in out["stages"]]
        return out

    blob = json.dumps(trained(recipe), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def dump_recipe_text(recipe: dict) -> str:
    """A resolved recipe as YAML text, in section order (what ``recipe.yaml`` holds)."""
    return yaml.safe_dump(recipe, sort_keys=False)


def dump_recipe(recipe: dict, path: str | os.PathLike) -> None:
    """Write a resolved recipe as YAML, atomically."""
    atomic_write_text(path, dump_recipe_text(recipe))
