"""YAML recipes: ``_base_`` inheritance, ``key=value`` overrides, defaults and validation.

A recipe has the sections ``data``, ``model``, ``sampler``, ``loss``, ``augment`` (a list),
``generator``, ``optim``, ``schedule``, ``train``, ``eval`` and optionally ``phases`` (a list of
overlays, one per training phase) and ``meta`` (free-form notes such as the paper's number).
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

from .rundir import atomic_write_text
from .errors import ConfigError
from .recipe_checks import (TRACKING_DEFAULTS, check_meta, check_phase_name,
                            check_trainer_values, optim_defaults)
from .registry import SECTIONS, suggest
from .upgrade import MESSAGES, PHASES, earlier_spelling, renamed_key, upgrade_recipe
from .yamlio import load_yaml


# Defaults of the sections that the trainer itself reads; the others are registry entries whose
# constructors carry their own defaults and reject unknown keys. The optimizer's defaults depend
# on its name (its OPTIMIZERS entry: lttoolbox.recipe_checks.optimizer_defaults).
DEFAULTS: dict[str, dict[str, Any]] = {
    "sampler": {"name": "instance"},
    "loss": {"name": "ce"},
    "schedule": {"name": "multistep", "warmup_epochs": 0, "warmup_unit": "epoch", "milestones": [],
                 "gamma": 0.1, "min_lr": 0.0, "warmup_start": 0.0},
    "train": {"epochs": 200, "batch_size": 128, "seed": 0, "device": "auto", "amp": "auto",
              "channels_last": True, "checkpoint_every": 1, "freeze": [], "freeze_bn_stats": False,
              "reset_head": False,
              "drop_last": False, "loggers": [], "workers": "auto", "sync_bn": False,
              "compile": "auto", "threads": "auto", "ema": None, "clip_grad_norm": None,
              "accumulate": 1,
              # read only when train.loggers names them (lttoolbox/engine/tracking.py)
              **copy.deepcopy(TRACKING_DEFAULTS)},
    "eval": {"every": 0, "many_threshold": 100, "few_threshold": 20, "ece_bins": 15,
             "batch_size": 1024},
}
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
    into it (``loss: {_replace_: true, name: ce}`` in a phase after LDAM drops LDAM's parameters).
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
        raise ConfigError(f"{path}: not UTF-8 text "
                          f"(byte {err.start} is {err.object[err.start]:#04x}); "
                          f"save the recipe as UTF-8") from None
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
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, "
                          f"got {type(data).__name__}")
    return _without_null_sections(data)


def _without_null_sections(data: dict) -> dict:
    """Drop mapping sections left empty (null): an empty section inherits, it does not reset."""
    return {k: v for k, v in data.items() if not (k in MAPPING_SECTIONS and v is None)}


# ``meta`` keys that describe one file only and are not inherited through ``_base_``: the
# published number of a recipe (``meta.reference``) is not that of a recipe extending it (input
# mixup's number is not the Bag of Tricks combination's). Its ``paper`` and ``note`` inherit.
OWN_META = ("reference",)


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
    if isinstance(merged.get("meta"), dict):  # a base's own number is not this recipe's
        merged["meta"] = {k: v for k, v in merged["meta"].items() if k not in OWN_META}
    return deep_merge(merged, data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"a.b.c=value"`` into the key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value "
                          f"(for example train.epochs=5)")
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
        if path[0] == PHASES[0]:  # the one section renamed since (``stage`` never was one)
            raise ConfigError(MESSAGES[PHASES[0]], key=path[0])
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


def _check_known_keys(section: str, values: dict, known: dict | None = None) -> None:
    known = DEFAULTS[section] if known is None else known
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown key{suggest(key, known)} "
                              f"Known: {', '.join(sorted(known))}.",
                              key=f"{section}.{key}")


def section_defaults(section: str, value: dict) -> dict:
    """The defaults of ``schedule``, ``train`` or ``eval``. A schedule's are the common keys
    plus the parameters of its own that the chosen ``SCHEDULES`` entry declares beyond them (a new
    schedule is one registered function, e.g. ``poly(..., power=0.9)``)."""
    if section != "schedule":
        return DEFAULTS[section]
    from .registry import SCHEDULES, SCHEDULE_CONTEXT, recipe_parameters
    name = value.get("name", DEFAULTS[section]["name"])
    if not isinstance(name, str) or name not in SCHEDULES:
        return DEFAULTS[section]  # the name's own check names the key
    own = {p.name: list(p.default) if isinstance(p.default, tuple) else p.default
           for p in recipe_parameters(SCHEDULES, name)
           if p.name not in DEFAULTS[section] and p.name not in SCHEDULE_CONTEXT}
    return {**DEFAULTS[section], **own}


def resolve(recipe: dict, where: str = "", min_epochs: int = 1) -> dict:
    """Fill in the trainer's defaults and check every section's shape and types.

    Registry sections (``data``, ``model``, ``loss``, ...) are only checked for shape here; their
    parameters are checked by the entries' constructors when the run is set up, still before
    training starts.
    """
    recipe = copy.deepcopy(recipe)
    prefix = f"{where}." if where else ""
    renamed = renamed_key(recipe, prefix)
    if renamed:
        raise ConfigError(renamed[1], key=renamed[0])
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
        defaults = section_defaults(section, value)
        _check_known_keys(section, value, defaults)
        recipe[section] = deep_merge(defaults, value)
    check_trainer_values(recipe, prefix, min_epochs)
    meta = recipe.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise ConfigError(f"must be a mapping of notes, got {meta!r}", key=prefix + "meta")
    recipe["meta"] = meta or {}
    phases = recipe.pop("phases", None)
    if phases is not None:
        recipe["phases"] = _resolve_phases(recipe, phases, prefix)
    return recipe


def _resolve_phases(base: dict, phases: Any, prefix: str) -> list[dict]:
    """Each phase is an overlay over the base recipe (phases themselves do not nest)."""
    if not isinstance(phases, list) or not phases:
        raise ConfigError("must be a non-empty list of phase overlays", key=prefix + "phases")
    resolved, names = [], set()
    for i, overlay in enumerate(phases):
        if not isinstance(overlay, dict):
            raise ConfigError(f"must be a mapping, got {overlay!r}", key=f"{prefix}phases[{i}]")
        overlay = dict(overlay)
        renamed = renamed_key(overlay, f"{prefix}phases[{i}].")
        if renamed:
            raise ConfigError(renamed[1], key=renamed[0])
        # A resolved phase keeps its name in meta, so resolving twice changes nothing.
        name = check_phase_name(overlay.pop("name", (overlay.get("meta") or {}).get(
            "phase", f"phase{i}")), f"{prefix}phases[{i}].name")
        overlay = _without_null_sections(overlay)
        if name in names:
            raise ConfigError(f"phase name '{name}' is used twice", key=f"{prefix}phases[{i}].name")
        names.add(name)
        if "phases" in overlay:
            raise ConfigError("phases do not nest", key=f"{prefix}phases[{i}].phases")
        # A phase resolved before is complete: merging it into the base again would bring back
        # what a _replace_ dropped.
        complete = "phase" in (overlay.get("meta") or {}) and all(
            section in overlay for section in ("data", "model", "loss", "optim", "train"))
        # A later phase may train 0 epochs: it only changes the model (tau-normalisation).
        phase = resolve(overlay if complete else deep_merge(base, overlay),
                        where=f"{prefix}phases[{i}]", min_epochs=0 if i else 1)
        phase.pop("phases", None)
        phase["meta"] = {**phase.get("meta", {}), "phase": name}
        resolved.append(phase)
    return resolved


def phase_recipes(recipe: dict) -> list[dict]:
    """The resolved recipe of every phase in order (a single-phase recipe is its own phase)."""
    if recipe.get("phases"):
        return recipe["phases"]
    single = {k: v for k, v in recipe.items() if k != "phases"}
    meta = single.get("meta", {})
    single["meta"] = {**meta, "phase": meta.get("phase", "main")}
    return [single]


def read_recipe(path: str | os.PathLike) -> dict:
    """A recipe file with its ``_base_`` chain merged, before defaults and validation."""
    return _load_with_bases(Path(path), ())


def load_recipe(path: str | os.PathLike, overrides: Iterable[str] = (),
                saved: bool = False) -> dict:
    """Read a recipe file with its ``_base_`` chain, apply overrides, fill defaults, validate.

    Args:
        path: The YAML file.
        overrides: ``key=value`` strings (values parsed as YAML), applied after inheritance.
        saved: The file is a run's saved ``recipe.yaml``, perhaps written before the rename of
            stages to phases and points (:func:`lttoolbox.upgrade.upgrade_recipe`); a recipe a
            person writes must use today's keys.

    Returns:
        The fully resolved recipe (a plain dict, ready for :func:`lttoolbox.engine.train`).

    Raises:
        ConfigError: missing file, bad YAML, unknown section or key (``meta`` keys included,
            :func:`lttoolbox.recipe_checks.check_meta`), wrong type.
    """
    recipe = read_recipe(path)
    recipe = apply_overrides(upgrade_recipe(recipe) if saved else recipe, list(overrides))
    resolved = resolve(recipe)  # first: a renamed key (meta.stage) is named as renamed
    if not saved:  # a run's saved meta may predate the schema; it changes no result
        check_meta(recipe.get("meta"))
        for i, phase in enumerate(recipe.get("phases") or []):
            if isinstance(phase, dict):
                check_meta(phase.get("meta"), f"phases[{i}].")
    return resolved


def resolve_saved(recipe: Any) -> dict:
    """Resolve a recipe a run saved (its ``recipe.yaml``, read as YAML), in whichever spelling
    it was written (:func:`lttoolbox.upgrade.upgrade_recipe`)."""
    return resolve(upgrade_recipe(recipe))


def scale_epochs(recipe: dict, total_epochs: int) -> dict:
    """Rescale every epoch-valued setting in proportion to a new ``train.epochs``.

    One factor serves the whole recipe: ``f = total_epochs / E0``, with ``E0`` the first (or
    only) phase's ``train.epochs``. Every phase, the later ones included, is scaled by it:

    - a phase's ``train.epochs`` becomes ``max(1, round(E * f))`` (a phase of 0 epochs, a model
      change only, stays 0), so cRT's 30 epochs after a 200-epoch phase become 4 at
      ``total_epochs=30`` (``round(4.5)`` is 4: Python rounds halves to even);
    - the other epoch-valued keys (ending in ``_epoch`` or ``_epochs``, and ``milestones``, in
      every section) become ``round(value * f)``: a 200-epoch protocol's switch at 160 lands at
      24 of 30;
    - the warm-up is not rounded: it becomes a per-step warm-up (``schedule.warmup_unit: step``)
      over the same fraction of all steps, since rounding the paper's 5 of 200 epochs to 1 of 30
      would train the first epoch at the full rate.

    A short later phase can thus be squeezed below what its schedule needs (its milestones
    rounded onto one epoch); :func:`squeezed_phases` names every such phase.

    Args:
        recipe: A resolved recipe.
        total_epochs: The new ``train.epochs`` of the first (or only) phase.

    Returns:
        A new, unresolved recipe (resolve it again).
    """
    def walk(node: Any, factor: float) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key == "milestones" and isinstance(value, list):
                    out[key] = [int(round(v * factor)) for v in value]
                elif (key.endswith(("_epoch", "_epochs")) and isinstance(value, int)
                        and not isinstance(value, bool)):
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

    def scaled_phase(phase: dict, factor: float) -> dict:
        out = scaled(phase, factor)
        epochs = phase["train"]["epochs"]  # a phase of 0 epochs (a model change only) stays 0
        out["train"]["epochs"] = max(1, int(round(epochs * factor))) if epochs else 0
        return out

    if isinstance(total_epochs, bool) or not isinstance(total_epochs, int) or total_epochs < 1:
        raise ConfigError(f"the number of epochs must be a positive integer, got {total_epochs!r}",
                          key="--epochs")
    recipe = copy.deepcopy(recipe)
    phases = recipe.pop("phases", None)
    base_epochs = recipe["train"]["epochs"]
    if base_epochs <= 0:
        raise ConfigError("cannot scale a recipe with no epochs", key="train.epochs")
    factor = total_epochs / base_epochs
    out = scaled(recipe, factor)
    out["train"]["epochs"] = total_epochs
    if phases:
        out["phases"] = [scaled_phase(s, factor) for s in phases]
    return out


def unreachable_epoch_keys(recipe: dict) -> list[str]:
    """One plain sentence for every epoch-valued key that a run can never reach.

    A switch at epoch ``k`` (``milestones``, every ``*_epoch`` key such as ``start_epoch``,
    ``end_epoch`` or ``weights_start_epoch``) acts from the 0-based epoch ``k`` on, so it is never
    reached when ``k >= train.epochs``; a warm-up (any other ``*_epochs`` key) never completes when
    it is longer than the run. The end of a window (``end_epoch``) equal to ``train.epochs`` is
    not named: the window then simply lasts to the end of the run, and nothing that was meant to
    happen is lost. Typically ``train.epochs=5`` on a 200-epoch recipe: DRW, DRS and the
    learning-rate decay never happen, which ``lttrain --epochs 5`` avoids by rescaling. A phase
    of 0 epochs (tau-normalisation) trains nothing, so what it inherits is not named.

    Args:
        recipe: A resolved recipe.

    Returns:
        Messages naming the key (``phases[i].`` first for a phase of a multi-phase recipe).
    """
    found = []
    for index, phase in enumerate(phase_recipes(recipe)):
        prefix = f"phases[{index}]." if recipe.get("phases") else ""
        epochs = phase["train"]["epochs"]
        if epochs == 0:  # only changes the model: the schedule it inherits is never used
            continue

        # epochs and prefix bound now: visit runs within this iteration only
        def visit(node: Any, path: str, *, epochs: int = epochs, prefix: str = prefix) -> None:
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
                elif (number and str(key).endswith("_epoch") and value > 0
                      and value >= (epochs + 1 if window_end(key) else epochs)):
                    found.append(f"{prefix}{where}={value} is never reached in {epochs} epochs "
                                 f"(epochs count from 0), so that switch never happens")
                elif number and str(key).endswith("_epochs") and value > epochs:
                    found.append(f"{prefix}{where}={value} is longer than the run's {epochs} "
                                 f"epochs, so it never completes")
                else:
                    visit(value, where)

        visit(phase, "")
    return found


def window_end(key: str) -> bool:
    """Whether an epoch-valued key closes a window (``end_epoch``): the first epoch *after* it,
    so a value equal to the run's length means "until the end"."""
    return str(key) == "end_epoch" or str(key).endswith("_end_epoch")


def squeezed_phases(recipe: dict, total_epochs: int) -> list[str]:
    """One line for every phase that ``scale_epochs(recipe, total_epochs)`` leaves too short
    for its schedule.

    A phase's epoch switches (``milestones``, every ``*_epoch`` key strictly inside the phase)
    cut it into periods: ``[0, 10)``, ``[10, 20)`` and ``[20, 30)`` for cRT's milestones
    ``[10, 20]`` of 30 epochs. A period is lost when scaling rounds both its ends to the same
    epoch: with ``--epochs 3`` on a 200-epoch first phase, cRT keeps 1 epoch and its milestones
    become ``[0, 0]``, so the epochs it meant to train at the full and at the once-decayed rate
    vanish and it trains at the twice-decayed rate throughout. A duration (another ``*_epochs``
    key; the warm-up excepted, which stays a fraction of the phase) rounded to 0 is lost too, and
    so is a cosine decay squeezed into 1 epoch, which then trains at its final rate
    (:func:`lttoolbox.engine.optim.lr_at`).

    Args:
        recipe: A resolved recipe.
        total_epochs: The ``--epochs`` value it is scaled to.

    Returns:
        Plain sentences, one per squeezed phase, naming the phase, the keys and the lost epochs
        (counted as in the recipe; adjacent lost periods are named as one).

    Example:
        >>> recipe = load_recipe("configs/cifar10_lt/ldam_drw_crt.yaml")
        >>> print(squeezed_phases(recipe, 3)[-1])  # doctest: +NORMALIZE_WHITESPACE
        --epochs 3 squeezes phase 'crt' from 30 epochs to 1, fewer than its schedule needs:
        schedule.milestones [10, 20] become [0, 0], so its epochs 0-19 are lost
    """
    scaled = resolve(scale_epochs(recipe, total_epochs))
    several = bool(recipe.get("phases"))
    found = []
    for before, after in zip(phase_recipes(recipe), phase_recipes(scaled)):
        epochs, kept = before["train"]["epochs"], after["train"]["epochs"]
        if not epochs:
            continue
        switches: list[tuple[str, int, int]] = []   # (key, value, scaled value)
        lists: dict[str, tuple[list, list]] = {}     # milestones as written, and scaled
        durations: list[str] = []

        # this phase's values bound now: visit runs within this iteration only
        def visit(old: Any, new: Any, path: str, *, epochs: int = epochs,
                  switches: list = switches, lists: dict = lists,
                  durations: list = durations) -> None:
            if isinstance(old, list):
                for i, (o, n) in enumerate(zip(old, new)):
                    visit(o, n, f"{path}[{i}]")
                return
            if not isinstance(old, dict):
                return
            for key, value in old.items():
                where = f"{path}.{key}" if path else str(key)
                if where in ("meta", "train.epochs"):
                    continue
                integer = isinstance(value, int) and not isinstance(value, bool)
                if key == "milestones" and isinstance(value, list):
                    lists[where] = (value, new[key])
                    switches.extend((where, v, n) for v, n in zip(value, new[key])
                                    if isinstance(v, int) and 0 < v < epochs)
                elif integer and str(key).endswith("_epoch"):
                    if 0 < value < epochs:
                        switches.append((where, value, new[key]))
                elif integer and str(key).endswith("_epochs") and key != "warmup_epochs":
                    if value >= 1 and new[key] == 0:
                        durations.append(f"{where}={value} becomes 0")
                else:
                    visit(value, new.get(key) if isinstance(new, dict) else None, where)

        visit(before, after, "")
        if after["schedule"]["name"] == "cosine" and kept == 1 < epochs:
            durations.append(f"its cosine decay runs in 1 epoch, at or near its final rate "
                             f"(schedule.min_lr={after['schedule']['min_lr']})")
        # Period boundaries: the phase's start and end and every switch, with where each lands.
        lands = {0: 0, epochs: kept, **{v: n for _, v, n in switches}}
        points = sorted(lands)
        lost: list[list[int]] = []
        for a, b in zip(points, points[1:]):
            if lands[a] == lands[b]:
                if lost and lost[-1][1] == a:  # adjacent lost periods read as one
                    lost[-1][1] = b
                else:
                    lost.append([a, b])
        if not lost and not durations:
            continue
        bounds = {p for period in lost for p in period}
        moved = []
        for key in dict.fromkeys(k for k, v, _ in switches if v in bounds):
            if key in lists:
                moved.append(f"{key} {lists[key][0]} become {lists[key][1]}")
            else:
                moved.extend(f"{key}={v} becomes {n}" for k, v, n in switches if k == key)
        what = "; ".join(moved + durations)
        spans = [f"{a}" if b == a + 1 else f"{a}-{b - 1}" for a, b in lost]
        if len(lost) == 1 and lost[0][1] == lost[0][0] + 1:
            gone = f", so its epoch {spans[0]} is lost"
        elif lost:
            listed = spans[0] if len(spans) == 1 else f"{', '.join(spans[:-1])} and {spans[-1]}"
            gone = f", so its epochs {listed} are lost"
        else:
            gone = ""
        found.append(f"--epochs {total_epochs} squeezes "
                     f"{'phase ' + repr(before['meta']['phase']) if several else 'the run'} "
                     f"from {epochs} epochs to {kept}, fewer than its schedule needs: {what}{gone}")
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


# train keys that say how a run is carried out, not what it trains (left out of the hash)
WAYS_OF_RUNNING = ("loggers", "mlflow", "wandb", "workers", "sync_bn", "compile", "threads")
# train keys added after runs were written: hashed only where set to something other than their
# default, so a recipe that leaves them alone keeps the hash it had before they existed
LATER_TRAIN_KEYS = {"ema": None, "clip_grad_norm": None, "accumulate": 1}
#: The same for ``schedule``.
LATER_SCHEDULE_KEYS = {"warmup_start": 0.0}


def recipe_hash(recipe: dict) -> str:
    """A short, stable hash of a resolved recipe, to match results to runs.

    What cannot change the trained model is left out: ``meta`` (free-form notes),
    ``train.loggers``, ``train.mlflow`` and ``train.wandb`` (where progress is reported) and
    ``train.workers`` (the streaming path's
    loader processes: every image's augmentation is seeded by its stream position, not by the
    worker). So are ``train.sync_bn``, ``train.compile`` and ``train.threads``, which like the
    number of processes are ways of running (recorded with the results), not tricks: a run
    resumes with another world size, compiled where it started eager, or with another CPU thread
    count. Each may change the order of float sums (a compiled kernel, an all-reduce, a CPU
    reduction split over threads), so results agree to rounding, not bit for bit.
    ``train.freeze_bn_stats`` counts only where it can act, in a phase that freezes something: a
    recipe that freezes nothing keeps the hash it had before the key existed, while one that
    freezes trains differently since then (the frozen blocks' BatchNorm statistics are
    re-estimated by default) and gets a new one. Likewise ``train.ema``, ``train.clip_grad_norm``
    and ``train.accumulate`` count only where they are set to something other than their default
    (:data:`LATER_TRAIN_KEYS`, :data:`LATER_SCHEDULE_KEYS`).

    The recipe is hashed in its canonical spelling, the one recipes had before training phases
    were called ``phases`` and a component's model point ``point`` (both were ``stage(s)``;
    :func:`lttoolbox.upgrade.earlier_spelling`). A rename of keys changes no trained model, and
    finished runs, leaderboard packs and interrupted runs are matched to their recipe by this
    hash: hashing the new spelling would have orphaned every one of them. A future rename keeps
    the hashes the same way, by spelling the recipe as it was before.
    """
    def trained(section: dict) -> dict:
        out = {k: v for k, v in section.items() if k != "meta"}
        if isinstance(out.get("train"), dict):
            ignored = list(WAYS_OF_RUNNING)
            if not out["train"].get("freeze"):
                ignored.append("freeze_bn_stats")
            ignored += [k for k, default in LATER_TRAIN_KEYS.items()
                        if out["train"].get(k, default) == default]
            out["train"] = {k: v for k, v in out["train"].items() if k not in ignored}
        if isinstance(out.get("schedule"), dict):
            out["schedule"] = {k: v for k, v in out["schedule"].items()
                               if LATER_SCHEDULE_KEYS.get(k, object()) != v}
        if isinstance(out.get("stages"), list):  # the phases, canonically spelled
            out["stages"] = [trained(s) if isinstance(s, dict) else s for s in out["stages"]]
        return out

    blob = json.dumps(trained(earlier_spelling(recipe)), sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:12]


def phase_difference(base: dict, phase: dict) -> dict:
    """The overlay that turns ``base`` into ``phase`` (both resolved): only what differs.

    Mappings are compared key by key; a mapping that lost keys (a ``_replace_`` in the recipe)
    is given whole with ``_replace_: true``, and lists and other values whole, so merging the
    overlay into the base (:func:`deep_merge`) gives the phase back.
    """
    out: dict = {}
    for key, value in phase.items():
        old = base.get(key)
        if key in base and value == old:
            continue
        if isinstance(value, dict) and isinstance(old, dict):
            out[key] = ({REPLACE: True, **copy.deepcopy(value)} if set(old) - set(value)
                        else phase_difference(old, value))
        else:
            out[key] = copy.deepcopy(value)
    return out


def compact_recipe(recipe: dict) -> dict:
    """A resolved recipe with each phase written as its difference from the base recipe.

    What ``lttrain --print-config`` prints (``--full`` prints every phase whole): a two-phase
    recipe is the base and a few lines per phase instead of every section twice more. It is a
    recipe itself and resolves to the same recipe (same hash).

    Example:
        >>> recipe = load_recipe("configs/cifar10_lt/ce_crt.yaml")
        >>> compact_recipe(recipe)["phases"][0]
        {'name': 'joint'}
        >>> resolve(compact_recipe(recipe)) == recipe
        True
    """
    if not recipe.get("phases"):
        return copy.deepcopy(recipe)
    base = {k: v for k, v in recipe.items() if k != "phases"}
    phases = []
    for phase in recipe["phases"]:
        meta = {k: v for k, v in phase.get("meta", {}).items() if k != "phase"}
        overlay = phase_difference(base, {**phase, "meta": meta})
        phases.append({"name": phase["meta"]["phase"], **overlay})
    return {**copy.deepcopy(base), "phases": phases}


def dump_recipe_text(recipe: dict) -> str:
    """A resolved recipe as YAML text, in section order (what ``recipe.yaml`` holds)."""
    return yaml.safe_dump(recipe, sort_keys=False)


def dump_recipe(recipe: dict, path: str | os.PathLike) -> None:
    """Write a resolved recipe as YAML, atomically."""
    atomic_write_text(path, dump_recipe_text(recipe))
