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


#: The published numbers of the old Bag of Tricks results page, on Cui et al.'s split; no recipe
#: may cite them any more (see benchmarks/reference_numbers.yaml).
OUTDATED_NUMBERS = ("30.12", "31.22", "29.37", "23.63", "30.35", "30.81", "29.35", "27.08",
                    "27.73", "26.66", "24.61", "26.83", "30.88")


def check_header_cites_reference(recipe_path: Path, method: str, dataset: str) -> None:
    """The recipe's header names the paper number the leaderboard shows for it (ratio 100)."""
    from lttoolbox.leaderboard.references import References
    from lttoolbox.leaderboard.suite import load_suite

    priority = load_suite(ROOT / "benchmarks/suites/cifar10_lt_core.yaml").reference_priority
    refs = References.load(ROOT / "benchmarks/reference_numbers.yaml")
    text = recipe_path.read_text()
    header = text[:text.index("\n_base_")] if "\n_base_" in text else text
    assert header.startswith("# CIFAR-"), recipe_path
    ref = refs.lookup(method, dataset, "exp", 100, priority)
    if ref is not None:
        printed = ref.printed.split(" ")[0]
        assert printed in header or f"{float(printed):.2f}" in header, (recipe_path, printed)
    assert not [n for n in OUTDATED_NUMBERS if n in header], recipe_path
