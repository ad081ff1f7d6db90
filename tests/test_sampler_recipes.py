"""The sampler recipes: every one resolves, builds its sampler, and runs end to end.

The first tests need only the recipe files (merged with their ``_base_`` chain) and the sampler
registry; the end-to-end test runs each recipe for two epochs on ``digits_lt`` through
``lttoolbox.recipe.load_recipe`` and ``lttoolbox.engine.train`` (one per sampler in README's quick
set).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import lttoolbox.samplers  # noqa: F401  (registers the samplers)
from lttoolbox.recipe import read_recipe
from lttoolbox.registry import SAMPLERS
from conftest import RATIOS, case_id, on_digits, one_per_entry, read_at_ratio, recipes_that_set

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("cifar10_lt", "cifar100_lt")
# The expected (sampler name, start_epoch or None) of the recipes shipped so far, written out by
# hand so that a recipe that drifts from them fails; a sampler recipe added since is found in the
# folder (conftest.recipes_that_set) and checked against what it declares.
RECIPES = {
    "cb_sampling": ("class_balanced", None),
    "sqrt_sampling": ("square_root", None),
    "progressive": ("progressive", None),
    "cmo_weighted": ("cmo_weighted", None),
    "random_oversample": ("random_oversample", None),
    "random_undersample": ("random_undersample", None),
    "drs_cb": ("class_balanced", 160),
    "drs_sqrt": ("square_root", 160),
    "drs_progressive": ("progressive", 160),
    "drs_cmo_weighted": ("cmo_weighted", 160),
    "drs_random_oversample": ("random_oversample", 160),
    "drs_random_undersample": ("random_undersample", 160),
}


def expected(name: str) -> tuple[str, int | None]:
    """``RECIPES[name]``, or for a recipe added since, what it declares."""
    if name in RECIPES:
        return RECIPES[name]
    cfg = read_recipe(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml")["sampler"]
    return cfg["name"], cfg.get("start_epoch")


NAMES = recipes_that_set("sampler", DATASETS)
PATHS = [ROOT / "configs" / ds / f"{name}.yaml" for ds in DATASETS for name in NAMES]
# Each recipe as written (ratio 100) and with the override data.imbalance_ratio=50.
CASES = [(path, ratio) for path in PATHS for ratio in RATIOS]





def test_the_recipes_written_out_are_found_in_both_folders():
    missing = [f"{ds}/{name}.yaml" for ds in DATASETS for name in RECIPES
               if not (ROOT / "configs" / ds / f"{name}.yaml").is_file()]
    assert not missing and set(RECIPES) <= set(NAMES)


def test_every_sampler_is_used_by_a_recipe():
    used = {read_recipe(p)["sampler"]["name"] for p in PATHS}
    used.add(read_recipe(ROOT / "configs/cifar10_lt/base.yaml")["sampler"]["name"])  # instance
    # or a multi-label recipe's (a sampler of multi-hot rows draws no single-label set)
    used |= {read_recipe(p)["sampler"]["name"]
             for p in sorted((ROOT / "configs" / "multilabel").glob("*.yaml"))}
    assert used == set(SAMPLERS.names())


@pytest.mark.parametrize("path, ratio", CASES, ids=case_id)
def test_recipe_resolves_and_builds_its_sampler(path, ratio):
    recipe = read_at_ratio(path, ratio)
    name = path.stem
    expected_sampler, start = expected(name)
    assert recipe["data"]["imbalance_ratio"] == ratio
    assert recipe["data"]["name"] == path.parts[-2]
    cfg = recipe["sampler"]
    assert cfg["name"] == expected_sampler and cfg.get("start_epoch") == start
    assert all(key.endswith(("_epoch", "_epochs")) for key in cfg if "epoch" in key)
    labels = np.repeat(np.arange(10), [50, 30, 20, 12, 8, 5, 4, 3, 2, 1])
    sampler = SAMPLERS.build(cfg, labels=labels, num_classes=10, seed=recipe["train"]["seed"],
                             total_epochs=recipe["train"]["epochs"], rank=0, world_size=1)
    sampler.set_epoch(recipe["train"]["epochs"] - 1)
    assert sampler.active and len(sampler.indices()) == len(sampler)
    if start is not None:
        sampler.set_epoch(start - 1)
        assert not sampler.active



# README's quick set runs one recipe per sampler end to end, its deferred (DRS) variant, so both
# sides of the switch run; .ci/run runs every recipe.
@pytest.mark.parametrize("name", one_per_entry({name: expected(name)[0] for name in NAMES},
                                               prefer=lambda name: expected(name)[1] is not None))
def test_recipe_runs_end_to_end(name, tmp_path):
    from lttoolbox.engine import train
    from lttoolbox.recipe import load_recipe

    recipe = on_digits(load_recipe(ROOT / "configs" / "cifar10_lt" / f"{name}.yaml"))
    results = train(recipe, tmp_path, quiet=True)
    assert isinstance(results, dict) and results
    numbers = [v for v in results.values() if isinstance(v, (int, float))]
    assert numbers and all(math.isfinite(v) for v in numbers)
