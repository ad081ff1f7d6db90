"""Files of runs written before a rename, read in today's spelling.

"Stage" once meant two things: a training phase (``stages:`` in a recipe, ``stage`` in every
history row) and the point inside the model where a component acts (``stage: layer2`` of a
generator or a mixing augmentation). They are now *phases* and *points*. Run directories written
before the rename stay readable: every reader of a saved file passes what it read through one of
the two functions here, at the place it reads the file.

* :func:`upgrade_recipe`: a saved recipe (``recipe.yaml``, a donor's recipe, a leaderboard's
  saved recipe).
* :func:`upgrade_record`: a saved record with a phase in it: ``results.json``, ``checkpoint.pt``,
  ``eval-<name>.json``, or one history row (a ``log.jsonl`` line).

A recipe a person writes is not upgraded: an old key there is refused with one line naming the
new key (:func:`renamed_key`), so that the old word does not live on in new recipes.

:func:`earlier_spelling` is the inverse for recipes: ``recipe_hash`` hashes a recipe in that
spelling, so that every recipe keeps the hash it had before the rename.

This module imports nothing else of the package, so that any reader can use it.

Example:
    >>> upgrade_recipe({"stages": [{"meta": {"stage": "joint"},
    ...                             "generator": {"name": "rsg", "stage": "layer2"}}]})
    {'phases': [{'meta': {'phase': 'joint'}, 'generator': {'name': 'rsg', 'point': 'layer2'}}]}
    >>> upgrade_record({"stage": 1, "stage_done": True, "history": [{"stage": "crt"}]})
    {'phase': 1, 'phase_done': True, 'history': [{'phase': 'crt'}]}
    >>> renamed_key({"augment": [{"name": "mixup", "stage": "input"}]})
    ('augment[0].stage', 'renamed to point (the model point it acts at)')
"""
from __future__ import annotations

from typing import Any

# recipe key -> (today's key, what it names), at the top of a recipe or of a phase
PHASES = ("stages", "phases")
PHASE_NAME = ("stage", "phase")  # in meta: the name of a resolved phase
POINT = ("stage", "point")  # in a component (augment entry, generator): where it acts
# Sections whose entries are components acting at a model point.
COMPONENT_SECTIONS = ("augment", "generator")
# a record's key (results, checkpoint, eval record, history row) -> today's
RECORD_KEYS = {"stage": "phase", "stage_done": "phase_done", "stages": "phases"}

MESSAGES = {
    PHASES[0]: "renamed to phases (training phases); a component's model stage is now 'point'",
    "meta." + PHASE_NAME[0]: "renamed to phase (the name of the training phase)",
    POINT[0]: "renamed to point (the model point it acts at)",
}


def _renamed(mapping: dict, old: str, new: str) -> dict:
    """``mapping`` with key ``old`` called ``new``, in the same position."""
    return {(new if key == old else key): value for key, value in mapping.items()}


def _components(value: Any, old: str, new: str) -> Any:
    """A component's parameters (and those of components nested in it, as the choices of
    ``one_of``) with the point key spelled ``new``."""
    if isinstance(value, list):
        return [_components(v, old, new) for v in value]
    if isinstance(value, dict):
        return {(new if key == old else key): _components(v, old, new)
                for key, v in value.items()}
    return value


def _respell(recipe: Any, to_new: bool) -> Any:
    if not isinstance(recipe, dict):
        return recipe  # not a recipe: its reader names what is wrong
    phases_from, phases_to = PHASES if to_new else PHASES[::-1]
    name_from, name_to = PHASE_NAME if to_new else PHASE_NAME[::-1]
    point_from, point_to = POINT if to_new else POINT[::-1]
    out = _renamed(recipe, phases_from, phases_to)
    if isinstance(out.get(phases_to), list):
        out[phases_to] = [_respell(phase, to_new) for phase in out[phases_to]]
    if isinstance(out.get("meta"), dict):
        out["meta"] = _renamed(out["meta"], name_from, name_to)
    for section in COMPONENT_SECTIONS:
        if section in out:
            out[section] = _components(out[section], point_from, point_to)
    return out


def upgrade_recipe(recipe: Any) -> Any:
    """A saved recipe in today's spelling (``phases``, ``meta.phase``, a component's ``point``);
    a recipe already spelled so is returned equal. Anything but a mapping is returned as it is.
    """
    return _respell(recipe, to_new=True)


def earlier_spelling(recipe: Any) -> Any:
    """A recipe as it was spelled before the rename (``stages``, ``meta.stage``, a component's
    ``stage``): the inverse of :func:`upgrade_recipe`."""
    return _respell(recipe, to_new=False)


def upgrade_record(record: Any) -> Any:
    """A saved record in today's spelling: ``stage``/``stage_done``/``stages`` become
    ``phase``/``phase_done``/``phases`` at its top and in each row of its ``history``.

    It serves ``results.json``, ``checkpoint.pt`` (its tensors are not copied),
    ``eval-<name>.json`` and a single history row alike. Anything but a mapping is returned as
    it is.
    """
    if not isinstance(record, dict):
        return record
    out = {RECORD_KEYS.get(key, key) if RECORD_KEYS.get(key, key) not in record else key: value
           for key, value in record.items()}
    if isinstance(out.get("history"), list):
        out["history"] = [upgrade_record(row) for row in out["history"]]
    return out


def renamed_key(recipe: Any, prefix: str = "") -> tuple[str, str] | None:
    """The first old key in a written recipe (or one phase overlay of it), as ``(key, message)``,
    or None.

    Args:
        recipe: A recipe as written, or one entry of its phases (``prefix`` ``phases[1].``).
        prefix: The recipe key above ``recipe``.
    """
    if not isinstance(recipe, dict):
        return None
    if PHASES[0] in recipe:
        return prefix + PHASES[0], MESSAGES[PHASES[0]]
    if isinstance(recipe.get("meta"), dict) and PHASE_NAME[0] in recipe["meta"]:
        return f"{prefix}meta.{PHASE_NAME[0]}", MESSAGES["meta." + PHASE_NAME[0]]
    for section in COMPONENT_SECTIONS:
        found = _old_point(recipe.get(section), prefix + section)
        if found:
            return found, MESSAGES[POINT[0]]
    return None


def _old_point(value: Any, key: str) -> str | None:
    if isinstance(value, list):
        return next((k for i, v in enumerate(value) if (k := _old_point(v, f"{key}[{i}]"))),
                    None)
    if isinstance(value, dict):
        if POINT[0] in value:
            return f"{key}.{POINT[0]}"
        return next((k for name, v in value.items() if (k := _old_point(v, f"{key}.{name}"))),
                    None)
    return None
