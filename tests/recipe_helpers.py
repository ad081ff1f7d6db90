"""Shared by the recipe tests: shrink a CIFAR recipe to the embedded digits data."""
from __future__ import annotations

import copy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def on_digits(recipe: dict, epochs: int = 2, switch_epoch: int = 1) -> dict:
    """The same tricks on ``digits_lt`` with ``digits_cnn`` for ``epochs`` epochs.

    Every deferred switch (``*_epoch`` keys of the trick sections) moves to ``switch_epoch`` so a
    short run still exercises both sides of it; the learning-rate schedule becomes flat.
    """
    recipe = copy.deepcopy(recipe)
    recipe["data"] = {"name": "digits_lt"}
    recipe["model"]["name"] = "digits_cnn"
    recipe["train"]["epochs"] = epochs
    recipe["schedule"].update(warmup_epochs=0, milestones=[])
    parts = [recipe["sampler"], recipe["loss"], *recipe["augment"]]
    if recipe.get("generator"):
        parts.append(recipe["generator"])
    for part in parts:
        for key, value in part.items():
            if key.endswith("_epoch") and isinstance(value, int) and value > 0:
                part[key] = switch_epoch
    return recipe
